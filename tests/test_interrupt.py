"""Stopping a test run, as a CI timeout (SIGTERM) or an impatient person (Ctrl-C) does: the
run ends at once, reports that it was interrupted, and leaves no process behind, even after
a test ran RQ's worker in the test process (RQ installs signal handlers of its own)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import psutil
import pytest

from conftest import ROOT, wait_until

START_LIMIT = 120  # seconds for the run to start PostgreSQL, Redis, gunicorn and a worker
STOP_LIMIT = 120  # seconds: a run stops its gunicorn, worker, Redis and PostgreSQL within this, loaded or not


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stopped_run_ends_cleanly(tmp_path, how, workers):
    ready = tmp_path / "ready.json"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/interrupted_run.py",
            *workers,
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=-q -p no:randomly",
            "--basetemp",
            str(tmp_path / "run"),
        ],
        cwd=ROOT,
        env={**os.environ, "WAHOOK_INTERRUPT_READY": str(ready)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        process_group=0,
    )
    try:
        wait_until(lambda: ready.exists() or run.poll() is not None, timeout=START_LIMIT, message="the run to start")
        if not ready.exists():
            pytest.fail(f"the run ended before it was interrupted:\n{run.communicate()[0]}")
        started = json.loads(ready.read_text())
        if how == "ctrl-c":
            os.killpg(run.pid, signal.SIGINT)  # as the terminal does: to every process of the run
        else:
            run.send_signal(signal.SIGTERM)  # as a CI timeout does: to pytest only
        output, _ = run.communicate(timeout=STOP_LIMIT)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert run.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "StopRequested" not in output and "already in progress" not in output, output
    assert "1 passed" in output, output
    wait_until(lambda: not any(alive(pid) for pid in started), timeout=STOP_LIMIT, message="no process left")
