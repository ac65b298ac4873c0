"""The baseline for intake throughput: a Flask app that reads the body and answers 200.

Served by the same gunicorn settings as wahook (`gunicorn bench.bare_app:app -c gunicorn.conf.py`),
so the ratio shows what wahook's own work (signature, parse, commit, enqueue) costs.
"""

from __future__ import annotations

from flask import Flask, Response, request

app = Flask(__name__)


@app.post("/api/webhooks/whatsapp")
def receive() -> Response:
    request.get_data(cache=False)
    return Response("ok", mimetype="text/plain")


@app.get("/api/webhooks/whatsapp")
def verify() -> Response:
    return Response(request.args.get("hub.challenge") or "missing", status=200 if request.args else 400)
