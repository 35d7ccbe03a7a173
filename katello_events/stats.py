"""The counters and gauges of one handler slot, shared by the handler's thread and the runner's.

Also which slot's counters code running in a thread adds to (:func:`bind_thread`,
:func:`count_in_thread`): a handler's threads are bound to their slot each time they tick, so a
function the slot runs (a message handler, through ``handle_stored_message``) can count what
only it knows (``skipped``) on the service that ran it.
"""

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


_thread = threading.local()


def bind_thread(stats: HandlerStats | None) -> HandlerStats | None:
    """Make ``stats`` the counters :func:`count_in_thread` adds to in this thread (None: none);
    returns the previous binding. ``Handler.tick()`` binds its slot's, in every thread that ticks."""
    previous = getattr(_thread, "stats", None)
    _thread.stats = stats
    return previous


def thread_stats() -> HandlerStats | None:
    """The counters bound to this thread: those of the slot running in it; None outside a slot."""
    return getattr(_thread, "stats", None)


def count_in_thread(counter: str, amount: int = 1) -> bool:
    """Add to ``counter`` of the slot running in this thread; False (nothing counted) outside one."""
    stats = thread_stats()
    if stats is None:
        return False
    stats.increment(counter, amount)
    return True
