"""How a test run stops when told to: Ctrl-C, or SIGTERM from a CI timeout.

Both end the run as pytest ends it on Ctrl-C: every fixture is torn down, so the gunicorn,
worker, Redis and PostgreSQL processes the tests started stop too. SIGTERM's default would
end pytest at once and leave them running. Under xdist the controller passes the signal on
to its workers and waits for them to report, rather than end them while their fixtures are
still stopping what they started; a second signal after that ends the run at once.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import time

import psutil
import pytest

REPEAT_WINDOW = 2.0  # seconds: the terminal's Ctrl-C and the controller's copy arrive together

_first_signal: float | None = None


def _stop_here(signum, frame) -> None:
    """In a worker or a run without xdist: stop the run as Ctrl-C does, once."""
    global _first_signal
    now = time.monotonic()
    if _first_signal is not None and now - _first_signal < REPEAT_WINDOW:
        return  # the same stop, heard twice: let the teardown it started finish
    _first_signal = now
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def _pass_to_workers(config: pytest.Config, signum, frame) -> None:
    """In the xdist controller: the first signal goes to the workers, the next ends the run."""
    global _first_signal
    if _first_signal is not None:
        raise KeyboardInterrupt(f"stopped by signal {signum}")
    _first_signal = time.monotonic()
    # xdist replaces a worker that ends early; these are ending because they were told to.
    dsession = config.pluginmanager.getplugin("dsession")
    if dsession is not None and hasattr(dsession, "_max_worker_restart"):
        dsession._max_worker_restart = 0
    for worker in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            worker.send_signal(signal.SIGINT)


def install(config: pytest.Config) -> None:
    """Handle SIGINT and SIGTERM in this pytest process (from pytest_configure)."""
    controller = bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")
    handler = functools.partial(_pass_to_workers, config) if controller else _stop_here
    with contextlib.suppress(ValueError):  # not the main thread: signals are not ours to handle
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


@pytest.fixture(autouse=True)
def _signal_handlers():
    """Give each test the run's SIGINT and SIGTERM handlers back: RQ's worker, when a test runs
    it in this process, installs its own, which would turn a later Ctrl-C into StopRequested
    in whatever test runs then, instead of stopping the run."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in handlers.items():
        if signal.getsignal(signum) is not handler:
            signal.signal(signum, handler)
