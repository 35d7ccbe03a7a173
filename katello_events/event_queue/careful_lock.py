"""Lets a careful try run alone among the event queue's consumer threads.

A careful try commits its attempt before calling the handler, so that a death of the process
during the call is charged to that event (see ``consumer.py``). With several consumer threads
(``CONCURRENCY``), another thread's batch may be what killed the process: the charge would
fall on an innocent event. So batches hold this lock shared, and careful tries hold it
exclusively: while one runs, no other thread is inside a batch, and a death is its own.
Careful tries are rare (retries, and the first batches after an unclean end), so the fast
path almost never waits. Writer-preferring: a waiting careful try holds new batches back.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class CarefulLock:
    """A readers-writer lock: :meth:`batch` (shared) and :meth:`careful` (exclusive)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._batches = 0
        self._careful = False
        self._careful_waiting = 0

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._careful and not self._careful_waiting)
            self._batches += 1
        try:
            yield
        finally:
            with self._condition:
                self._batches -= 1
                self._condition.notify_all()

    @contextlib.contextmanager
    def careful(self) -> Iterator[None]:
        with self._condition:
            self._careful_waiting += 1
            try:
                self._condition.wait_for(lambda: not self._careful and not self._batches)
            finally:
                self._careful_waiting -= 1
            self._careful = True
        try:
            yield
        finally:
            with self._condition:
                self._careful = False
                self._condition.notify_all()


class Unshared:
    """The lock of a single consumer thread: nothing to exclude."""

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        yield

    careful = batch


#: For a consumer that runs alone (CONCURRENCY 1): no locking at all.
ALONE = Unshared()
