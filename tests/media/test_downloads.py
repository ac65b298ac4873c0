"""The worker's media lane: downloads right after intake, retried like deliveries, apart from
the endpoints' lanes; and a 50 MB file through real gunicorn and worker processes in little memory."""

from __future__ import annotations

import hashlib
import json
import threading

import psutil
import pytest
import requests

from conftest import (
    GRAPH_TOKEN,
    SLOW_RETRIES,
    Processes,
    instance_sections,
    media_message,
    sign,
    text_message,
    wait_until,
    worker_in_process,
)
from gateway.delivery import endpoints
from gateway.media import store
from gateway.storage import db
from gateway.storage.db import get_db
from graph_stub import Media

pytestmark = pytest.mark.engines

PICTURE = b"\xff\xd8\xff" + bytes(range(256)) * 1000
MB = 1024 * 1024


@pytest.fixture
def conn(media_app):
    return db.connection(media_app.config["WAHOOK"].database_path)


@pytest.fixture
def media_worker(media_app):
    with worker_in_process(media_app) as dispatcher:
        yield dispatcher


def post(app, body: dict) -> None:
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw)}
    assert app.test_client().post("/api/webhooks/whatsapp", data=raw, headers=headers).status_code == 200


def state(conn, media_id: str) -> str:
    row = store.get(conn, media_id)
    return row["state"] if row else "missing"


def test_the_worker_downloads_right_after_intake(media_app, conn, graph, media_worker):
    graph.media["8001"] = Media(PICTURE)
    post(media_app, media_message("8001"))  # no endpoint at all: the download still happens
    wait_until(lambda: state(conn, "8001") == "downloaded", timeout=5, message="the download")
    path = store.media_dir(media_app.config["WAHOOK"]) / store.get(conn, "8001")["file"]
    assert path.read_bytes() == PICTURE


def test_a_failed_download_is_retried_on_the_schedule_then_given_up(media_app, conn, graph, media_worker):
    # A second between attempts: time to see the first failure and bring Graph back before the next.
    media_app.config["WAHOOK"]["delivery"]["retry_schedule"] = list(SLOW_RETRIES)
    graph.media["8002"] = Media(PICTURE, graph_status=500)
    graph.media["8003"] = Media(PICTURE, graph_status=500)
    post(media_app, media_message("8002"))
    post(media_app, media_message("8003"))
    wait_until(lambda: store.get(conn, "8002")["attempts"] >= 1, timeout=5, message="a first attempt")
    assert state(conn, "8002") == "retrying"
    graph.media["8002"].graph_status = 200  # Graph is back
    wait_until(lambda: state(conn, "8002") == "downloaded", timeout=6, message="the retry")
    # Two retries in the schedule: three attempts in all, then failed with the reason.
    wait_until(lambda: state(conn, "8003") == "failed", timeout=8, message="giving up")
    row = store.get(conn, "8003")
    assert row["attempts"] == 3 and "Graph answered 500" in row["last_error"]
    assert graph.media["8003"].hits == ["graph"] * 3


def test_media_and_deliveries_do_not_wait_for_each_other(media_app, conn, graph, media_worker, make_receiver):
    # Stalls well past the sweeper's second, so a heavily loaded machine cannot blur the point.
    media_app.config["WAHOOK"]["delivery"]["timeout"] = 6
    slow, fast = make_receiver(), make_receiver()
    slow.behaviour.delay = 4  # an endpoint that takes its time over every delivery
    with media_app.app_context():
        endpoints.create(get_db(), media_app.config["WAHOOK"], slow.url)
    # A download that stalls must not hold up a delivery...
    graph.media["8004"] = Media(PICTURE, stall=4)
    post(media_app, media_message("8004"))
    wait_until(lambda: "file" in graph.media["8004"].hits, timeout=5, message="the stalled download to start")
    with media_app.app_context():
        endpoints.create(get_db(), media_app.config["WAHOOK"], fast.url)
    post(media_app, text_message("wamid.FAST"))
    wait_until(lambda: any(b"wamid.FAST" in r.body for r in fast.requests), timeout=5, message="the delivery")
    assert state(conn, "8004") == "pending"  # the download is still stalled meanwhile
    wait_until(lambda: state(conn, "8004") == "downloaded", timeout=8, message="the stalled download")
    # ...and a slow endpoint must not hold up a download.
    graph.media["8005"] = Media(PICTURE)
    post(media_app, media_message("8005"))
    wait_until(lambda: state(conn, "8005") == "downloaded", timeout=5, message="the download")
    assert not any(b"wamid.media8005" in r.body for r in slow.requests)  # its delivery is still on its way


class PeakRSS:
    """Samples the resident memory of processes (and their children) every few milliseconds."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(pid) for pid in pids]
        self.peak: dict[int, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(0.01):
            for parent in list(self.procs):
                try:
                    family = [parent, *parent.children(recursive=True)]
                except psutil.Error:  # it, or a child it was listing, has just ended
                    continue
                for proc in family:
                    try:
                        rss = proc.memory_info().rss
                    except psutil.Error:
                        continue
                    self.peak[proc.pid] = max(self.peak.get(proc.pid, 0), rss)

    def done(self) -> dict[int, int]:
        self.stop.set()
        self.thread.join()
        return self.peak


@pytest.mark.slow
def test_a_50_mb_file_is_downloaded_and_served_in_little_memory(tmp_path, redis_url, graph):
    big = tmp_path / "video.mp4"
    digest = hashlib.sha256()
    with big.open("wb") as f:
        for n in range(50):
            chunk = hashlib.sha256(str(n).encode()).digest() * (MB // 32)
            digest.update(chunk)
            f.write(chunk)
    graph.media["9001"] = graph.media["9002"] = Media(big, mime_type="video/mp4")
    sections = instance_sections(tmp_path, redis_url)
    sections["meta"].update(access_token=GRAPH_TOKEN, graph_url=graph.graph_url)
    sections["delivery"]["timeout"] = 10
    procs = Processes(tmp_path, sections)
    try:
        base = procs.start_web(workers=1)
        web_master = procs.children[-1]
        conn = db.connect(tmp_path / "data" / "wahook.db")

        def intake_and_fetch(media_id: str, before_fetch=lambda: None) -> str:
            raw = json.dumps(media_message(media_id, "video", mime_type="video/mp4")).encode()
            answer = requests.post(
                base + "/api/webhooks/whatsapp", data=raw, headers={"X-Hub-Signature-256": sign(raw)}, timeout=10
            )
            assert answer.status_code == 200
            before_fetch()
            body = conn.execute("SELECT body FROM events WHERE body LIKE ?", (f'%"id":"{media_id}"%',)).fetchone()
            url = json.loads(body[0])["media"]["url"]
            assert url.startswith(base + "/media/")
            served = hashlib.sha256()
            with requests.get(url, stream=True, timeout=30) as response:
                assert response.status_code == 200
                assert response.headers["Content-Type"] == "video/mp4"
                assert response.headers["Content-Length"] == str(50 * MB)
                for chunk in response.iter_content(256 * 1024):
                    served.update(chunk)
            return served.hexdigest()

        meter = PeakRSS([web_master.pid])
        # No worker yet: the link downloads the file itself, then serves it.
        on_demand = intake_and_fetch("9002")
        work = procs.start_worker()
        meter.procs.append(psutil.Process(work.pid))
        # With a worker: it downloads, the link serves what is on disk.
        waited = intake_and_fetch(
            "9001",
            lambda: wait_until(lambda: state(conn, "9001") == "downloaded", timeout=60, message="the download"),
        )
        peak = meter.done()
        conn.close()
    finally:
        procs.stop_all()
    assert on_demand == waited == digest.hexdigest()
    worker_peak = peak[work.pid]
    web_peak = max(rss for pid, rss in peak.items() if pid != work.pid)
    print(f"peak RSS: worker {worker_peak / MB:.1f} MB, web {web_peak / MB:.1f} MB")
    assert worker_peak < 100 * MB
    assert web_peak < 100 * MB
