"""Shared fixtures, in the manner of Flask's tutorial: `app`, `client` and `runner` over a
temporary database per test, plus a real Redis server and real HTTP receivers.

A test module or test marked `engines` runs once per database engine: SQLite, and a real
PostgreSQL server the run starts itself (tests/pgserver.py). Unmarked tests use SQLite."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from html import unescape
from pathlib import Path

import hypothesis
import psutil
import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Test data (pytest's temporary folders, PostgreSQL's) lives in memory where there is room:
# nothing of it must outlive a crash, yet on disk every SQLite commit waited for an fsync (the
# 10,000-event test on SQLite: 20 s, in memory 14), every PostgreSQL test wrote an 8 MB copy
# of the migrated database, and deleting them at the end held each test worker 5 to 8 s.
# pytest keeps the folders of the last three runs, as on disk.
RAM_FOLDER = Path("/dev/shm")  # noqa: S108 (Linux's shared memory folder, a tmpfs)
RAM_NEEDED = 8 * 1024**3  # bytes free: every test worker's PostgreSQL copies, and three runs' folders


def _has_room(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free >= RAM_NEEDED
    except OSError:  # not Linux: the usual temporary folder
        return False


if _has_room(RAM_FOLDER):
    tempfile.tempdir = str(RAM_FOLDER)

# The worker's sweeper (retries, probes, silence) looks every second; the tests' workers, in
# this process or started as processes (they inherit the environment), look five times as
# often, so a test waits less for what it checks. Set before worker.py reads it.
SWEEP_INTERVAL = 0.2
os.environ["WAHOOK_SWEEP_INTERVAL"] = str(SWEEP_INTERVAL)

import compiled_templates
import interruption
import worker
from app import create_app
from gateway.api import api_keys
from gateway.delivery import delivery_states, doorbell, embedded_redis, endpoints, send
from gateway.intake import webhook
from gateway.net import safe_http
from gateway.storage import db, private_paths
from gateway.storage.db import get_db
from graph_stub import TOKEN as GRAPH_TOKEN
from graph_stub import GraphStub
from interruption import _signal_handlers  # noqa: F401 (an autouse fixture)
from pgserver import Server as PostgresServer
from receiver import Receiver

# Hypothesis fails an example slower than 200 ms as flaky; beside three other test workers on
# a small machine a parse can take that long, and speed is not what those tests check.
hypothesis.settings.register_profile("wahook", deadline=None)
hypothesis.settings.load_profile("wahook")

compiled_templates.install()

# Failed deliveries and downloads are tried again 0.2 s apart, so a test that waits for the
# retries to run out waits half a second, not two. A test about the delays themselves, or
# that must look between two attempts, sets SLOW_RETRIES on its app.
RETRY_SCHEDULE = [0.2, 0.2]
SLOW_RETRIES = [1, 1]

APP_SECRET = "test-app-secret"
VERIFY_TOKEN = "test-verify-token"
ADMIN_PASSWORD = "test-admin-password"


def sign(raw: bytes, secret: str = APP_SECRET) -> str:
    """The X-Hub-Signature-256 value Meta would send for `raw`."""
    return webhook.meta_signature(secret, raw)


def text_message(wamid: str = "wamid.HBgLMTU1NTAxMjM0NTY3FQIAEhgUM0VCMEE", text: str = "Hello") -> dict:
    """A text message webhook as Meta documents it."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
                            "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
                            "messages": [
                                {
                                    "from": "16505551234",
                                    "id": wamid,
                                    "timestamp": "1749416383",
                                    "type": "text",
                                    "text": {"body": text},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }


def media_message(media_id: str, mtype: str = "image", wamid: str | None = None, **fields) -> dict:
    """A media message webhook (image, document, ...) as Meta documents it."""
    body = text_message(wamid or f"wamid.media{media_id}")
    message = body["entry"][0]["changes"][0]["value"]["messages"][0]
    del message["text"]
    message["type"] = mtype
    message[mtype] = {"id": media_id, "mime_type": "image/jpeg", "sha256": "", **fields}
    return body


@pytest.fixture
def graph():
    """A local stand-in for the Graph API (tests/graph_stub.py)."""
    stub = GraphStub()
    yield stub
    stub.close()


@pytest.fixture
def media_app(tmp_path, redis_url, graph):
    """The app with an access token and meta.graph_url pointing at the stand-in."""
    sections = instance_sections(tmp_path, redis_url)
    sections["meta"].update(access_token=GRAPH_TOKEN, graph_url=graph.graph_url)
    application = create_app({"TESTING": True, "config_path": str(tmp_path / "config.toml"), **sections})
    yield application
    db.close_all()


TOKEN_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(html: str) -> str:
    match = TOKEN_RE.search(html)
    assert match, "page has no CSRF field"
    return match.group(1)


def login(client, password: str = ADMIN_PASSWORD, **kwargs):
    token = csrf_from(client.get("/login", **kwargs).text)
    return client.post("/login", data={"password": password, "csrf_token": token}, **kwargs)


def token(client) -> str:
    return csrf_from(client.get("/settings").text)


def post_form(client, url: str, data: dict | None = None, **kwargs):
    return client.post(url, data={"csrf_token": token(client), **(data or {})}, **kwargs)


@pytest.fixture
def add_endpoint(app):
    """add_endpoint(url, **fields): an endpoint stored as the settings page would store it."""

    def add(url: str, **fields):
        with app.app_context():
            return endpoints.create(get_db(), app.config["WAHOOK"], url, **fields)

    return add


@pytest.fixture
def make_key(app):
    """make_key(scopes="publish,read"): a new API key (the full key), as `apikey add` makes it."""

    def make(scopes: str = "publish,read", name: str = "test client") -> str:
        with app.app_context():
            return api_keys.create(get_db(), name, scopes)[1]

    return make


def cli_json(runner, *args):
    """Run `flask --app app ARGS` and return (exit code, the JSON it printed)."""
    result = runner.invoke(args=list(args))
    return result.exit_code, json.loads(result.output)


ENGINES = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc) -> None:
    # Only tests marked `engines` pay for the second run; the rest keep their plain ids. A
    # test about one engine's own behaviour in a marked module says which: engines("sqlite").
    marker = metafunc.definition.get_closest_marker("engines")
    if "engine" in metafunc.fixturenames and marker:
        metafunc.parametrize("engine", marker.args or ENGINES)


def pytest_configure(config) -> None:
    interruption.install(config)


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the xdist_group marks
def pytest_collection_modifyitems(config, items) -> None:
    # Under xdist (`make test`) tests are handed to the workers in this order: the slowest go
    # first so that none of them starts last and keeps the run going alone. The browser tests
    # share one Chromium per module, so they stay together on one worker.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    for item in items:
        if item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.xdist_group("browser"))


@pytest.fixture
def engine() -> str:
    return "sqlite"


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the whole run, started on first use. Its folder is its own,
    not under pytest's numbered temporary folders, which a later run may remove while it runs.
    Like them it is in memory where there is room (see RAM_FOLDER)."""
    folder = Path(tempfile.mkdtemp(prefix="wahook-postgres-"))
    server = PostgresServer(folder / "data")
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def migrated_postgres(postgres_server) -> str:
    """The name of a PostgreSQL database migrated once for the run, which each test copies:
    migrating a new database takes longer than the server takes to copy one."""
    url = postgres_server.new_database()
    conn = db.connect(url)
    try:
        db.migrate(conn)
    finally:
        conn.close()
    return postgres_server.name_of(url)


@pytest.fixture
def storage_database(engine, tmp_path, request) -> str:
    """storage.database for this test: a SQLite file in its folder, or a PostgreSQL database of
    its own, already migrated (the app still checks it is, as on every start)."""
    if engine == "postgresql":
        return request.getfixturevalue("postgres_server").new_database(request.getfixturevalue("migrated_postgres"))
    return str(tmp_path / "data" / "wahook.db")


def instance_sections(tmp_path: Path, redis_url: str, database: str | None = None) -> dict:
    """Config sections for a test instance: its own database, the test Redis, local receivers allowed."""
    return {
        "meta": {"app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN},
        "storage": {"database": database or str(tmp_path / "data" / "wahook.db")},
        "redis": {"url": redis_url},
        "delivery": {
            "allow_http": True,
            "allow_private_urls": True,
            "timeout": 2,
            "retry_schedule": list(RETRY_SCHEDULE),
        },
        "admin": {"password": ADMIN_PASSWORD, "secret_key": "test-secret-key"},
    }


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    """A real redis-server (the embedded binary) for the whole run."""
    data = tmp_path_factory.mktemp("redis")
    url = embedded_redis.ensure_running(data)
    yield url
    embedded_redis.stop(data)


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory) -> bytes:
    """A SQLite database migrated once for the test process, as bytes each `app` starts from:
    running every migration again took more than half of building a test's app."""
    path = tmp_path_factory.mktemp("migrated") / "wahook.db"
    conn = db.connect(path)
    try:
        db.migrate(conn)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file
    finally:
        conn.close()
    return path.read_bytes()


def start_migrated(database: str, migrated: bytes) -> None:
    """Put the migrated SQLite database where `database` says, made as wahook makes its own:
    owner-only folder and file. (The app still checks it is migrated, as on every start.)"""
    path = Path(database)
    if db.is_postgres(database) or path.exists():
        return
    private_paths.private_dir(path.parent)
    with private_paths.create_private(path) as file:
        file.write(migrated)


@pytest.fixture
def app(tmp_path, redis_url, storage_database, migrated_sqlite):
    start_migrated(storage_database, migrated_sqlite)
    sections = instance_sections(tmp_path, redis_url, storage_database)
    application = create_app({"TESTING": True, "config_path": str(tmp_path / "config.toml"), **sections})
    doorbell.redis_connection(application.config["WAHOOK"]).flushall()
    yield application
    db.close_all()


@pytest.fixture
def slow_retries(app) -> list[int]:
    """The app's retry schedule set to SLOW_RETRIES, for a test that looks between attempts."""
    app.config["WAHOOK"]["delivery"]["retry_schedule"] = list(SLOW_RETRIES)
    return SLOW_RETRIES


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def conn(app):
    """The test database, for assertions about what was stored."""
    return db.connection(app.config["WAHOOK"].database)


@pytest.fixture
def post_webhook(client):
    """POST a body to the intake signed as Meta would; returns the response."""

    def post(body, secret: str = APP_SECRET, headers: dict | None = None):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw, secret)}
        all_headers.update(headers or {})
        return client.post("/api/webhooks/whatsapp", data=raw, headers=all_headers)

    return post


@contextlib.contextmanager
def worker_in_process(app):
    """The worker's dispatcher and sweeper in this process, as worker.py runs them, for `app`."""
    dispatcher = worker.Dispatcher(app.config["WAHOOK"])
    doorbell.set_drain_handler(dispatcher.on_drain_job)
    sweeper = threading.Thread(target=worker.sweep, args=(dispatcher,), daemon=True)
    sweeper.start()
    try:
        yield dispatcher
    finally:
        dispatcher.stop(grace=0.5)
        doorbell.set_drain_handler(None)


@pytest.fixture
def running_worker(app):
    """The worker's dispatcher and sweeper in this process, as worker.py runs them."""
    with worker_in_process(app) as dispatcher:
        yield dispatcher


@pytest.fixture
def receiver():
    started = Receiver()
    yield started
    started.close()


@pytest.fixture
def make_receiver():
    started: list[Receiver] = []

    def make() -> Receiver:
        started.append(Receiver())
        return started[-1]

    yield make
    for r in started:
        r.close()


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_config(path: Path, sections: dict) -> Path:
    """Write config sections as TOML, for processes started the way a user starts them."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, message: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


def wait_every_event_delivered(conn, receiver, total: int, timeout: float = 60) -> set[str]:
    """Wait until every event with a delivery (`total` of them, one delivery each) reached
    `receiver` and every delivery is marked delivered; returns the events' ids."""
    sent = "SELECT e.event_id FROM deliveries d JOIN events e ON e.id = d.event_id"
    wanted = {row[0] for row in conn.execute(sent)}
    assert len(wanted) == total

    def all_arrived() -> bool:
        return wanted <= {r.headers["X-Webhook-Id"] for r in list(receiver.requests)}

    wait_until(all_arrived, timeout=timeout, interval=0.2, message="every event to arrive")
    wait_until(
        lambda: conn.execute("SELECT count(*) FROM deliveries WHERE state = 'delivered'").fetchone()[0] == total,
        timeout=30,
        message="every delivery to be marked delivered",
    )
    return wanted


class Processes:
    """Real wahook processes (gunicorn, workers) started as a user would, stopped at test end."""

    def __init__(self, tmp_path: Path, sections: dict) -> None:
        self.tmp_path = tmp_path
        self.config_path = write_config(tmp_path / "config.toml", sections)
        self.env = {**os.environ, "WAHOOK_CONFIG": str(self.config_path), "PYTHONUNBUFFERED": "1"}
        self.children: list[subprocess.Popen] = []

    def start_web(self, workers: int = 2, own_group: bool = False) -> str:
        """Start gunicorn (with gunicorn.conf.py, as `make run` does) on a free port; its base URL.

        A port found free can be taken by another program before gunicorn binds it; then
        gunicorn exits and we try another, rather than talk to whoever took it.
        """
        for _ in range(3):
            port = free_port()
            log = open(self.tmp_path / f"gunicorn-{port}.log", "wb")  # noqa: SIM115 (closed with the process)
            process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "app:app", "-c", "gunicorn.conf.py"],
                cwd=ROOT,
                env={**self.env, "WAHOOK_BIND": f"127.0.0.1:{port}", "WAHOOK_WEB_WORKERS": str(workers)},
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0 if own_group else None,
            )
            self.children.append(process)
            base = f"http://127.0.0.1:{port}"

            def up(base: str = base, process: subprocess.Popen = process) -> bool | None:
                if process.poll() is not None:
                    return None
                try:
                    return requests.get(base + "/api/webhooks/whatsapp", timeout=1).status_code == 400
                except requests.RequestException:
                    return False

            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and up() is False:
                time.sleep(0.05)
            if up():
                return base
        raise AssertionError("gunicorn did not start; see gunicorn-*.log in the test's folder")

    def start_worker(self, own_group: bool = False) -> subprocess.Popen:
        """A worker; own_group puts it in a process group of its own, as on another machine."""
        log = open(self.tmp_path / f"worker-{len(self.children)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "worker.py"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0 if own_group else None,
        )
        self.children.append(process)
        return process

    def cli(self, *args: str) -> tuple[int, dict]:
        """`flask --app app ARGS` as a separate process on this config; (exit code, its JSON)."""
        result = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "app", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result.returncode, json.loads(result.stdout)

    def stop_all(self, quick: bool = False) -> None:
        """Stop every process started, as SIGTERM does. quick (a test's end, when nothing is
        checked any more): gunicorn without its graceful wait for open connections (SIGQUIT),
        which held each test's end up to two seconds more."""
        # gunicorn's workers, found before they are told to stop: gthread's SIGQUIT handler can
        # deadlock a worker (it shuts the thread pool down inside the handler, and the signal may
        # land while that pool's lock is held), and the master, killed below after waiting, would
        # leave it running for good.
        web_workers = []
        for process in self.children:
            if process.poll() is None:
                gunicorn = "gunicorn" in process.args
                with contextlib.suppress(psutil.Error):
                    web_workers += psutil.Process(process.pid).children() if gunicorn else []
                process.send_signal(signal.SIGQUIT if quick and gunicorn else signal.SIGTERM)
        for process in self.children:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for web_worker in web_workers:
            with contextlib.suppress(psutil.Error):
                web_worker.kill()


@pytest.fixture
def processes(tmp_path, redis_url, storage_database):
    """Start real gunicorn and worker processes on this test's config (see Processes)."""
    started = Processes(tmp_path, instance_sections(tmp_path, redis_url, storage_database))
    yield started
    started.stop_all(quick=True)


@pytest.fixture
def fresh_processes(tmp_path, redis_url, storage_database):
    """Like `processes`, for a fresh install: Meta's App secret not set yet."""
    sections = instance_sections(tmp_path, redis_url, storage_database)
    sections["meta"]["app_secret"] = ""
    started = Processes(tmp_path, sections)
    yield started
    started.stop_all(quick=True)


def make_app(tmp_path, redis_url, **changes):
    """An app like the `app` fixture with some config sections changed."""
    sections = instance_sections(tmp_path, redis_url)
    for section, values in changes.items():
        sections[section] = {**sections[section], **values}
    return create_app({"TESTING": True, "config_path": str(tmp_path / "none.toml"), **sections})


def element(html: str, element_id: str) -> str:
    """The text inside the element with this id (tags removed, entities decoded, spaces squeezed)."""
    match = re.search(rf'<(\w+)[^>]*\bid="{re.escape(element_id)}"[^>]*>(.*?)</\1>', html, re.S)
    assert match, f"no element #{element_id}"
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", match.group(2))).split())


@pytest.fixture
def admin(client):
    """The test client, logged in."""
    assert login(client).status_code == 303
    return client


def status_update(wamid: str) -> dict:
    body = text_message()
    value = body["entry"][0]["changes"][0]["value"]
    del value["messages"], value["contacts"]
    value["statuses"] = [{"id": wamid, "status": "read", "timestamp": "1749416390", "recipient_id": "16505551234"}]
    return body


def shown(html: str) -> list[int]:
    """The webhooks the event log page lists, by row id, in the order shown."""
    return [int(n) for n in re.findall(r'id="webhook-(\d+)"', html)]


def attempt_due(app, conn, endpoint_id: int) -> list:
    """Send the endpoint's due deliveries here and now, as a worker's lane would."""
    claimed = delivery_states.claim_next(conn, endpoint_id, "test-lane", 10, 10)
    sender = safe_http.Sender(allow_http=True, allow_private=True)
    try:
        return send.deliver_claimed(conn, app.config["WAHOOK"], sender, endpoint_id, claimed, "test-lane")
    finally:
        sender.close()
