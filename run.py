"""`make run`: start everything wahook needs on one machine, and stop it all together.

On first start it writes config.toml (from config.example.toml, with a random verify
token and admin password), creates the database, starts the embedded Redis when
`redis.url = "embedded"`, then the web server (gunicorn) and `delivery.workers` copies
of worker.py. Once /healthz answers it prints what to paste into Meta.

Ctrl-C or SIGTERM stops the children (SIGTERM, then SIGKILL after a grace period), then
Redis. If any child dies on its own, everything is stopped and the exit status is 1:
restarting a crashing process in a loop would hide the problem; a supervisor such as
systemd (see deploy/) is the place for restarts.

Environment: WAHOOK_CONFIG (config file, default ./config.toml), WAHOOK_BIND (address
to listen on, default 127.0.0.1:8000), WAHOOK_PUBLIC_URL (the https:// address Meta
reaches this server at, shown in the callback URL).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from gateway import runstate
from gateway.config import ConfigError, load_config
from gateway.delivery import embedded_redis
from gateway.first_config import create_config, fill_empty_secrets
from gateway.intake import webhook
from gateway.storage import db, private_paths

ROOT = Path(__file__).resolve().parent
DEFAULT_BIND = "127.0.0.1:8000"
HEALTH_WAIT = 60.0  # seconds; a first start on a slow disk takes a few
MIN_GRACE = 15.0  # seconds children get to finish after SIGTERM


class LaunchError(Exception):
    """A reason not to start, worded for the person running `make run`."""


def say(message: str = "") -> None:
    print(message, flush=True)


def complain(message: str) -> None:
    print(f"wahook: {' '.join(message.split())}", file=sys.stderr, flush=True)


# -- config file


def config_path() -> Path:
    return Path(os.environ.get("WAHOOK_CONFIG") or "config.toml").expanduser().absolute()


# -- addresses


def parse_bind(bind: str) -> tuple[str, int]:
    """'host:port', ':port' or '[v6]:port' -> (host, port)."""
    host, sep, port = bind.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - ':8000' means every interface, as in gunicorn
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise LaunchError(f"WAHOOK_BIND must look like 127.0.0.1:8000, not {bind!r}")
    return host, int(port)


def local_base(host: str, port: int) -> str:
    """The URL to reach the server from this machine."""
    if host in ("0.0.0.0", ""):  # noqa: S104
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def check_port_free(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise LaunchError(f"WAHOOK_BIND host {host!r} does not resolve: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does
        try:
            probe.bind(address)
        except OSError as exc:
            raise LaunchError(
                f"cannot listen on {host}:{port} ({exc.strerror}); is wahook already running? "
                f"Another address: WAHOOK_BIND=127.0.0.1:{port + 1} make run"
            ) from None


# -- children


@dataclass
class Child:
    name: str
    process: subprocess.Popen

    def exit_code(self) -> int | None:
        """The exit status once the process has ended, without reaping it: its pid, and so
        its process group id, stays ours until `reap`, so a late killpg hits nothing else."""
        try:
            info = os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except AttributeError:  # no waitid (macOS): poll, which reaps
            return self.process.poll()
        except ChildProcessError:
            return self.process.returncode if self.process.returncode is not None else -1
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def reap(self) -> None:
        with contextlib.suppress(ChildProcessError):
            self.process.wait()


def _load_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux


_PRCTL = _load_prctl()  # looked up before any fork: the child only calls it
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in each child before exec: its own session, so a Ctrl-C in the terminal reaches
    only the launcher, which then stops children in order; and on Linux a SIGTERM if the
    launcher itself is killed, so no child outlives it."""
    os.setsid()
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the launcher died before prctl took hold
        os._exit(1)


def start_child(name: str, args: list[str], env: dict[str, str]) -> Child:
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    return Child(name, process)


class Launcher:
    """Owns the children and the embedded Redis; `stop()` is safe to call at any point."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.stop_requested = False
        self.force = False
        self.redis_dir: Path | None = None
        self.grace = MIN_GRACE
        self.run_dir: Path | None = None  # where run.json was written

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested:
            self.force = True  # a second Ctrl-C: do not wait for the grace period
        self.stop_requested = True

    def first_dead(self) -> Child | None:
        return next((c for c in self.children if c.exit_code() is not None), None)

    def wait_healthy(self, url: str, limit: float) -> dict | None:
        """Poll /healthz until it says ok; return the last report (None if it never answered)."""
        deadline = time.monotonic() + limit
        report = None
        while not self.stop_requested and not self.first_dead():
            try:
                with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own http URL
                    report = json.load(response)
                    return report
            except urllib.error.HTTPError as exc:
                with contextlib.suppress(ValueError):
                    report = json.load(exc)
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                return report
            time.sleep(0.2)
        return report

    def stop(self) -> None:
        alive = [c for c in self.children if c.exit_code() is None]
        for child in alive:
            # The leader only: gunicorn's master stops its own workers in order.
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while not self.force and time.monotonic() < deadline and any(c.exit_code() is None for c in alive):
            time.sleep(0.05)
        for child in self.children:
            if child.exit_code() is None:
                complain(f"{child.name} did not stop within {self.grace:.0f} s; killing it")
            # Also catches anything a child left behind in its group (a forked job, a web worker).
            child.signal_group(signal.SIGKILL)
            child.reap()
        self.children = []
        if self.redis_dir is not None:
            embedded_redis.stop(self.redis_dir)
            self.redis_dir = None


def banner(config, cfg_file: Path, local: str, public: str | None) -> str:
    base = (public or local).rstrip("/")
    password = config["admin"]["password"] or "(none: set admin.password in the config file)"
    token = config["meta"]["verify_token"] or "(none: set meta.verify_token in the config file)"
    lines = [
        "",
        "wahook is running.",
        "",
        f"  Admin pages:     {base}/settings",
        f"  Admin password:  {password}",
        f"  Verify token:    {token}",
        f"  Callback URL:    {base}{webhook.PATH}",
        f"  Config file:     {cfg_file}",
        "",
        "In your Meta app, WhatsApp > Configuration: paste the callback URL and verify token.",
    ]
    if not base.startswith("https://"):
        lines += [
            "Meta only calls https:// addresses with a valid certificate: put a reverse proxy or a",
            "tunnel in front of this server and set WAHOOK_PUBLIC_URL to its https:// address.",
        ]
    if not config["meta"]["app_secret"]:
        lines += [
            "",
            "Warning: meta.app_secret is empty, so every webhook from Meta is refused. Copy the",
            "App secret (Meta app, App settings > Basic) into the config file and restart.",
            "Until then `./wahook simulate text` works: it signs with a local key in the data folder.",
        ]
    lines += ["", "Press Ctrl-C to stop."]
    return "\n".join(lines)


def child_env(cfg_file: Path, bind: str) -> dict[str, str]:
    env = dict(os.environ, WAHOOK_CONFIG=str(cfg_file), WAHOOK_BIND=bind, PYTHONUNBUFFERED="1")
    env.setdefault("WAHOOK_LOG_LEVEL", "warning")  # keep the terminal for the banner and real problems
    return env


def run(launcher: Launcher) -> int:
    bind = os.environ.get("WAHOOK_BIND") or DEFAULT_BIND
    host, port = parse_bind(bind)
    public = (os.environ.get("WAHOOK_PUBLIC_URL") or "").strip() or None
    cfg_file = config_path()

    if not cfg_file.exists():
        try:
            create_config(cfg_file)
        except FileExistsError:
            pass  # made meanwhile by someone else: use theirs
        except OSError as exc:
            raise LaunchError(f"cannot create {cfg_file}: {exc.strerror}") from None
        else:
            say(f"Created {cfg_file} with a new verify token and admin password.")
    config = load_config(cfg_file)
    filled = fill_empty_secrets(cfg_file, config)
    if filled:
        say(f"Filled in {' and '.join(filled)} in {cfg_file}.")
        config = load_config(cfg_file)

    data_dir = config.data_dir
    private_paths.tighten_umask()  # for this process and every child: gunicorn, workers, Redis
    private_paths.private_dir(data_dir)
    lock = open(data_dir / "run.lock", "w")  # noqa: SIM115 - held until this process exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LaunchError(f"wahook is already running with the data folder {data_dir}") from None
    check_port_free(host, port)

    try:
        db.connection(config.database)  # creates it and applies pending migrations
    except db.StorageError as exc:
        raise LaunchError(str(exc)) from None
    except Exception as exc:
        raise LaunchError(f"cannot open the database {config.database_path}: {exc}") from None
    finally:
        db.close_all()

    workers = config["delivery"]["workers"]
    launcher.grace = max(MIN_GRACE, float(config["delivery"]["timeout"]) + 5)
    parts = ["embedded Redis"] if config.redis_embedded else []
    parts += ["web server", f"{workers} worker{'s' if workers != 1 else ''}"]
    say(f"Starting wahook: {', '.join(parts)}...")
    if config.redis_embedded:
        launcher.redis_dir = data_dir  # set first: a half-started server is stopped too
        try:
            embedded_redis.ensure_running(data_dir)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            raise LaunchError(f"the embedded Redis did not start: {exc}") from None
    if launcher.stop_requested:
        return 0

    env = child_env(cfg_file, bind)
    gunicorn = [sys.executable, "-m", "gunicorn", "app:app", "-c", str(ROOT / "gunicorn.conf.py")]
    launcher.children.append(start_child("the web server", gunicorn, env))
    for number in range(1, workers + 1):
        name = "the worker" if workers == 1 else f"worker {number}"
        launcher.children.append(start_child(name, [sys.executable, str(ROOT / "worker.py")], env))

    local = local_base(host, port)
    loaded = runstate.fingerprint(cfg_file)
    info = {
        "pid": os.getpid(),
        "bind": bind,
        "url": local,
        "config": str(cfg_file),
        "config_fingerprint": loaded,
        "delivery": config["delivery"],  # the rules the processes run with (config_drift)
    }
    try:
        runstate.write_run_info(data_dir, {**info, "started_at": time.time()})
        launcher.run_dir = data_dir
    except OSError as exc:
        complain(f"could not write {data_dir / runstate.RUN_FILE} ({exc.strerror}); simulate needs WAHOOK_BIND")
    watch = runstate.ConfigWatch(cfg_file, loaded, delivery=config["delivery"])
    report = launcher.wait_healthy(f"{local}/healthz", HEALTH_WAIT)
    if not launcher.stop_requested and not launcher.first_dead():
        say(banner(config, cfg_file, local, public))
        if not (report and report.get("ok")):
            problems = {k: v for k, v in (report or {}).items() if k != "ok" and v != "ok"}
            detail = "; ".join(f"{k}: {v}" for k, v in problems.items()) or "no answer from /healthz"
            say(f"\nNot healthy yet ({detail}). See {local}/healthz")

    while not launcher.stop_requested:
        dead = launcher.first_dead()
        if dead:
            complain(f"{dead.name} stopped unexpectedly ({describe_exit(dead.exit_code())}); stopping everything")
            return 1
        notice = watch.check(time.monotonic())
        if notice:
            say(f"\n{notice}")
        time.sleep(0.2)
    return 0


def describe_exit(code: int | None) -> str:
    """'exit status 3' or, for a negative status, 'killed by SIGKILL'."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def main() -> int:
    launcher = Launcher()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, launcher.on_signal)
    status = 1  # unless run() says otherwise; a crash still stops what was started
    try:
        status = run(launcher)
    except ConfigError as exc:
        complain(f"configuration error: {exc}")
        status = 2
    except LaunchError as exc:
        complain(str(exc))
        status = 1
    finally:
        if launcher.run_dir is not None:
            runstate.remove_run_info(launcher.run_dir, os.getpid())
        if launcher.children or launcher.redis_dir:
            if status == 0:
                say("\nStopping wahook...")
            launcher.stop()
            if status == 0:
                say("Stopped.")
    return status


if __name__ == "__main__":
    sys.exit(main())
