"""Downloading media in the worker: a lane of its own, apart from the endpoints' lanes.

The dispatcher (worker.py) tells the lane when downloads are due, as it tells an endpoint's
lane about deliveries; the lane's threads claim one row at a time from the `media` table and
download it. Its threads and connections are its own, so a slow endpoint never holds up a
download and a large download never holds up a delivery. `obtain` is the same step for one
media id, used by the link route when a receiver asks before the worker got to it.
"""

from __future__ import annotations

import logging
import threading
import time

from gateway.delivery import lanes
from gateway.media import fetch, store
from gateway.net import safe_http
from gateway.storage import db

log = logging.getLogger("wahook.media")

MEDIA_THREADS = 2  # downloads at once per worker
LEASE = fetch.DOWNLOAD_CAP + 60  # a download ends (or fails) well within its lease


def process(conn, config, row, cap: float = fetch.DOWNLOAD_CAP) -> str:
    """Download a claimed row within `cap` seconds and record the outcome. Returns the row's new state."""
    try:
        fetched = fetch.download(config, row["media_id"], row["sha256"], store.media_dir(config), cap)
    except safe_http.DeliveryError as exc:
        log.warning("media %s: %s", row["media_id"], exc.message)
        return store.record_failure(conn, row["id"], exc.message, exc.permanent, config["delivery"]["retry_schedule"])
    store.record_downloaded(conn, row["id"], fetched.file, fetched.size, fetched.mime_type)
    return "downloaded"


def obtain(conn, config, media_id: str, owner: str, wait: float) -> object:
    """The media row once it is finished (downloaded or failed), downloading it now if nobody
    is; if someone else is, waiting up to `wait` seconds. None: still downloading elsewhere.

    A download made here may take `wait` seconds at most, so a web process is never stopped
    by its own request timeout half way; one that takes longer is recorded as a retryable
    failure, and the worker, which has DOWNLOAD_CAP, takes it up on the retry schedule."""
    deadline = time.monotonic() + wait
    while True:
        row = store.get(conn, media_id)
        if row is None or row["state"] in ("downloaded", "failed"):
            return row
        claimed = store.claim(conn, owner, wait + 60, media_id=media_id)
        if claimed is not None:
            process(conn, config, claimed, max(1.0, deadline - time.monotonic()))
            row = store.get(conn, media_id)
            if row is None or row["state"] != "pending":
                return row
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


class MediaLane(lanes.Lane):
    """The worker's download threads: a round claims one due download and does it."""

    failure = "a media download failed unexpectedly"

    def __init__(self, config, owner: str, stopping: threading.Event) -> None:
        self.config = config
        self.owner = owner
        super().__init__("media", MEDIA_THREADS, stopping)

    def work(self) -> None:
        conn = db.connection(self.config.database)
        row = store.claim(conn, self.owner, LEASE)
        if row is not None:
            self.want()  # there may be more: the next thread (or this one) looks
            process(conn, self.config, row)
