"""`make run`'s launcher (run.py), started as a user starts it: `python run.py` in a
fresh folder, with real Redis, gunicorn and worker.py children. Each test checks that
stopping leaves no process behind. The first tests are quick checks of its helpers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import redis

import run
from conftest import APP_SECRET, GRAPH_TOKEN, media_message, sign, write_config
from gateway import first_config
from gateway.config import load_config
from gateway.delivery import embedded_redis
from graph_stub import Media

ROOT = Path(__file__).resolve().parent.parent
START_LIMIT = 60  # seconds for a start, Redis and a worker heartbeat included
STOP_LIMIT = 45  # seconds; above run.py's grace period, so a hung child is caught by SIGKILL first
QUICK_START = 10  # seconds: a second start reuses everything (about 1 s on a laptop)


# -- helpers, without processes


def test_fill_in_sets_empty_values_and_keeps_everything_else():
    example = (ROOT / "config.example.toml").read_text()
    filled = first_config.fill_in(example, {("meta", "verify_token"): "tok", ("admin", "password"): "pw"})
    data = tomllib.loads(filled)
    assert data["meta"]["verify_token"] == "tok"
    assert data["admin"]["password"] == "pw"
    assert data["meta"]["app_secret"] == ""
    # Only the two lines changed; every comment is still there.
    changed = [pair for pair in zip(example.splitlines(), filled.splitlines(), strict=True) if pair[0] != pair[1]]
    assert len(changed) == 2


def test_fill_in_adds_a_missing_key_or_section():
    text = "[meta]\napp_secret = 'x'  # kept\n\n[delivery]\nworkers = 2\n"
    filled = first_config.fill_in(text, {("meta", "verify_token"): "tok", ("admin", "password"): "pw"})
    assert tomllib.loads(filled) == {
        "meta": {"app_secret": "x", "verify_token": "tok"},
        "delivery": {"workers": 2},
        "admin": {"password": "pw"},
    }
    assert "# kept" in filled


def test_fill_in_handles_single_quotes_and_trailing_comments():
    text = "[admin]\npassword = ''   # set me\n"
    assert first_config.fill_in(text, {("admin", "password"): "pw"}) == '[admin]\npassword = "pw"   # set me\n'


def test_empty_secrets_are_filled_in_an_existing_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[meta]\napp_secret = "s"\n\n[admin]\npassword = ""\n')
    path.chmod(0o640)
    filled = first_config.fill_empty_secrets(path, load_config(path))
    assert filled == ["meta.verify_token", "admin.password"]
    config = load_config(path)
    assert len(config["meta"]["verify_token"]) >= 20 and len(config["admin"]["password"]) >= 20
    assert config["meta"]["app_secret"] == "s"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    again = path.read_text()
    assert first_config.fill_empty_secrets(path, load_config(path)) == []
    assert path.read_text() == again


def test_a_file_that_cannot_be_filled_safely_is_left_alone(tmp_path):
    path = tmp_path / "config.toml"
    text = 'meta.verify_token = ""\nadmin = { password = "" }\n'  # valid TOML our line edit cannot reach
    path.write_text(text)
    assert first_config.fill_empty_secrets(path, load_config(path)) == []
    assert path.read_text() == text


@pytest.mark.parametrize(
    ("bind", "expected"),
    [("127.0.0.1:8000", ("127.0.0.1", 8000)), (":9000", ("0.0.0.0", 9000)), ("[::1]:8080", ("::1", 8080))],
)
def test_parse_bind(bind, expected):
    assert run.parse_bind(bind) == expected


@pytest.mark.parametrize("bind", ["8000", "localhost", "host:port", "127.0.0.1:0", "127.0.0.1:70000"])
def test_parse_bind_refuses_nonsense(bind):
    with pytest.raises(run.LaunchError, match="WAHOOK_BIND"):
        run.parse_bind(bind)


def test_local_base_is_reachable_from_this_machine():
    assert run.local_base("0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert run.local_base("::", 8000) == "http://[::1]:8000"
    assert run.local_base("127.0.0.1", 8000) == "http://127.0.0.1:8000"


def test_banner_uses_the_public_url_and_warns_about_the_app_secret(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[meta]\nverify_token = "tok"\n[admin]\npassword = "pw"\n')
    text = run.banner(load_config(path), path, "http://127.0.0.1:8000", "https://hooks.example.com/")
    assert "Callback URL:    https://hooks.example.com/api/webhooks/whatsapp" in text
    assert "Admin pages:     https://hooks.example.com/settings" in text
    assert "reverse proxy" not in text  # already https
    assert "meta.app_secret is empty" in text

    path.write_text('[meta]\nverify_token = "tok"\napp_secret = "s"\n')
    text = run.banner(load_config(path), path, "http://127.0.0.1:8000", None)
    assert "Callback URL:    http://127.0.0.1:8000/api/webhooks/whatsapp" in text
    assert "reverse proxy or a" in text
    assert "app_secret" not in text


# -- the launcher, for real


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def redis_answers(data_dir: Path) -> bool:
    sock = embedded_redis.socket_path(data_dir)
    if not sock.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_timeout=1, retry=None).ping())
    except (redis.RedisError, OSError):
        return False


class Launch:
    """One `python run.py` in `folder`, its output read line by line as it comes."""

    def __init__(self, folder: Path, port: int, use_env_config: bool = True, umask: int = -1) -> None:
        self.folder = folder
        self.port = port
        self.config_file = folder / "config.toml"
        env = {k: v for k, v in os.environ.items() if not k.startswith("WAHOOK_")}
        env["WAHOOK_BIND"] = f"127.0.0.1:{port}"
        if use_env_config:
            env["WAHOOK_CONFIG"] = str(self.config_file)
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py")],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            umask=umask,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(stream, sink), daemon=True)
            for stream, sink in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr))
        ]
        for reader in self.readers:
            reader.start()
        self.tracked: list[psutil.Process] = []

    def _read(self, stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))

    def wait_for_line(self, pattern: str, limit: float = START_LIMIT) -> str:
        """The first line of output (so far or to come) that matches `pattern`."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            found = next((line for line in self.stdout + self.stderr if re.search(pattern, line)), None)
            if found is not None:
                return found
            if self.process.poll() is not None and not any(r.is_alive() for r in self.readers):
                break
            time.sleep(0.1)
        pytest.fail(f"no line matching {pattern!r}; stdout={self.stdout} stderr={self.stderr}")

    def banner_value(self, label: str) -> str:
        line = next(line for line in self.stdout if line.strip().startswith(label + ":"))
        return line.split(":", 1)[1].strip()

    def healthz(self) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def track(self) -> list[psutil.Process]:
        """Every process the launcher started: its descendants, and the daemonized Redis."""
        self.tracked = psutil.Process(self.process.pid).children(recursive=True)
        pidfile = self.folder / "data" / "redis.pid"
        if pidfile.exists():
            self.tracked.append(psutil.Process(int(pidfile.read_text().strip())))
        return self.tracked

    def finish(self, timeout: float = STOP_LIMIT) -> int:
        """Wait for the launcher to exit and for its last output; return its exit status."""
        status = self.process.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=5)  # ends once no child holds the pipes either
        return status

    def stop(self, sig: int = signal.SIGINT) -> int:
        self.process.send_signal(sig)
        return self.finish()

    def ours(self) -> list[psutil.Process]:
        """Processes still running with this launch's config, found or not by `track`."""
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.environ().get("WAHOOK_CONFIG") == str(self.config_file) and alive(proc):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return [p for p in found if p.pid != os.getpid()]

    def assert_nothing_left(self) -> None:
        _, still = psutil.wait_procs([p for p in self.tracked if alive(p)], timeout=5)
        still = [p for p in still if alive(p)]
        assert not still, f"left running: {[(p.pid, p.cmdline()) for p in still]}"
        assert not self.ours()
        assert not (self.folder / "data" / "redis.pid").exists()
        assert not redis_answers(self.folder / "data")

    def kill(self) -> None:
        """Cleanup after a failed test: nothing may outlive it."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for proc in self.tracked + self.ours():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        if (self.folder / "data" / "redis.pid").exists():
            embedded_redis.stop(self.folder / "data", wait=2)


@pytest.fixture
def launch(tmp_path):
    started: list[Launch] = []

    def start(folder: Path = tmp_path, port: int | None = None, **kwargs) -> Launch:
        started.append(Launch(folder, port or free_port(), **kwargs))
        return started[-1]

    yield start
    for one in started:
        one.kill()


def wait_healthy(instance: Launch) -> dict:
    deadline = time.monotonic() + START_LIMIT
    status, body = instance.healthz()
    while status != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        status, body = instance.healthz()
    assert status == 200, body
    return body


def check_running(instance: Launch) -> None:
    """The banner is out, /healthz says all is up, and every child is there."""
    instance.wait_for_line(r"Press Ctrl-C to stop")
    wait_healthy(instance)
    port = instance.port
    assert instance.banner_value("Admin pages") == f"http://127.0.0.1:{port}/settings"
    assert instance.banner_value("Callback URL") == f"http://127.0.0.1:{port}/api/webhooks/whatsapp"
    config = load_config(instance.config_file)
    assert instance.banner_value("Admin password") == config["admin"]["password"] != ""
    assert instance.banner_value("Verify token") == config["meta"]["verify_token"] != ""
    assert any("reverse proxy" in line for line in instance.stdout)
    assert any("meta.app_secret is empty" in line for line in instance.stdout)
    tracked = instance.track()
    commands = [" ".join(p.cmdline()) for p in tracked]
    assert sum("gunicorn" in c for c in commands) >= 3, commands  # master and two web workers
    assert sum(c.endswith("worker.py") for c in commands) == 1, commands
    assert any("redis-server" in c for c in commands), commands


@pytest.mark.slow
def test_first_start_then_ctrl_c_stops_everything(tmp_path, launch):
    # No WAHOOK_CONFIG: ./config.toml in the folder the user starts from.
    instance = launch(use_env_config=False)
    check_running(instance)
    assert stat.S_IMODE(instance.config_file.stat().st_mode) == 0o600
    assert any(line.startswith("Created ") for line in instance.stdout)
    assert (tmp_path / "data" / "wahook.db").exists()  # next to the config file

    assert instance.stop(signal.SIGINT) == 0
    instance.assert_nothing_left()
    assert instance.stdout[-1] == "Stopped."


@pytest.mark.slow
def test_sigterm_stops_everything(launch):
    instance = launch()
    check_running(instance)
    assert instance.stop(signal.SIGTERM) == 0
    instance.assert_nothing_left()


@pytest.mark.slow
def test_second_start_reuses_config_and_is_quick(tmp_path, launch):
    first = launch()
    check_running(first)
    password = first.banner_value("Admin password")
    token = first.banner_value("Verify token")
    text = first.config_file.read_text()
    assert first.stop() == 0
    first.assert_nothing_left()

    second = launch()
    second.wait_for_line(r"Press Ctrl-C to stop", limit=QUICK_START)
    assert time.monotonic() - second.started < QUICK_START
    check_running(second)
    assert second.banner_value("Admin password") == password
    assert second.banner_value("Verify token") == token
    assert second.config_file.read_text() == text
    assert not any(line.startswith(("Created ", "Filled ")) for line in second.stdout)
    assert second.stop() == 0
    second.assert_nothing_left()


@pytest.mark.slow
def test_bad_config_exits_with_one_line_naming_the_key(tmp_path, launch):
    (tmp_path / "config.toml").write_text("[delivery]\nbogus = 1\n")
    instance = launch()
    assert instance.finish(timeout=30) != 0
    assert len(instance.stderr) == 1, instance.stderr
    assert "delivery.bogus" in instance.stderr[0]
    assert (tmp_path / "config.toml").read_text() == "[delivery]\nbogus = 1\n"
    instance.assert_nothing_left()


@pytest.mark.slow
def test_port_in_use_exits_before_starting_anything(tmp_path, launch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        instance = launch(port=port)
        assert instance.finish(timeout=30) == 1
    assert len(instance.stderr) == 1 and str(port) in instance.stderr[0], instance.stderr
    instance.assert_nothing_left()


@pytest.mark.slow
def test_a_child_that_dies_stops_everything(launch):
    instance = launch()
    check_running(instance)
    worker = next(p for p in instance.tracked if p.cmdline()[-1].endswith("worker.py"))
    worker.kill()
    assert instance.finish() == 1
    assert any("the worker stopped unexpectedly (killed by SIGKILL)" in line for line in instance.stderr), (
        instance.stderr
    )
    instance.assert_nothing_left()


def wahook(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`./wahook ARGS` as a user types it in a second terminal."""
    return subprocess.run(
        [str(ROOT / "wahook"), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.slow
def test_simulate_reaches_a_fresh_make_run_and_hears_of_config_edits(tmp_path, launch):
    # A fresh install on a port of its own; a second terminal knows only the config file.
    instance = launch()
    check_running(instance)
    data = tmp_path / "data"
    info = json.loads((data / "run.json").read_text())
    assert info["url"] == f"http://127.0.0.1:{instance.port}" and info["pid"] == instance.process.pid
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAHOOK_")}
    env["WAHOOK_CONFIG"] = str(instance.config_file)
    done = wahook("simulate", "text", env=env)
    assert done.returncode == 0, (done.stdout, done.stderr)
    answer = json.loads(done.stdout)
    assert answer["status_code"] == 200 and answer["url"] == f"http://127.0.0.1:{instance.port}/api/webhooks/whatsapp"
    assert "warning" not in answer
    assert load_config(instance.config_file)["meta"]["app_secret"] == ""  # nothing was edited

    # An edit while running: make run says it once, simulate says it too.
    text = instance.config_file.read_text()
    # Setting the App secret without a restart: the server does not know it yet, and simulate
    # still gets its 200 (signed with the local key) along with the reminder.
    instance.config_file.write_text(text.replace('app_secret = ""', 'app_secret = "set-while-running"'))
    line = instance.wait_for_line(r"changed after wahook started", limit=15)
    assert "still use the old values" in line
    done = wahook("simulate", "text", env=env)
    assert done.returncode == 0, (done.stdout, done.stderr)
    answer = json.loads(done.stdout)
    assert answer["status_code"] == 200
    assert "still use the old values" in answer["warning"]
    assert "still use the old values" in done.stderr
    instance.config_file.write_text(text)
    instance.wait_for_line(r"is back to the values wahook is running with", limit=15)
    assert sum("changed after wahook started" in line for line in instance.stdout) == 1

    assert instance.stop() == 0
    instance.assert_nothing_left()
    assert not (data / "run.json").exists()


@pytest.mark.slow
def test_customer_files_and_run_state_are_owner_only_under_umask_022(tmp_path, launch, graph):
    """`make run` from a shell with the usual umask 022: the data folder, the media folder and
    every customer's file in it, Redis' files and run.json get the database's care (0700/0600)."""
    sections = {
        "meta": {"app_secret": APP_SECRET, "access_token": GRAPH_TOKEN, "graph_url": graph.graph_url},
        "delivery": {"allow_http": True, "allow_private_urls": True},
    }
    write_config(tmp_path / "config.toml", sections)
    graph.media["7001"] = Media(b"\xff\xd8\xff a customer's photo")
    instance = launch(umask=0o022)
    instance.wait_for_line(r"Press Ctrl-C to stop")
    wait_healthy(instance)
    instance.track()
    raw = json.dumps(media_message("7001")).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{instance.port}/api/webhooks/whatsapp",
        data=raw,
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw)},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own http URL
        assert response.status == 200
    data = tmp_path / "data"
    media = data / "media"
    deadline = time.monotonic() + START_LIMIT
    while not [p for p in media.glob("*") if p.is_file()] and time.monotonic() < deadline:
        time.sleep(0.1)  # the worker's media lane downloads it
    files = [p for p in media.glob("*") if p.is_file()]
    assert files, "the worker downloaded no file"

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(data) == 0o700 and mode(media) == 0o700 and mode(media / "tmp") == 0o700
    open_to_others = {
        str(path.relative_to(tmp_path)): oct(mode(path))
        for path in [data, *data.rglob("*")]
        if not path.is_socket() and mode(path) & 0o077
    }
    assert open_to_others == {}
    for name in ("run.json", "redis.log", "wahook.db"):
        assert mode(data / name) == 0o600, name
    assert instance.stop() == 0
    instance.assert_nothing_left()


def test_a_child_killed_by_a_signal_is_reported_by_the_signal_name():
    assert run.describe_exit(-9) == "killed by SIGKILL"
    assert run.describe_exit(-15) == "killed by SIGTERM"
    assert run.describe_exit(3) == "exit status 3"
    assert run.describe_exit(-200) == "killed by signal 200"
