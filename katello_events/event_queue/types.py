"""What handler authors meet: the event a handler receives and the exceptions of the queue.

Free of model imports, so ``katello_events`` can export these before the app registry is ready.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class UnknownEventType(LookupError):
    """``push_event`` was given an event type no handler is registered for."""


class RetryLater(Exception):  # no "Error" suffix (N818 is off): reads as what the handler asks for
    """Raised by a handler to be run again in ``seconds``: neither a failure nor lost.

    For conflicts a later attempt will not meet (a lock held elsewhere, a resource busy). The
    attempt count does not grow.
    """

    def __init__(self, seconds: float = 60.0, reason: str = "") -> None:
        if seconds < 0:
            raise ValueError("RetryLater needs a delay of zero seconds or more")
        super().__init__(reason or f"retry in {seconds}s")
        self.seconds = float(seconds)
        self.reason = reason


class PartialFailure(Exception):
    """Raised by a batch handler once it has handled the others: only ``failed`` objects failed.

    The call's database writes are kept (unlike any other exception, which rolls them back),
    the events of the objects not named are done, and those named are charged a failed attempt
    and retried with the usual backoff. Name objects by ``event.object_id``.
    """

    def __init__(self, failed: Iterable[str], reason: str = "") -> None:
        self.failed = frozenset(str(object_id) for object_id in failed)
        super().__init__(reason or f"{len(self.failed)} object(s) failed")
        self.reason = reason


@dataclass(frozen=True)
class QueuedEvent:
    """What an event handler receives: the newest of the coalesced events of its pair."""

    id: int
    event_type: str
    object_id: str
    metadata: Any
    #: Failed attempts before this one (0 on the first run).
    attempts: int
    created_at: datetime
    #: How many pending events of this (event_type, object_id) this run stands for.
    coalesced: int = 1
