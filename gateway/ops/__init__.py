"""Operations: /healthz, /metrics, Meta's silence alarm, and logging."""
