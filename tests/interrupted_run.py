"""Tests that test_interrupt.py runs in a pytest of its own and stops with a signal midway.
Its name does not start with test_, so the suite runs them only through test_interrupt.py.

The first runs RQ in this process as test_delivery.py does (which installs RQ's signal
handlers); the second starts what a test starts (gunicorn, a worker, Redis, PostgreSQL),
says where they run, and waits to be interrupted."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import redis
from rq import SimpleWorker

from gateway.delivery import doorbell

# The test that runs this module reads the processes to check here.
READY = os.environ.get("WAHOOK_INTERRUPT_READY", "")


def test_rq_runs_in_this_process(app):
    SimpleWorker([doorbell.QUEUE_NAME], connection=doorbell.redis_connection(app.config["WAHOOK"])).work(burst=True)


@pytest.mark.engines("postgresql")
def test_waits_to_be_interrupted(processes, redis_url, postgres_server, engine):
    processes.start_web(workers=1)  # what is checked is that gunicorn stops; one worker does
    processes.start_worker()
    started = [p.pid for p in processes.children] + [
        redis.Redis.from_url(redis_url).info()["process_id"],
        int((postgres_server.folder / "postmaster.pid").read_text().split()[0]),
    ]
    Path(READY).write_text(json.dumps(started))
    time.sleep(600)
