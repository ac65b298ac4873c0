"""Delivery: the outbox, endpoints, one batch of attempts, outages, and the Redis doorbell
that wakes a worker.
"""
