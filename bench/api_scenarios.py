"""The API's measures for `make bench`: intake beside 50 open event streams and 200 open
WebSockets, the memory each open socket costs, and publishing.

Both compare against intake on the same stack in the same round, alternating which goes
first, so a noisy neighbour on the machine slows both sides alike.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from pathlib import Path

import psutil
from load import write_pool, wrk_timed
from scenarios import Comparison, Plan, Workspace
from stack import INTAKE_PATH

STREAMS = 50
SOCKETS = 200
STREAM_KEYS = 2  # one key may hold at most half of a web process's stream slots
PUBLISH_PATH = "/api/v1/events"


def open_held(base: str, count: int, target: str, headers: str, status: bytes) -> list[socket.socket]:
    """`count` connections, each a GET of `target` with `headers` answered with `status`, held open."""
    host, port = base.removeprefix("http://").split(":")
    opened = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
        opened.append(sock)
    for sock in opened:
        head = sock.recv(4096)
        if not head.startswith(b"HTTP/1.1 " + status):
            raise RuntimeError(f"{target} was refused: {head[:200]!r}")
    return opened


def open_streams(base: str, key: str, count: int) -> list[socket.socket]:
    """`count` open event streams, as many browser tabs or UIs would hold them. They ask for
    `campaign.*`, which the Meta traffic never makes, so what is measured is the cost of
    holding them open (a thread each), not of the bench reading events."""
    headers = f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n"
    return open_held(base, count, "/api/v1/stream?events=campaign.*", headers, b"200")


def open_sockets(base: str, key: str, count: int) -> list[socket.socket]:
    """`count` open WebSockets on `GET /api/v1/ws`, asking for `campaign.*` like the streams."""
    nonce = base64.b64encode(os.urandom(16)).decode()  # any 16 bytes; the server only echoes a hash
    headers = (
        f"Authorization: Bearer {key}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {nonce}\r\n"
    )
    return open_held(base, count, "/api/v1/ws?events=campaign.*", headers, b"101")


def web_rss(web_pid: int) -> int:
    """Resident memory of gunicorn's worker processes, in bytes."""
    return sum(child.memory_info().rss for child in psutil.Process(web_pid).children())


def streams(ws: Workspace, plan: Plan) -> tuple[Comparison, dict]:
    """Intake webhooks/s with 50 streams and 200 WebSockets open (ours) and with none
    (theirs), same stack; and the web processes' memory per open WebSocket."""
    pool = ws.root / "streams.pool"
    write_pool(pool, plan.intake_pool)
    result = Comparison()
    notes: dict = {"non2xx": 0, "errors": 0, "p99_with": [], "p99_without": [], "bytes_per_socket": []}
    for n in range(plan.rounds):
        stack = ws.stack()
        stack.start_redis()
        stack.add_endpoint(ws.sink.url)
        keys = [stack.add_api_key("read") for _ in range(STREAM_KEYS)]
        base = stack.start_web()
        wrk_timed(base + INTAKE_PATH, pool, 1)
        for with_streams in (n % 2 == 0, n % 2 == 1):
            opened = []
            if with_streams:
                for k, key in enumerate(keys):
                    opened += open_streams(base, key, STREAMS // STREAM_KEYS + (k < STREAMS % STREAM_KEYS))
                before = web_rss(stack.web.pid)
                opened += open_sockets(base, keys[0], SOCKETS)
                notes["bytes_per_socket"].append((web_rss(stack.web.pid) - before) / SOCKETS)
            run = wrk_timed(base + INTAKE_PATH, pool, plan.intake_seconds)
            for sock in opened:
                sock.close()
            (result.ours if with_streams else result.theirs).append(run.rate)
            notes["p99_with" if with_streams else "p99_without"].append(run.p99_ms)
            notes["non2xx"] += run.non2xx
            notes["errors"] += run.socket_errors
        stack.stop()
    return result, notes


def publish_pool(path: Path, key: str, count: int) -> None:
    """wrk's pool for publishing: "Bearer <key>" then a campaign event, one per line."""
    with path.open("w") as f:
        for n in range(count):
            body = json.dumps({"event": "campaign.progress", "data": {"n": n, "sent": n * 10, "failed": 0}})
            f.write(f"Bearer {key}\t{body}\n")


def publish(ws: Workspace, plan: Plan) -> tuple[Comparison, dict]:
    """POST /api/v1/events/s (ours) against intake webhooks/s (theirs), same stack, with an
    endpoint that selects both, so each makes one event and one delivery."""
    intake_pool = ws.root / "publish-intake.pool"
    write_pool(intake_pool, plan.intake_pool)
    result = Comparison()
    notes: dict = {"non2xx": 0, "errors": 0, "stored": 0, "posted": 0}
    for n in range(plan.rounds):
        stack = ws.stack()
        stack.start_redis()
        stack.add_endpoint(ws.sink.url)
        key = stack.add_api_key("publish")
        pool = ws.root / f"publish-{n}.pool"
        publish_pool(pool, key, plan.intake_pool)
        base = stack.start_web()
        wrk_timed(base + INTAKE_PATH, intake_pool, 1)
        before = stack.counts().get("events", 0)
        for publishing in (n % 2 == 0, n % 2 == 1):
            if publishing:
                run = wrk_timed(base + PUBLISH_PATH, pool, plan.intake_seconds, header="Authorization")
                notes["posted"] += run.posted
                notes["stored"] += stack.counts().get("events", 0) - before
            else:
                run = wrk_timed(base + INTAKE_PATH, intake_pool, plan.intake_seconds)
            before = stack.counts().get("events", 0)
            (result.ours if publishing else result.theirs).append(run.rate)
            notes["non2xx"] += run.non2xx
            notes["errors"] += run.socket_errors
        stack.stop()
    return result, notes
