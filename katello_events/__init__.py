"""katello_events: run an application's event handlers inside a Django web server.

Public API (importable before the app registry is ready; the work happens on call):

- :func:`push_event`, :func:`event_handler`, :class:`RetryLater`, :class:`PartialFailure`: the
  durable event queue.
- :func:`message_handler`, :class:`CandlepinMessage`, :class:`SkipMessage`: handlers of
  Candlepin's event messages.
- :func:`start`: start this process's runner standby thread explicitly.
- :func:`stop`: stop it gracefully (handlers finish, status rows say so, the lock is released).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from katello_events.candlepin.message import CandlepinMessage, MalformedMessage, SkipMessage
from katello_events.event_queue.types import PartialFailure, QueuedEvent, RetryLater, UnknownEventType
from katello_events.registry import event_handler, message_handler

if TYPE_CHECKING:
    from katello_events.runner import Runner

__all__ = [
    "CandlepinMessage",
    "MalformedMessage",
    "PartialFailure",
    "QueuedEvent",
    "RetryLater",
    "SkipMessage",
    "UnknownEventType",
    "event_handler",
    "message_handler",
    "push_event",
    "start",
    "stop",
]


def push_event(
    event_type: str, object_id: int | str, metadata: Any = None, *, delay: float | timedelta | None = None
) -> int:
    """Record an event in the caller's transaction; see :func:`katello_events.event_queue.push.push_event`."""
    from katello_events.event_queue.push import push_event as _push_event

    return _push_event(event_type, object_id, metadata, delay=delay)


def start(recycle: Callable[[str], None] | None = None) -> Runner:
    """Start this process's runner (idempotent). Ignores ``AUTOSTART``; never call it in a
    process that forks afterwards (a preloading master). ``recycle(reason)`` is called after a
    memory handover (``MAX_RSS_MB``) to have the server replace this process."""
    from katello_events.lifecycle import start as _start

    return _start(recycle)


def stop(timeout: float | None = None) -> bool:
    """Stop this process's runner, if it has one; True once it has stopped."""
    from katello_events.lifecycle import stop as _stop

    return _stop(timeout)
