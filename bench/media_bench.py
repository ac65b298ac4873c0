"""The media measure: does downloading media slow the delivery drain?

A prepared queue of status deliveries is drained by one worker three ways, round after round
in the same run: with no image messages arriving; with a stream of image messages posted to the
intake but no access token (nothing downloaded); and with the same stream and an access token,
so the worker downloads every image from a local Graph stand-in (tests/graph_stub.py) while it
drains. The endpoint selects only status events, so every side delivers the same queue. The
ratios of the drain rates say what the stream costs, and what the downloads alone cost.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field

import requests
from scenarios import Plan, Workspace, prepare_queue
from sink import duplicates
from stack import APP_SECRET, INTAKE_PATH, ROOT, wait_until

from gateway.intake import samples, webhook

STREAM_RATE = 20.0  # image messages per second
IMAGE_BYTES = 200 * 1024
MEDIA_IDS = 20_000


@dataclass
class MediaRun:
    quiet: list[float] = field(default_factory=list)  # deliveries/s, no image messages
    stream: list[float] = field(default_factory=list)  # image messages, no access token
    download: list[float] = field(default_factory=list)  # image messages, downloaded
    downloaded: int = 0
    failed: int = 0
    duplicates: int = 0


def graph_stand_in():
    """The Graph stand-in from the tests, serving the same 200 KB image for every media id."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from graph_stub import TOKEN, GraphStub, Media

    stub = GraphStub()
    image = Media(bytes(range(256)) * (IMAGE_BYTES // 256), mime_type="image/jpeg")
    digest = image.sha256()
    image.sha256 = lambda: digest  # hash once, not per request
    image.hits = _Uncounted()
    for n in range(MEDIA_IDS):
        stub.media[str(10**15 + n)] = image
    return stub, TOKEN


class _Uncounted(list):
    def append(self, item) -> None:  # the stand-in's request log would only grow
        pass


def post_images(base: str, stop: threading.Event, first_id: int) -> int:
    """Post signed image messages at STREAM_RATE until `stop`; returns how many."""
    session = requests.Session()
    sent = 0
    started = time.monotonic()
    while not stop.is_set():
        image = samples.media("image/jpeg", id=str(first_id + sent))
        body = samples.incoming(samples.message("image", image))
        raw = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": webhook.meta_signature(APP_SECRET, raw)}
        session.post(base + INTAKE_PATH, data=raw, headers=headers, timeout=10)
        sent += 1
        stop.wait(max(0.0, started + sent / STREAM_RATE - time.monotonic()))
    session.close()
    return sent


def drain_with(ws: Workspace, template, events: int, stream: bool, token: str, graph_url: str) -> tuple[float, dict]:
    """One drain of the prepared queue; (deliveries/s, notes)."""
    stack = ws.stack()
    if token:
        text = stack.config_path.read_text()
        stack.config_path.write_text(
            text.replace("[meta]\n", f'[meta]\naccess_token = "{token}"\ngraph_url = "{graph_url}"\n')
        )
    stack.adopt_database(template)
    conn = sqlite3.connect(stack.config.database_path)
    conn.execute("""UPDATE endpoints SET events = '["message.status_updated"]'""")
    conn.commit()
    conn.close()
    stack.start_redis()
    base = stack.start_web()
    ws.sink.reset()
    stop = threading.Event()
    poster = threading.Thread(target=post_images, args=(base, stop, 10**15 + ws.count * 1000), daemon=True)
    if stream:
        poster.start()
        time.sleep(0.5)  # the stream is flowing before the drain starts
    stack.start_workers(1)
    wait_until(lambda: ws.sink.count() >= events, 300, f"{events} deliveries", interval=0.1)
    stop.set()
    if stream:
        poster.join()
    time.sleep(0.3)
    records = ws.sink.records()
    ws.sink.reset()
    reader = sqlite3.connect(stack.config.database_path)
    media = dict(reader.execute("SELECT state, count(*) FROM media GROUP BY state").fetchall())
    reader.close()
    stack.stop()
    times = sorted(at for at, _ in records)
    return (len(times) - 1) / (times[-1] - times[0]), {"media": media, "duplicates": duplicates(records)}


def media_drain(ws: Workspace, plan: Plan) -> MediaRun:
    template = prepare_queue(ws, plan.drain_events)
    stub, token = graph_stand_in()
    run = MediaRun()
    try:
        for _ in range(plan.drain_rounds):
            for target, stream, with_token in (
                (run.quiet, False, False),
                (run.stream, True, False),
                (run.download, True, True),
            ):
                rate, notes = drain_with(
                    ws, template, plan.drain_events, stream, token if with_token else "", stub.graph_url
                )
                target.append(rate)
                run.duplicates += notes["duplicates"]
                if with_token:
                    run.downloaded += notes["media"].get("downloaded", 0)
                    run.failed += notes["media"].get("failed", 0) + notes["media"].get("retrying", 0)
    finally:
        stub.close()
    return run
