"""The producer side: ``push_event`` and what a handler sees of an event."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

from django.db import connections, router
from django.db.models import Value
from django.db.models.functions import Now

from katello_events.conf import get_config
from katello_events.event_queue.types import UnknownEventType
from katello_events.models import Event
from katello_events.registry import event_handlers

#: PostgreSQL channel the consumer LISTENs on; every committed push NOTIFYs it.
NOTIFY_CHANNEL = "katello_events"

MAX_OBJECT_ID_LENGTH = 255
#: The event_type column's length.
MAX_EVENT_TYPE_LENGTH = 100
#: Longest accepted delay. Longer is surely a mistake (a timestamp passed as seconds); far longer
#: would not fit Python's timedelta or PostgreSQL's timestamps and fail as a database error.
MAX_DELAY = timedelta(days=36500)


def push_event(
    event_type: str, object_id: int | str, metadata: Any = None, *, delay: float | timedelta | None = None
) -> int:
    """Record an event for the ``katello_events`` handler; returns its id.

    The insert joins the caller's transaction: the event exists only if that transaction
    commits, and the consumer is woken (PostgreSQL NOTIFY) only then. ``delay`` (seconds or a
    timedelta) defers it. Raises :class:`UnknownEventType`, ``TypeError`` or ``ValueError`` for
    bad arguments, before anything is written.
    """
    _check_event_type(event_type)
    object_key = _object_key(object_id)
    _check_metadata(metadata)
    run_after = Now() if delay is None else Now() + Value(_delay(delay))
    event = Event.objects.create(event_type=event_type, object_id=object_key, metadata=metadata, run_after=run_after)
    notify_consumer(router.db_for_write(Event))
    return event.id


def push_many(event_type: str, events: Sequence[tuple[int | str, Any]]) -> list[int]:
    """Record ``(object_id, metadata)`` events of one type, due now; returns their ids.

    :func:`push_event`'s rules and errors, checked for every event before anything is written,
    for a producer of many events at once (the Candlepin listener's inbox): one INSERT and one
    wake-up for them all, rather than a round trip or two per event.
    """
    _check_event_type(event_type)
    rows = []
    for object_id, metadata in events:
        object_key = _object_key(object_id)
        _check_metadata(metadata)
        rows.append(Event(event_type=event_type, object_id=object_key, metadata=metadata))
    if not rows:
        return []
    created = Event.objects.bulk_create(rows)  # run_after and created_at: the database's now()
    notify_consumer(router.db_for_write(Event))
    return [event.id for event in created]


def _check_event_type(event_type: str) -> None:
    if event_type not in event_handlers:
        known = ", ".join(event_handlers.keys()) or "none"
        raise UnknownEventType(
            f"no handler is registered for event type {event_type!r} (registered: {known}); "
            "register one with @katello_events.event_handler in an events.py module of an installed app"
        )
    if len(event_type) > MAX_EVENT_TYPE_LENGTH:
        raise ValueError(f"event_type must be at most {MAX_EVENT_TYPE_LENGTH} characters long")


def _object_key(object_id: int | str) -> str:
    if isinstance(object_id, bool) or not isinstance(object_id, (int, str)):
        raise TypeError(f"object_id must be an int or a str, not {type(object_id).__name__}")
    key = str(object_id)
    if not key or len(key) > MAX_OBJECT_ID_LENGTH:
        raise ValueError(f"object_id must be 1 to {MAX_OBJECT_ID_LENGTH} characters long")
    _check_storable_text(key, "object_id")
    return key


def _check_storable_text(text: str, what: str) -> None:
    # PostgreSQL text and jsonb refuse NUL characters, and UTF-8 cannot carry lone surrogates:
    # refused here with a clear error, not by the database with one that breaks the caller's
    # transaction.
    if "\x00" in text:
        raise ValueError(f"{what} must not contain NUL (\\x00) characters: PostgreSQL cannot store them")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} must be valid Unicode text (it contains a lone surrogate: {exc.reason})") from None


def _check_metadata(metadata: Any) -> None:
    try:
        document = json.dumps(metadata, allow_nan=False)
    except RecursionError:
        raise ValueError("metadata is nested too deeply to be stored") from None
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from exc
    limit = get_config().MAX_METADATA_BYTES
    size = len(document.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise ValueError(f"metadata is {size} bytes as JSON; at most {limit} (KATELLO_EVENTS['MAX_METADATA_BYTES'])")
    try:
        for text in json_strings(metadata):
            _check_storable_text(text, "metadata")
    except RecursionError:  # json_strings takes more frames per level than json.dumps
        raise ValueError("metadata is nested too deeply to be stored") from None


def json_strings(value: Any) -> Iterator[str]:
    """Every string in a JSON document, keys included (already known to be serialisable); also
    what the Tasks backend checks task arguments with."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from json_strings(key)
            yield from json_strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from json_strings(item)


def _delay(delay: float | timedelta) -> timedelta:
    if isinstance(delay, bool) or not isinstance(delay, (int, float, timedelta)):
        raise TypeError(f"delay must be seconds or a timedelta, not {type(delay).__name__}")
    if not isinstance(delay, timedelta):
        if not math.isfinite(delay):
            raise ValueError(f"delay must be a finite number of seconds, not {delay}")
        # Checked before timedelta(), which overflows on huge numbers of either sign.
        if delay < 0:
            raise ValueError("delay must not be negative")
        if delay > MAX_DELAY.total_seconds():
            raise ValueError(f"delay must be at most {MAX_DELAY.days} days")
        delay = timedelta(seconds=delay)
    if delay < timedelta(0):
        raise ValueError("delay must not be negative")
    if delay > MAX_DELAY:
        raise ValueError(f"delay must be at most {MAX_DELAY.days} days")
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
