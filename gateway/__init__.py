"""wahook's application code, one sub-package per part of the system.

intake (Meta's POST in, events out), delivery (outbox, endpoints, attempts, outages, the
worker's doorbell), storage (connections, transactions, migrations, backup, copy-db),
media, api (publish, pull, stream, keys), pages (everything behind the login), ops
(health, metrics, silence, logs) and net (address rules and the guarded client). The
entry points (app.py, worker.py, run.py, gunicorn.conf.py) sit at the top of the checkout.
"""
