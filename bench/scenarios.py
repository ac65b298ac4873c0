"""The measurements `make bench` makes. Each returns plain numbers; run.py prints the table.

Comparisons run both sides alternately, round after round, in the same run, so a noisy
neighbour on the machine slows both; medians of the rounds are what is reported.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from load import paced, signed, write_message_pool, write_pool, wrk_once, wrk_timed
from sink import Sink, duplicates
from stack import INTAKE_PATH, ROOT, Memory, Stack, free_port, wait_until


@dataclass
class Plan:
    """How much to do: the full run, or a quicker one (BENCH_QUICK=1) for iteration."""

    rounds: int = 5
    intake_seconds: float = 8
    intake_pool: int = 60_000
    drain_events: int = 20_000
    baseline_posts: int = 4_000
    drain_workers: tuple[int, ...] = (1, 2)
    drain_rounds: int = 3
    latency_rate: float = 200
    latency_seconds: float = 30
    burst_events: int = 50_000
    outage_events: int = 10_000
    outage_rounds: int = 2

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            rounds=2,
            intake_seconds=4,
            intake_pool=25_000,
            drain_events=5_000,
            baseline_posts=2_000,
            drain_workers=(1,),
            drain_rounds=2,
            latency_seconds=10,
            burst_events=10_000,
            outage_events=3_000,
            outage_rounds=1,
        )


@dataclass
class Comparison:
    ours: list[float] = field(default_factory=list)
    theirs: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ours) / statistics.median(self.theirs)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class Workspace:
    """A scratch folder for the run, with a receiver on a fixed port."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="wahook-bench-"))
        self.sink = Sink(free_port()).start()
        self.count = 0
        self.stacks: list[Stack] = []

    def stack(self, **options) -> Stack:
        self.count += 1
        # BENCH_ROOT runs another wahook checkout (say, the last release) for a before/after figure.
        if options.get("root") is None:
            options["root"] = Path(os.environ.get("BENCH_ROOT") or ROOT)
        self.stacks.append(Stack(self.root / f"stack-{self.count}", **options))
        return self.stacks[-1]

    def close(self) -> None:
        for stack in self.stacks:  # stopping twice is harmless; a measure that failed left some up
            stack.stop()
        self.sink.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# -- receiver ceiling


def receiver_ceiling(ws: Workspace, seconds: float = 3) -> float:
    """POSTs per second the receiver itself answers (wrk, keep-alive), so it is shown not to be the limit."""
    pool = ws.root / "ceiling.pool"
    write_pool(pool, 2000)
    ws.sink.reset()
    result = wrk_timed(ws.sink.url, pool, seconds)
    ws.sink.reset()
    return result.rate


# -- intake


def intake(ws: Workspace, plan: Plan) -> tuple[dict[str, Comparison], dict]:
    """Signed status webhooks per second through wahook's intake, with storage.synchronous "full"
    and "normal", each against a bare Flask app under the same gunicorn settings, and the intake
    without the database (checks_app.py), and bare Flask served by threads (gthread, the web
    workers before gevent): the five in turn, round after round, in the same run.
    Returns ({level: wahook vs bare}, notes)."""
    pool = ws.root / "intake.pool"
    warm = ws.root / "warm.pool"
    write_pool(pool, plan.intake_pool)
    write_pool(warm, 3000)
    levels = ("full", "normal")
    result = {level: Comparison() for level in levels}
    notes: dict = {"wraps": 0, "non2xx": 0, "errors": 0, "p99_theirs": [], "cpu_theirs": []}
    notes |= {f"{what}_{level}": [] for what in ("p99", "cpu") for level in levels}  # CPU: us per request
    notes |= {"checks": [], "cpu_checks": []}  # the intake without the database (checks_app.py)
    notes |= {"theirs_threads": [], "cpu_theirs_threads": []}  # bare Flask, gthread workers
    for _ in range(plan.rounds):
        run, cpu_us = baseline_once(ws, "bench.bare_app:app", pool, warm, plan.intake_seconds)
        notes["cpu_theirs"].append(cpu_us)
        notes["p99_theirs"].append(run.p99_ms)
        threaded, cpu_us = baseline_once(ws, "bench.bare_app:app", pool, warm, plan.intake_seconds, "gthread")
        notes["theirs_threads"].append(threaded.rate)
        notes["cpu_theirs_threads"].append(cpu_us)
        checks, cpu_us = baseline_once(ws, "bench.checks_app:app", pool, warm, plan.intake_seconds)
        notes["checks"].append(checks.rate)
        notes["cpu_checks"].append(cpu_us)
        notes["non2xx"] += checks.non2xx
        for level in levels:
            result[level].theirs.append(run.rate)
            ours, cpu_us = intake_once(ws, pool, warm, plan.intake_seconds, synchronous=level)
            notes[f"cpu_{level}"].append(cpu_us)
            result[level].ours.append(ours.rate)
            notes[f"p99_{level}"].append(ours.p99_ms)
            notes["wraps"] += ours.wraps
            notes["non2xx"] += ours.non2xx
            notes["errors"] += ours.socket_errors
    return result, notes


def baseline_once(ws: Workspace, app: str, pool: Path, warm: Path, seconds: float, worker_class: str = ""):
    """One timed wrk run against `app` served by wahook's gunicorn settings (with `worker_class`
    instead of gevent if given), with no Redis, worker or endpoint; (the run, server CPU
    microseconds per request)."""
    stack = ws.stack()
    if worker_class:
        stack.env["WAHOOK_WEB_WORKER_CLASS"] = worker_class
    base = stack.start_web(app)
    wrk_timed(base + INTAKE_PATH, warm, 1)
    cpu = stack.cpu_seconds()
    run = wrk_timed(base + INTAKE_PATH, pool, seconds)
    used = (stack.cpu_seconds() - cpu) / run.posted * 1e6
    stack.stop()
    return run, used


def intake_once(ws: Workspace, pool: Path, warm: Path, seconds: float, **options):
    """One timed wrk run against a fresh wahook (`options` go to its Stack); (the run, server CPU
    microseconds per webhook). Raises when fewer deliveries were stored than posts answered."""
    ours = ws.stack(**options)
    ours.start_redis()
    ours.add_endpoint(ws.sink.url)
    base = ours.start_web()
    wrk_timed(base + INTAKE_PATH, warm, 1)
    cpu = ours.cpu_seconds()
    run = wrk_timed(base + INTAKE_PATH, pool, seconds)
    cpu_us = (ours.cpu_seconds() - cpu) / run.posted * 1e6
    stored = ours.counts()
    ours.stop()
    if stored.get("pending", 0) < run.posted:
        raise RuntimeError(f"intake answered {run.posted} posts but stored {stored}")
    return run, cpu_us


VERSUS_CUSTOMERS = 500


def versus(ws: Workspace, plan: Plan, before: Path) -> tuple[dict[str, Comparison], dict[str, Comparison]]:
    """Intake of this checkout (ours) against another one (`before`, theirs), round after round
    alternately, for status webhooks and for text messages from returning customers: each
    customer has written once before the timed run (as in steady use, where most messages come
    from people the gateway knows). Returns (webhooks/s, server CPU microseconds per webhook)
    by kind; CPU per webhook is the steadier of the two on a machine others are loading."""
    pools = {"status": (ws.root / "versus-status.pool", ws.root / "versus-status-warm.pool")}
    write_pool(pools["status"][0], plan.intake_pool)
    write_pool(pools["status"][1], VERSUS_CUSTOMERS)
    pools["message"] = (ws.root / "versus-message.pool", ws.root / "versus-message-warm.pool")
    write_message_pool(pools["message"][0], plan.intake_pool, customers=VERSUS_CUSTOMERS)
    write_message_pool(pools["message"][1], VERSUS_CUSTOMERS, customers=VERSUS_CUSTOMERS)
    rates = {kind: Comparison() for kind in pools}
    cpu = {kind: Comparison() for kind in pools}
    for round_number in range(plan.rounds):
        # Who goes first swaps every round, so neither side always runs on a machine just warmed.
        sides = [("ours", ROOT), ("theirs", before)][:: -1 if round_number % 2 else 1]
        for kind, (pool, warm) in pools.items():
            for side, root in sides:
                stack = ws.stack(root=root)
                stack.start_redis()
                stack.add_endpoint(ws.sink.url)
                base = stack.start_web()
                wrk_once(base + INTAKE_PATH, warm, VERSUS_CUSTOMERS, stack.stored)
                used = stack.cpu_seconds()
                run = wrk_timed(base + INTAKE_PATH, pool, plan.intake_seconds)
                getattr(cpu[kind], side).append((stack.cpu_seconds() - used) / run.posted * 1e6)
                stack.stop()
                getattr(rates[kind], side).append(run.rate)
    return rates, cpu


# -- delivery drain


def prepare_queue(ws: Workspace, events: int, root: Path | None = None) -> Path:
    """A database holding `events` pending deliveries to the receiver, made by the real intake
    (of the checkout at `root`, this one by default)."""
    stack = ws.stack(root=root)
    stack.start_redis()
    stack.add_endpoint(ws.sink.url)
    base = stack.start_web()
    per_body = 10
    pool = ws.root / "queue.pool"
    write_pool(pool, events // per_body, statuses=per_body)
    wrk_once(base + INTAKE_PATH, pool, events // per_body, stack.stored)
    stack.stop()
    conn = sqlite3.connect(stack.config.database_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pending = conn.execute("SELECT count(*) FROM deliveries WHERE state = 'pending'").fetchone()[0]
    conn.close()
    if pending != events:
        raise RuntimeError(f"prepared {pending} deliveries, wanted {events}")
    return stack.config.database_path


def requests_loop(url: str, posts: int) -> float:
    """The baseline: one process posting signed event-sized bodies with requests.Session, one after another."""
    raw = b'{"event":"message.status_updated",' + b'"x":"' + b"y" * 900 + b'"}'
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Wahook-Webhook/1.0",
        "X-Webhook-Event": "message.status_updated",
        "X-Webhook-Id": "evt_baseline",
        "X-Webhook-Timestamp": "1700000000",
        "X-Webhook-Signature": "0" * 64,
        "webhook-id": "evt_baseline",
        "webhook-timestamp": "1700000000",
        "webhook-signature": "v1," + "A" * 44,
    }
    session = requests.Session()
    for _ in range(50):
        session.post(url, data=raw, headers=headers, timeout=10)
    started = time.perf_counter()
    for _ in range(posts):
        session.post(url, data=raw, headers=headers, timeout=10, allow_redirects=False)
    elapsed = time.perf_counter() - started
    session.close()
    return posts / elapsed


def drain_once(
    ws: Workspace, template: Path, events: int, workers: int, synchronous: str = "full", root: Path | None = None
) -> tuple[float, int, dict]:
    """Deliver a prepared queue with `workers` worker processes (of the checkout at `root`, this
    one by default); (deliveries/s, duplicates, peak memory)."""
    stack = ws.stack(workers=workers, synchronous=synchronous, root=root)
    stack.adopt_database(template)
    stack.start_redis()
    ws.sink.reset()
    with Memory(stack) as memory:
        stack.start_workers()
        wait_until(lambda: ws.sink.count() >= events, 300, f"{events} deliveries", interval=0.1)
        time.sleep(0.3)  # anything more would be a duplicate; give it a moment to show
    stack.stop()
    records = ws.sink.records()
    ws.sink.reset()
    times = sorted(at for at, _ in records)
    rate = (len(times) - 1) / (times[-1] - times[0])
    return rate, duplicates(records), memory.peak


def drain(ws: Workspace, plan: Plan) -> tuple[dict[int, Comparison], dict]:
    template = prepare_queue(ws, plan.drain_events)
    out: dict[int, Comparison] = {}
    notes = {"duplicates": 0, "memory": {}}
    for workers in plan.drain_workers:
        out[workers] = result = Comparison()
        for _ in range(plan.drain_rounds):
            ws.sink.reset()
            result.theirs.append(requests_loop(ws.sink.url, plan.baseline_posts))
            ws.sink.reset()
            rate, dups, peak = drain_once(ws, template, plan.drain_events, workers)
            result.ours.append(rate)
            notes["duplicates"] += dups
            for role, rss in peak.items():
                notes["memory"][role] = max(notes["memory"].get(role, 0), rss)
    return out, notes


def drain_versus(ws: Workspace, plan: Plan, before: Path) -> tuple[Comparison, int]:
    """Drain with one worker of this checkout (ours) against another one (`before`, theirs), round
    after round alternately, each side from a queue its own intake made. (deliveries/s, duplicates)."""
    roots = {"ours": ROOT, "theirs": before}
    templates = {side: prepare_queue(ws, plan.drain_events, root) for side, root in roots.items()}
    result, duplicated = Comparison(), 0
    for round_number in range(plan.drain_rounds):
        for side in ("ours", "theirs")[:: -1 if round_number % 2 else 1]:
            rate, dups, _ = drain_once(ws, templates[side], plan.drain_events, 1, root=roots[side])
            getattr(result, side).append(rate)
            duplicated += dups
    return result, duplicated


# -- latency


def latency(ws: Workspace, plan: Plan) -> dict:
    """Start of the Meta POST to arrival at the receiver, at a steady offered rate."""
    stack = ws.stack()
    stack.start_redis()
    stack.add_endpoint(ws.sink.url)
    base = stack.start_web()
    stack.start_workers()
    for _ in range(20):  # warm every process's first request and first delivery
        raw, signature, _ = signed(1)
        requests.post(base + INTAKE_PATH, data=raw, headers={"X-Hub-Signature-256": signature}, timeout=10)
    wait_until(lambda: ws.sink.count() >= 20, 30, "warm-up deliveries")
    ws.sink.reset()
    started = paced(base, plan.latency_rate, plan.latency_seconds)
    wait_until(lambda: ws.sink.count() >= len(started), 60, "every paced event")
    records = ws.sink.records()
    stack.stop()
    ws.sink.reset()
    arrived = {}
    for at, event_id in records:
        arrived.setdefault(event_id, at)
    delays = [(arrived[i] - t) * 1000 for i, t in started.items() if i in arrived]
    return {
        "p50": percentile(delays, 50),
        "p99": percentile(delays, 99),
        "max": max(delays),
        "events": len(started),
        "missing": len(started) - len(delays),
        "duplicates": duplicates(records),
    }


# -- burst


def burst(ws: Workspace, plan: Plan) -> dict:
    """Post `burst_events` webhooks as fast as wrk can while one worker delivers; check everything."""
    pool = ws.root / "burst.pool"
    ids = write_pool(pool, plan.burst_events)
    stack = ws.stack()
    stack.start_redis()
    stack.add_endpoint(ws.sink.url)
    base = stack.start_web()
    stack.start_workers()
    ws.sink.reset()
    with Memory(stack) as memory:
        started = time.monotonic()
        posted = wrk_once(base + INTAKE_PATH, pool, plan.burst_events, stack.stored)
        wait_until(lambda: ws.sink.count() >= len(ids), 600, "every burst event delivered", interval=0.2)
        drained = time.monotonic() - started
        time.sleep(1)  # let any duplicate show
    records = ws.sink.records()
    stack.stop()
    ws.sink.reset()
    arrived = {event_id for _, event_id in records}
    return {
        "posted": posted.posted,
        "intake_rate": posted.rate,
        "non2xx": posted.non2xx,
        "socket_errors": posted.socket_errors,
        "missing": len(set(ids) - arrived),
        "duplicates": duplicates(records),
        "all_delivered_s": drained,
        "memory": memory.peak,
    }


# -- receiver down


def outage_once(ws: Workspace, pool: Path, events: int, receiver_up: bool) -> dict:
    """Post a run of webhooks with the receiver up or down, workers running; then (if it was down)
    bring the receiver back and wait until everything has arrived."""
    stack = ws.stack()
    stack.start_redis()
    stack.add_endpoint(ws.sink.url)
    base = stack.start_web()
    stack.start_workers()
    if not receiver_up:
        ws.sink.stop()
    run = wrk_once(base + INTAKE_PATH, pool, events, stack.stored)
    if not receiver_up:
        ws.sink.start()
    back = time.monotonic()
    wait_until(lambda: stack.counts().get("delivered", 0) >= events, 300, "delivery after the outage", interval=0.5)
    caught_up = time.monotonic() - back
    stack.stop()
    ws.sink.reset()
    return {"rate": run.rate, "non2xx": run.non2xx, "caught_up_s": caught_up, "states": stack.counts()}


def outage(ws: Workspace, plan: Plan) -> tuple[Comparison, dict]:
    """Intake throughput with the receiver down vs up (workers running), and the catch-up after."""
    result = Comparison()
    notes: dict = {"caught_up_s": [], "non2xx": 0, "undelivered": 0}
    for n in range(plan.outage_rounds):
        for up in (True, False):
            pool = ws.root / f"outage-{n}-{up}.pool"
            write_pool(pool, plan.outage_events)
            got = outage_once(ws, pool, plan.outage_events, up)
            (result.theirs if up else result.ours).append(got["rate"])
            notes["non2xx"] += got["non2xx"]
            notes["undelivered"] += plan.outage_events - got["states"].get("delivered", 0)
            if not up:
                notes["caught_up_s"].append(got["caught_up_s"])
    return result, notes


# -- durability


def durability(ws: Workspace, plan: Plan) -> tuple[Comparison, Comparison]:
    """What storage.synchronous = "full" (ours) costs against "normal" (theirs): intake webhooks/s
    and drain deliveries/s, each level in turn, round after round, in the same run."""
    pool, warm = ws.root / "durability.pool", ws.root / "durability-warm.pool"
    write_pool(pool, plan.intake_pool)
    write_pool(warm, 3000)
    intake_rates, drain_rates = Comparison(), Comparison()
    for _ in range(plan.rounds):
        for level, side in (("normal", intake_rates.theirs), ("full", intake_rates.ours)):
            side.append(intake_once(ws, pool, warm, plan.intake_seconds, synchronous=level)[0].rate)
    template = prepare_queue(ws, plan.drain_events)
    for _ in range(plan.drain_rounds):
        for level, side in (("normal", drain_rates.theirs), ("full", drain_rates.ours)):
            side.append(drain_once(ws, template, plan.drain_events, 1, synchronous=level)[0])
    return intake_rates, drain_rates
