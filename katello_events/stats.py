"""The counters and gauges of one handler slot, shared by the handler's thread and the runner's."""

from __future__ import annotations

import threading
from typing import Any


class HandlerStats:
    """Counters and gauges of one handler slot, shared by every instance the supervisor starts.

    Counters only grow (processed, failed, and any a handler adds); gauges are the latest
    reading (queue_depth, ...). They live here rather than on the handler so a restarted handler
    keeps counting, and the status store turns them into cumulative database totals.
    Thread-safe: handlers write from their thread, the runner reads from its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {"processed": 0, "failed": 0}
        self._gauges: dict[str, Any] = {}

    def increment(self, counter: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[counter] = self._counters.get(counter, 0) + amount

    def set_gauge(self, gauge: str, value: Any) -> None:
        with self._lock:
            self._gauges[gauge] = value

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def gauges(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._gauges)
