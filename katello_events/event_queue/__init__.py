"""The durable event queue: ``push`` (the producer side), ``consumer`` (claim, handle, retry),
``listener`` (PostgreSQL LISTEN/NOTIFY wake-ups) and ``gauges`` (queue depth and friends)."""
