"""`make bench`: wahook's speed, measured on this machine, printed as one table.

Every measure starts its own wahook installation (gunicorn with gunicorn.conf.py, worker.py,
the embedded Redis, a fresh database) in a scratch folder and talks to it over 127.0.0.1 only.
Load comes from wrk (Debian's package; installed with apt-get when missing) posting signed Meta
status webhooks, each with new wamids; deliveries go to a fast asyncio receiver in its own process.

    BENCH_QUICK=1     fewer and shorter rounds, for trying a change (a minute or two; the full
                      run takes five or six)
    BENCH_ONLY=a,b    only these measures: receiver, intake, drain, latency, burst, outage, metrics,
                      engines, scaling, media, streams, publish, durability, search, versus,
                      capabilities
    BENCH_ROOT=dir    measure the wahook checkout in `dir` instead of this one (before/after)
    BENCH_BEFORE=dir  add the `versus` measure: intake and drain of this checkout against the one
                      in `dir` (say, main before a change), alternating round by round in one run
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import api_scenarios
import engines
import event_search
import intake_cpu
import media_bench
import metrics_scrape
import pg_scaling
import scenarios as sc

MB = 1024 * 1024
MEMORY_LIMIT = 150 * MB


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Table:
    """Rows of measure, result, baseline, ratio, target, verdict; printed aligned."""

    head = ("measure", "wahook", "compared with", "ratio", "target", "met")

    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def add(self, measure: str, ours: str, theirs: str = "", ratio: str = "", target: str = "", met=None) -> None:
        verdict = "" if met is None else ("yes" if met else "NO")
        self.rows.append((measure, ours, theirs, ratio, target, verdict))

    def print(self) -> None:
        rows = [self.head, *self.rows]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.head))]
        line = "| " + " | ".join(f"{{:{w}}}" for w in widths) + " |"
        print(line.format(*self.head))
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in self.rows:
            print(line.format(*row))


def spread(values: list[float]) -> str:
    return f"{min(values):.0f}..{max(values):.0f}"


def memory_cell(peak: dict[str, int]) -> tuple[str, bool]:
    text = ", ".join(f"{role} {rss / MB:.0f}" for role, rss in sorted(peak.items()))
    return f"peak RSS MB: {text}", all(rss < MEMORY_LIMIT for rss in peak.values())


def run_receiver(ws: sc.Workspace, plan: sc.Plan, table: Table) -> None:
    rate = sc.receiver_ceiling(ws)
    table.add("receiver's own ceiling (wrk, keep-alive)", f"{rate:,.0f} POST/s")


# Intake against the bare Flask app, by storage.synchronous (issue 19's targets).
INTAKE_TARGETS = {"full": 0.5, "normal": 0.6}


def run_intake(ws: sc.Workspace, plan: sc.Plan, table: Table) -> None:
    results, notes = sc.intake(ws, plan)
    theirs = sc.median(next(iter(results.values())).theirs)
    bare = f"bare Flask {theirs:,.0f}/s ({spread(next(iter(results.values())).theirs)})"
    for level, result in results.items():
        ours = sc.median(result.ours)
        table.add(
            f"intake: signed status webhooks/s, stored + enqueued, synchronous = {level}"
            f" ({plan.rounds} rounds of {plan.intake_seconds:g} s, 16 connections)",
            f"{ours:,.0f}/s ({spread(result.ours)}), p99 {sc.median(notes[f'p99_{level}']):.0f} ms",
            bare,
            f"{result.ratio:.2f}",
            f">= {INTAKE_TARGETS[level]}",
            result.ratio >= INTAKE_TARGETS[level],
        )
    cpu_bare = sc.median(notes["cpu_theirs"])
    for level in results:
        cpu = sc.median(notes[f"cpu_{level}"])
        table.add(
            f"intake: server CPU per webhook (web workers + Redis), synchronous = {level}",
            f"{cpu:.0f} us",
            f"bare Flask {cpu_bare:.0f} us",
            f"{cpu_bare / cpu:.2f}",
        )
    threaded, full = sc.median(notes["theirs_threads"]), sc.median(results["full"].ours)
    table.add(
        "intake, synchronous = full, against bare Flask served by threads (gthread: the issue's"
        " baseline, wahook's web workers before gevent)",
        f"{full:,.0f}/s",
        f"bare Flask, threads {threaded:,.0f}/s ({spread(notes['theirs_threads'])}),"
        f" {sc.median(notes['cpu_theirs_threads']):.0f} us CPU",
        f"{full / threaded:.2f}",
    )
    checks = sc.median(notes["checks"])
    table.add(
        "intake without the database: signature, JSON, events drawn, nothing stored (checks_app.py)",
        f"{checks:,.0f}/s ({spread(notes['checks'])}), {sc.median(notes['cpu_checks']):.0f} us CPU per webhook",
        bare,
        f"{checks / theirs:.2f}",
    )
    if notes["wraps"] or notes["non2xx"] or notes["errors"]:
        problems = f"pool wraps {notes['wraps']}, non-2xx {notes['non2xx']}, errors {notes['errors']}"
        table.add("intake: problems", problems)


def run_drain(ws: sc.Workspace, plan: sc.Plan, table: Table) -> None:
    results, notes = sc.drain(ws, plan)
    for workers, result in results.items():
        ours, theirs = sc.median(result.ours), sc.median(result.theirs)
        per_worker = result.ratio / workers
        target_ok = per_worker >= 0.5 and (workers != 1 or ours >= 1000)
        table.add(
            f"drain: {plan.drain_events:,} queued events delivered/s, {workers} worker process"
            + ("es" if workers > 1 else ""),
            f"{ours:,.0f}/s ({spread(result.ours)})",
            f"requests.Session loop {theirs:,.0f}/s",
            f"{result.ratio:.2f} ({per_worker:.2f} per worker)",
            ">= 0.5 per worker" + (", >= 1,000/s" if workers == 1 else ""),
            target_ok,
        )
    text, ok = memory_cell(notes["memory"])
    table.add("drain: duplicates, memory", f"{notes['duplicates']} duplicates; {text}", met=ok)


def run_engines(ws: sc.Workspace, plan: sc.Plan, table: Table) -> None:
    found = engines.compare(ws, plan)
    for (kind, count), rates in sorted((k, v) for k, v in found.items() if k != "duplicates"):
        lite, pg = sc.median(rates["sqlite"]), sc.median(rates["postgresql"])
        what = f"{count} web processes" if kind == "intake" else f"{count} worker process" + ("es" if count > 1 else "")
        table.add(
            f"engines: {kind} per second, {what}",
            f"PostgreSQL {pg:,.0f}/s ({spread(rates['postgresql'])})",
            f"SQLite {lite:,.0f}/s ({spread(rates['sqlite'])})",
            f"{pg / lite:.2f}",
        )
    table.add("engines: duplicates delivered", str(found["duplicates"]), met=found["duplicates"] == 0)


def run_scaling(ws: sc.Workspace, plan: sc.Plan, table: Table) -> None:
    found = pg_scaling.measure(ws, plan.intake_seconds, plan.drain_events // 2)
    for web in pg_scaling.WEB:
        one = found.intake[(web, 1)]
        for clients in pg_scaling.CLIENTS:
            run = found.intake[(web, clients)]
            ratio = run.rate / one.rate
            last = clients == pg_scaling.CLIENTS[-1]
            table.add(
                f"scaling: PostgreSQL 2 ms away, intake, {web} web processes, {clients} client"
                + ("s" if clients > 1 else ""),
                f"{run.rate:,.0f}/s, p50 {run.p50_ms:.0f} ms, p99 {run.p99_ms:.0f} ms",
                "1 client" if clients > 1 else "",
                f"{ratio:.1f}x" if clients > 1 else "",
                ">= 8x, p99 < 250 ms" if last else "",
                (ratio >= 8 and run.p99_ms < 250) if last else None,
            )
    one = found.drain[1]
    for workers, rate in found.drain.items():
        target = {2: 1.7, 4: 3.0}.get(workers)
        table.add(
            f"scaling: PostgreSQL 2 ms away, drain to a 20 ms receiver, {workers} worker process"
            + ("es" if workers > 1 else ""),
            f"{rate:,.0f}/s",
            "1 worker" if workers > 1 else "",
            f"{rate / one:.2f}x" if workers > 1 else "",
            f">= {target}x" if target else "",
            rate / one >= target if target else None,
        )
    table.add("scaling: duplicates delivered", str(found.duplicates), met=found.duplicates == 0)


def run_latency(ws: sc.Workspace, plan: sc.Plan, table: Table) -> None:
    got = sc.latency(ws, plan)
    table.add(
        f"latency: Meta POST start -> receiver, {plan.latency_rate:g} events/s for {plan.latency_seconds:g} s",
        f"p50 {got['p50']:.1f} ms, p99 {got['p99']:.1f} ms, max {got['max']:.0f} ms",
        f"{got['events']:,} events, {got['missing']} missing, {got['duplicates']} duplicates",
        "",
        "p50 < 20 ms, p99 < 100 ms",
        got["p50"] < 20 and got["p99"] < 100 and not got["missing"],
    )


def run_burst(ws: sc.Workspace, plan: sc.Plan, table: Table) -> None:
    got = sc.burst(ws, plan)
    clean = not (got["non2xx"] or got["socket_errors"] or got["missing"] or got["duplicates"])
    table.add(
        f"burst: {plan.burst_events:,} events posted at once, 1 worker",
        f"posted at {got['intake_rate']:,.0f}/s; all delivered after {got['all_delivered_s']:.0f} s",
        f"non-2xx {got['non2xx']}, errors {got['socket_errors']}, missing {got['missing']}, "
        f"duplicates {got['duplicates']}",
        "",
        "all 2xx, all delivered once",
        clean,
    )
    text, ok = memory_cell(got["memory"])
    table.add("burst: memory", text, target="each < 150 MB", met=ok)


def run_outage(ws: sc.Workspace, plan: sc.Plan, table: Table) -> None:
    result, notes = sc.outage(ws, plan)
    ours, theirs = sc.median(result.ours), sc.median(result.theirs)
    table.add(
        f"receiver down for a {plan.outage_events:,}-event run: intake/s, 1 worker",
        f"{ours:,.0f}/s; all delivered {sc.median(notes['caught_up_s']):.0f} s after it was back",
        f"receiver up {theirs:,.0f}/s",
        f"{result.ratio:.2f}",
        ">= 0.9, all delivered",
        result.ratio >= 0.9 and not notes["undelivered"] and not notes["non2xx"],
    )


def run_metrics(ws: sc.Workspace, plan: sc.Plan, table: Table) -> None:
    stored = 1_000_000
    got = metrics_scrape.measure(ws.root / "metrics", stored, rounds=max(10, plan.rounds * 10))
    table.add(
        f"metrics: one GET /metrics scrape, {got['stored']:,} deliveries stored ({got['series']} samples)",
        f"median {got['ours_ms']:.1f} ms, worst {got['worst_ms']:.1f} ms",
        f"counting deliveries by endpoint and state: {got['naive_ms']:.0f} ms",
        f"{got['naive_ms'] / got['ours_ms']:.0f}x faster",
        "< 50 ms",
        got["ours_ms"] < 50,
    )


def run_media(ws: sc.Workspace, plan: sc.Plan, table: Table) -> None:
    run = media_bench.media_drain(ws, plan)
    quiet, stream, download = (sc.median(v) for v in (run.quiet, run.stream, run.download))
    ratio = download / quiet
    table.add(
        f"media: drain/s of {plan.drain_events:,} events, 1 worker, while {media_bench.STREAM_RATE:g} image"
        f" messages/s of {media_bench.IMAGE_BYTES // 1024} KB are downloaded",
        f"{download:,.0f}/s ({spread(run.download)}); {run.downloaded} images downloaded, {run.failed} not",
        f"no images {quiet:,.0f}/s; images, no token {stream:,.0f}/s",
        f"{ratio:.2f} ({download / stream:.2f} vs no token)",
        ">= 0.9",
        ratio >= 0.9 and run.downloaded > 0 and not run.duplicates,
    )


def run_streams(ws: sc.Workspace, plan: sc.Plan, table: Table) -> None:
    result, notes = api_scenarios.streams(ws, plan)
    ours, theirs = sc.median(result.ours), sc.median(result.theirs)
    table.add(
        f"intake with {api_scenarios.STREAMS} event streams and {api_scenarios.SOCKETS} WebSockets open"
        f" ({plan.rounds} rounds of {plan.intake_seconds:g} s)",
        f"{ours:,.0f}/s ({spread(result.ours)}), p99 {sc.median(notes['p99_with']):.0f} ms,"
        f" {sc.median(notes['bytes_per_socket']) / 1024:.1f} KiB per open WebSocket",
        f"no streams {theirs:,.0f}/s, p99 {sc.median(notes['p99_without']):.0f} ms",
        f"{result.ratio:.2f}",
        ">= 0.9, all 200",
        result.ratio >= 0.9 and not notes["non2xx"] and not notes["errors"],
    )


def run_publish(ws: sc.Workspace, plan: sc.Plan, table: Table) -> None:
    result, notes = api_scenarios.publish(ws, plan)
    ours, theirs = sc.median(result.ours), sc.median(result.theirs)
    table.add(
        f"publish: POST /api/v1/events/s, stored + enqueued ({plan.rounds} rounds of {plan.intake_seconds:g} s)",
        f"{ours:,.0f}/s ({spread(result.ours)})",
        f"intake {theirs:,.0f}/s, same stack",
        f"{result.ratio:.2f}",
        "every 202 stored",
        notes["stored"] >= notes["posted"] and not notes["non2xx"] and not notes["errors"],
    )


def run_durability(ws: sc.Workspace, plan: sc.Plan, table: Table) -> None:
    intake, drain = sc.durability(ws, plan)
    for what, result, unit in (("intake", intake, "webhooks"), ("drain", drain, "deliveries")):
        table.add(
            f"durability: {what} {unit}/s with storage.synchronous = full (survives power loss)",
            f"{sc.median(result.ours):,.0f}/s ({spread(result.ours)})",
            f"normal (survives crashes only) {sc.median(result.theirs):,.0f}/s ({spread(result.theirs)})",
            f"{result.ratio:.2f}",
        )


def run_versus(ws: sc.Workspace, plan: sc.Plan, table: Table) -> None:
    before = os.environ.get("BENCH_BEFORE")
    if not before:
        say("versus: set BENCH_BEFORE to another checkout to compare against")
        return
    rates, cpu = sc.versus(ws, plan, Path(before))
    drained, duplicated = sc.drain_versus(ws, plan, Path(before))
    for kind, result in rates.items():
        ours, theirs = sc.median(result.ours), sc.median(result.theirs)
        table.add(
            f"versus: {kind} webhooks/s, this checkout vs {before} ({plan.rounds} rounds each, alternating)",
            f"{ours:,.0f}/s ({spread(result.ours)})",
            f"before {theirs:,.0f}/s ({spread(result.theirs)})",
            f"{result.ratio:.3f}",
            ">= 0.95",
            result.ratio >= 0.95,
        )
        used = cpu[kind]
        table.add(
            f"versus: {kind} webhooks, server CPU per webhook",
            f"{sc.median(used.ours):.0f} us ({spread(used.ours)})",
            f"before {sc.median(used.theirs):.0f} us ({spread(used.theirs)})",
            f"{1 / used.ratio:.3f}",
            ">= 0.95",
            1 / used.ratio >= 0.95,
        )
    ours, theirs = sc.median(drained.ours), sc.median(drained.theirs)
    table.add(
        f"versus: drain of {plan.drain_events:,} events, 1 worker, this checkout vs {before}"
        f" ({plan.drain_rounds} rounds each, alternating)",
        f"{ours:,.0f}/s ({spread(drained.ours)}), {duplicated} duplicates",
        f"before {theirs:,.0f}/s ({spread(drained.theirs)})",
        f"{drained.ratio:.3f}",
        ">= 0.95, 0 duplicates",
        drained.ratio >= 0.95 and duplicated == 0,
    )


def run_search(ws: sc.Workspace, plan: sc.Plan, table: Table) -> None:
    """The event log's search on a big database, before and after its indexes (migration 4)."""
    count = 200_000 if plan.rounds < 5 else 1_000_000  # BENCH_QUICK=1 fills a fifth
    result = event_search.measure(count, ws.root)
    say(event_search.report(result))
    before = result["before"]["customer"]
    worst_page = max(result["pages"].values())
    table.add(
        f"/events search on {count:,} webhooks: slowest page's queries of {len(result['pages'])} searches",
        f"{worst_page:.1f} ms (the search itself <= {max(result['after'].values()):.2f} ms)",
        f"json scan, customer {before:,.0f} ms",
        f"{before / worst_page:,.0f}x faster",
        "<= 50 ms",
        worst_page <= 50,
    )


CAPABILITIES = {
    "no-metrics": "without the metric triggers (GET /metrics totals)",
    "no-search": "without the event log's search indexes",
    "no-stale": "without stale statuses (one look-up per status)",
    "threads-8": "8 threads at once instead of 1 (group commit shares commits)",
}


def run_capabilities(ws: sc.Workspace, plan: sc.Plan, table: Table) -> None:
    """CPU per webhook in one process, without HTTP, of each capability (bench/intake_cpu.py);
    with BENCH_BEFORE, of that checkout too."""
    roots = {"now": sc.ROOT}
    if os.environ.get("BENCH_BEFORE"):
        roots["before"] = Path(os.environ["BENCH_BEFORE"])
    count = 4000 if plan.rounds >= 5 else 2000
    found = intake_cpu.measure(roots, rounds=3 if plan.rounds >= 5 else 2, count=count)
    shipped, message = found[("now", "shipped", "status")], found[("now", "shipped", "message")]
    table.add(
        "capabilities: CPU per status webhook, in process, no HTTP, synchronous = normal",
        f"{shipped:.0f} us",
        f"bare Flask {found[('now', 'bare', 'status')]:.0f} us",
        f"{found[('now', 'bare', 'status')] / shipped:.2f}",
    )
    if "before" in roots:
        for kind, ours in (("status", shipped), ("message", message)):
            theirs = found[("before", "shipped", kind)]
            table.add(
                f"capabilities: {kind} webhook, this checkout vs BENCH_BEFORE",
                f"{ours:.0f} us",
                f"before {theirs:.0f} us",
                f"{ours / theirs:.2f}",
            )
    # The difference from "as shipped": what a capability costs, or what sharing commits saves.
    rows = [(f"status webhook, {what}", variant, "status") for variant, what in CAPABILITIES.items()]
    rows += [
        ("text message from a returning customer, without contact events", "no-contacts", "message"),
        ("text message from a returning customer, 8 threads at once", "threads-8", "message"),
    ]
    for what, variant, kind in rows:
        base, other = found[("now", "shipped", kind)], found[("now", variant, kind)]
        verb = "saves" if variant == "threads-8" else "costs"
        table.add(
            f"capabilities: {what}", f"{other:.0f} us", f"as shipped {base:.0f} us", f"{verb} {base - other:.0f} us"
        )


MEASURES: dict[str, Callable[[sc.Workspace, sc.Plan, Table], None]] = {
    "receiver": run_receiver,
    "intake": run_intake,
    "drain": run_drain,
    "latency": run_latency,
    "burst": run_burst,
    "outage": run_outage,
    "metrics": run_metrics,
    "engines": run_engines,
    "scaling": run_scaling,
    "media": run_media,
    "streams": run_streams,
    "publish": run_publish,
    "durability": run_durability,
    "versus": run_versus,
    "search": run_search,
    "capabilities": run_capabilities,
}


def main() -> int:
    quick = os.environ.get("BENCH_QUICK") not in (None, "", "0")
    plan = sc.Plan.quick() if quick else sc.Plan()
    only = [m for m in (os.environ.get("BENCH_ONLY") or ",".join(MEASURES)).split(",") if m]
    unknown = set(only) - set(MEASURES)
    if unknown:
        say(f"unknown measures {sorted(unknown)}; choose from {', '.join(MEASURES)}")
        return 2
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    table = Table()
    ws = sc.Workspace()
    try:
        for name in only:
            say(f"[{time.monotonic() - started:5.0f} s] {name}...")
            MEASURES[name](ws, plan, table)
    finally:
        ws.close()
    cpus = len(os.sched_getaffinity(0))
    # Others' work on the machine slows both sides of a comparison; the load says how much there was.
    load = f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    kind = "quick" if quick else "full"
    print(f"\nwahook benchmark ({kind} run, {cpus} CPUs, {time.monotonic() - started:.0f} s, {load})\n")
    table.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
