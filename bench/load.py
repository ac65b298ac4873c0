"""Load for the benchmarks: pools of signed Meta bodies, wrk runs over them, a paced sender.

Every body is a realistic Meta status webhook from samples.status_sample with new wamids,
signed with the benchmark's app secret, so no two are duplicates of each other.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stack import APP_SECRET, INTAKE_PATH, ROOT, VERIFY_TOKEN

sys.path.insert(0, str(ROOT))

from gateway.intake import meta_parser, samples, webhook

LUA = Path(__file__).with_name("post.lua")
FILLER = f"hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=filler"


def signed(statuses: int = 1) -> tuple[bytes, str, list[str]]:
    """(raw body, X-Hub-Signature-256, the event ids wahook will draw from it)."""
    body = samples.status_sample(statuses)
    raw = json.dumps(body, separators=(",", ":")).encode()
    signature = webhook.meta_signature(APP_SECRET, raw)
    ids = [event.body["event_id"] for event in meta_parser.parse(body, time.time())]
    return raw, signature, ids


def signed_message(customer: int) -> bytes:
    """A signed text message webhook (as wrk's pool line) from returning customer number `customer`."""
    wa_id = str(447700900000 + customer)
    body = samples.incoming(
        samples.message("text", {"body": "Is the fern still in stock?"}, sender=wa_id),
        contacts=[samples.contact(wa_id, f"Customer {customer}")],
    )
    raw = json.dumps(body, separators=(",", ":")).encode()
    return webhook.meta_signature(APP_SECRET, raw).encode() + b"\t" + raw + b"\n"


def write_message_pool(path: Path, count: int, customers: int) -> None:
    """Write `count` signed text messages from `customers` returning customers (each new wamid)."""
    with path.open("wb") as f:
        for n in range(count):
            f.write(signed_message(n % customers))


def write_pool(path: Path, count: int, statuses: int = 1) -> list[str]:
    """Write `count` signed bodies as wrk's pool file; returns every event id in them."""
    ids: list[str] = []
    with path.open("wb") as f:
        for _ in range(count):
            raw, signature, drawn = signed(statuses)
            f.write(signature.encode() + b"\t" + raw + b"\n")
            ids += drawn
    return ids


def ensure_wrk() -> str:
    """wrk's path, installing Debian's package when it is missing (the benchmark runs as root)."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found; installing it with apt-get", file=sys.stderr, flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is needed: apt-get install wrk")
    return found


@dataclass
class WrkResult:
    posted: int
    seconds: float
    non2xx: int
    socket_errors: int
    wraps: int
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.posted / self.seconds if self.seconds else 0.0


def _result(output: str, seconds: float | None = None) -> WrkResult:
    line = next((x for x in reversed(output.splitlines()) if x.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{output[-2000:]}")
    data = json.loads(line)
    return WrkResult(
        posted=data["posted"],
        seconds=seconds if seconds is not None else data["duration_us"] / 1e6,
        non2xx=data["non2xx"],
        socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
        wraps=data["wraps"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )


def wrk_command(
    url: str, pool: Path, seconds: float, threads: int, connections: int, mode: str, marker: str, header: str = ""
):
    """wrk posting bodies from `pool` through post.lua; `mode` is "loop" (timed) or "once"."""
    return [
        ensure_wrk(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
        "--",
        str(pool),
        str(threads),
        mode,
        marker,
        FILLER,
        *([header] if header else []),
    ]


def wrk_timed(
    url: str, pool: Path, seconds: float, threads: int = 2, connections: int = 16, header: str = ""
) -> WrkResult:
    """Post bodies from `pool` for `seconds`, as fast as the server answers; the pool's first
    column goes in `header` (default X-Hub-Signature-256)."""
    command = wrk_command(url, pool, seconds, threads, connections, "loop", "-", header)
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    return _result(done.stdout + done.stderr)


def wrk_once(
    url: str,
    pool: Path,
    lines: int,
    stored: Callable[[], int],
    threads: int = 2,
    connections: int = 16,
    limit: float = 600,
) -> WrkResult:
    """Post every body of `pool` once, as fast as the server answers. `stored()` says how many
    the server has kept so far; the run ends when it reaches `lines` (or stops growing once all
    were sent, when some failed) and is timed to that moment."""
    marker = pool.with_suffix(".sent")
    for old in pool.parent.glob(marker.name + ".*"):
        old.unlink()
    command = wrk_command(url, pool, limit, threads, connections, "once", str(marker))
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    count, changed = 0, started
    while process.poll() is None:
        now = time.monotonic()
        latest = stored()
        if latest != count:
            count, changed = latest, now
        all_sent = len(list(pool.parent.glob(marker.name + ".*"))) >= threads
        if count >= lines or (all_sent and now - changed > 3):
            process.send_signal(signal.SIGINT)  # wrk then stops and prints its summary
            break
        time.sleep(0.02)
    output = process.communicate(timeout=60)[0]
    result = _result(output, changed - started)
    if count < lines:
        print(f"warning: the server stored {count} of {lines} bodies", file=sys.stderr)
    return result


def paced(base: str, rate: float, seconds: float, senders: int = 8) -> dict[str, float]:
    """Post one fresh signed body every 1/rate s for `seconds` (open loop: the schedule does not
    wait for answers). Returns {event id: time.time() when its POST started}."""
    host, port = base.removeprefix("http://").split(":")
    count = int(rate * seconds)
    prepared = [signed(1) for _ in range(count)]
    started: dict[str, float] = {}
    failures: list[str] = []
    work: queue.Queue = queue.Queue()

    def sender() -> None:
        while (item := work.get()) is not None:
            raw, signature, ids = item
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            at = time.time()
            try:
                conn.request(
                    "POST",
                    INTAKE_PATH,
                    body=raw,
                    headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
                )
                status = conn.getresponse().status
                if status != 200:
                    failures.append(f"HTTP {status}")
            except OSError as exc:
                failures.append(str(exc))
            finally:
                conn.close()
            for event_id in ids:
                started[event_id] = at

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(senders)]
    for thread in threads:
        thread.start()
    origin = time.monotonic()
    for n, item in enumerate(prepared):
        delay = origin + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        work.put(item)
    for _ in threads:
        work.put(None)
    for thread in threads:
        thread.join()
    if failures:
        print(f"warning: {len(failures)} paced posts failed, e.g. {failures[0]}", file=sys.stderr)
    return started


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))
