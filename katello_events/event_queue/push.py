"""The producer side: ``push_event`` and what a handler sees of an event."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.db import connections, router
from django.db.models import Value
from django.db.models.functions import Now

from katello_events.event_queue.types import UnknownEventType
from katello_events.models import Event
from katello_events.registry import event_handlers

#: PostgreSQL channel the consumer LISTENs on; every committed push NOTIFYs it.
NOTIFY_CHANNEL = "katello_events"

MAX_OBJECT_ID_LENGTH = 255


def push_event(
    event_type: str, object_id: int | str, metadata: Any = None, *, delay: float | timedelta | None = None
) -> int:
    """Record an event for the ``katello_events`` handler; returns its id.

    The insert joins the caller's transaction: the event exists only if that transaction
    commits, and the consumer is woken (PostgreSQL NOTIFY) only then. ``delay`` (seconds or a
    timedelta) defers it. Raises :class:`UnknownEventType`, ``TypeError`` or ``ValueError`` for
    bad arguments, before anything is written.
    """
    if event_type not in event_handlers:
        known = ", ".join(event_handlers.keys()) or "none"
        raise UnknownEventType(
            f"no handler is registered for event type {event_type!r} (registered: {known}); "
            "register one with @katello_events.event_handler in an events.py module of an installed app"
        )
    object_key = _object_key(object_id)
    _check_metadata(metadata)
    run_after = Now() if delay is None else Now() + Value(_delay(delay))
    event = Event.objects.create(event_type=event_type, object_id=object_key, metadata=metadata, run_after=run_after)
    notify_consumer(router.db_for_write(Event))
    return event.id


def _object_key(object_id: int | str) -> str:
    if isinstance(object_id, bool) or not isinstance(object_id, (int, str)):
        raise TypeError(f"object_id must be an int or a str, not {type(object_id).__name__}")
    key = str(object_id)
    if not key or len(key) > MAX_OBJECT_ID_LENGTH:
        raise ValueError(f"object_id must be 1 to {MAX_OBJECT_ID_LENGTH} characters long")
    return key


def _check_metadata(metadata: Any) -> None:
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from exc


def _delay(delay: float | timedelta) -> timedelta:
    if isinstance(delay, bool) or not isinstance(delay, (int, float, timedelta)):
        raise TypeError(f"delay must be seconds or a timedelta, not {type(delay).__name__}")
    delay = delay if isinstance(delay, timedelta) else timedelta(seconds=delay)
    if delay < timedelta(0):
        raise ValueError("delay must not be negative")
    return delay


def notify_consumer(alias: str) -> None:
    """Wake the consumer (PostgreSQL NOTIFY) once the current transaction commits."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return  # other databases: the consumer polls
    # Inside a transaction, PostgreSQL delivers the NOTIFY only on commit, drops it on
    # rollback, and folds identical ones into one: exactly one wake-up per committed push
    # transaction, with no state of ours to go stale.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, '')", [NOTIFY_CHANNEL])
