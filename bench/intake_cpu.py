"""What each capability costs the intake: CPU per webhook, in one process, without HTTP.

`make bench` (BENCH_ONLY=capabilities) runs `measure`, which starts this file once per variant
and checkout, each in a fresh process: the checkout's own app, built by its create_app, gets N
signed Meta webhooks through Flask's test client, and the process's CPU time (user + system)
per webhook is what it prints. Variants switch one capability off, so the difference from
"as shipped" is what that capability costs:

    shipped           the checkout as it is
    no-metrics        the metric triggers dropped (GET /metrics totals)
    no-search         the event log's search indexes dropped (generated columns stay)
    no-stale          status_order.settle answers "not stale" without asking the database
    no-contacts       contacts.draw draws nothing (for message webhooks)
    threads-8         8 threads posting at once: group commit has batches to share

The bare Flask app (bench/bare_app.py) through the same test client is the floor. Webhooks are
status updates with new wamids, or text messages from 500 returning customers (`--kind message`).

    python bench/intake_cpu.py ROOT VARIANT KIND SYNCHRONOUS   -> prints {"cpu_us": ...}
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ("shipped", "no-metrics", "no-search", "no-stale", "no-contacts", "threads-8")
SEARCH_INDEXES = (
    "events_customer",
    "events_customer_user",
    "events_message",
    "events_name",
    "deliveries_state_webhook",
)
METRIC_TRIGGERS = ("metric_webhook", "metric_event", "metric_delivery_new")
CUSTOMERS = 500
WARM = 500


def _bodies(kind: str, count: int) -> list[bytes]:
    sys.path.insert(0, str(HERE.parent))  # this checkout's samples, whichever checkout is measured
    from gateway.intake import samples

    sys.path.remove(str(HERE.parent))
    # The checkout measured imports its own package: forget this one's (else it would be measured).
    for name in [name for name in sys.modules if name == "gateway" or name.startswith("gateway.")]:
        del sys.modules[name]

    if kind == "status":
        return [json.dumps(samples.status_sample(1), separators=(",", ":")).encode() for _ in range(count)]
    bodies = []
    for n in range(count):
        wa_id = str(447700900000 + n % CUSTOMERS)
        body = samples.incoming(
            samples.message("text", {"body": "Is the fern still in stock?"}, sender=wa_id),
            contacts=[samples.contact(wa_id, f"Customer {n % CUSTOMERS}")],
        )
        bodies.append(json.dumps(body, separators=(",", ":")).encode())
    return bodies


def _switch_off(variant: str, conn) -> None:
    """Take one capability away from this process (see the module docstring)."""
    if variant == "no-metrics":
        for name in METRIC_TRIGGERS:
            conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    elif variant == "no-search":
        for name in SEARCH_INDEXES:
            conn.execute(f"DROP INDEX IF EXISTS {name}")
    elif variant == "no-stale":
        from gateway.intake import status_order

        status_order.settle = lambda conn, message_id, status, earlier=None, known=None: (False, status)
    elif variant == "no-contacts":
        from gateway.intake import contacts

        contacts.draw = lambda conn, message, now: []


def one_process(root: Path, variant: str, kind: str, synchronous: str, count: int) -> float:
    """CPU microseconds per webhook in this process for `root`'s intake (run in a fresh process)."""
    bodies = _bodies(kind, WARM + count)
    sys.path.insert(0, str(root))
    os.chdir(root)
    folder = Path(tempfile.mkdtemp(prefix="wahook-cpu-"))
    from app import create_app

    try:
        from gateway.config import ConfigError
        from gateway.delivery import endpoints
        from gateway.storage import db
    except ImportError:  # a checkout from before the gateway package (7549c06, say)
        import db  # type: ignore[no-redef]
        import endpoints  # type: ignore[no-redef]
        from config import ConfigError  # type: ignore[no-redef]

    sections = {
        "meta": {"app_secret": "bench-secret"},
        "storage": {"database": str(folder / "wahook.db")},
        "redis": {"url": "redis://127.0.0.1:1"},  # nothing listens: the wake-up backs off, as when Redis is down
        "delivery": {"allow_http": True, "allow_private_urls": True},
    }
    if variant == "bare":
        sys.path.insert(0, str(HERE))
        from bare_app import app
    else:
        try:
            app = create_app(
                {
                    "config_path": str(folder / "none.toml"),
                    **sections,
                    "storage": {**sections["storage"], "synchronous": synchronous},
                }
            )
        except ConfigError:  # a checkout from before storage.synchronous (it used NORMAL)
            app = create_app({"config_path": str(folder / "none.toml"), **sections})
        config = app.config["WAHOOK"]
        database = getattr(config, "database", None) or config.database_path
        conn = db.connect(database)
        db.migrate(conn)
        endpoints.create(conn, config, "http://127.0.0.1:9/hook")
        _switch_off(variant, conn)
        conn.close()
    import logging

    logging.disable(logging.WARNING)  # Redis is away on purpose
    bodies = [(raw, "sha256=" + hmac.new(b"bench-secret", raw, hashlib.sha256).hexdigest()) for raw in bodies]
    client = app.test_client()

    def post(items) -> None:
        for raw, signature in items:
            answer = client.post("/api/webhooks/whatsapp", data=raw, headers={"X-Hub-Signature-256": signature})
            if answer.status_code != 200:
                raise RuntimeError(f"intake answered {answer.status_code}: {answer.get_data(as_text=True)[:200]}")

    post(bodies[:WARM])
    timed = bodies[WARM:]
    threads = 8 if variant == "threads-8" else 1
    started = time.process_time()
    workers = [threading.Thread(target=post, args=(timed[n::threads],)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return (time.process_time() - started) / count * 1e6


def run_one(root: Path, variant: str, kind: str, synchronous: str, count: int) -> float:
    done = subprocess.run(
        [sys.executable, __file__, str(root), variant, kind, synchronous, str(count)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"{variant} on {root} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["cpu_us"]


def measure(roots: dict[str, Path], rounds: int, count: int, synchronous: str = "normal") -> dict:
    """{(checkout name, variant, kind): median CPU us per webhook}, every variant of every
    checkout once per round, in turn, so a busy moment on the machine spreads over all of them."""
    plan = [("now", "bare", "status")]
    for name in roots:
        plan += [(name, "shipped", "status"), (name, "shipped", "message")]
    if "now" in roots:
        plan += [("now", variant, "status") for variant in VARIANTS if variant not in ("shipped", "no-contacts")]
        plan += [("now", "no-contacts", "message"), ("now", "threads-8", "message")]
    found: dict = {key: [] for key in plan}
    for _ in range(rounds):
        for name, variant, kind in plan:
            root = roots.get(name, roots["now"])
            found[(name, variant, kind)].append(run_one(root, variant, kind, synchronous, count))
    return {key: statistics.median(values) for key, values in found.items()}


if __name__ == "__main__":
    root_arg, variant_arg, kind_arg, sync_arg, count_arg = sys.argv[1:6]
    cpu = one_process(Path(root_arg), variant_arg, kind_arg, sync_arg, int(count_arg))
    print(json.dumps({"cpu_us": cpu}))
