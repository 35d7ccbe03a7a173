"""Subject -> message handler, and what becomes of a message that is not simply handled.

:meth:`Dispatcher.dispatch` returns an outcome once the message is safe to ack:

- ``processed``: its handler returned;
- ``ignored``: no handler is registered for its subject;
- ``deferred``: its handler raised; the message is stored in the durable event queue as a
  ``candlepin.message`` event, so the queue's retry, backoff and dead rules apply to it;
- ``retry_later``: its handler raised :class:`RetryLater`; stored the same way, due after the
  delay it asked for (not a failure);
- ``dead``: it cannot be understood (see :class:`MalformedMessage`) or cannot be stored for
  retry; it is kept as a dead event with its headers and a bounded copy of its body;
- ``dropped``: not even that could be written (the database refused the row itself): logged.

It raises :class:`StoreUnavailable` when the database is away: the message must not be acked
then, and the broker will deliver it again.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    connections,
)

from katello_events.candlepin.message import CandlepinMessage, MalformedMessage, parse_message, subject_of
from katello_events.event_queue.push import MAX_OBJECT_ID_LENGTH, push_event
from katello_events.event_queue.types import QueuedEvent, RetryLater
from katello_events.handlers.base import describe_error
from katello_events.models import Event
from katello_events.redaction import get_logger, redact
from katello_events.registry import HandlerRegistry, message_handlers

logger = get_logger(__name__)

#: The event type that carries failed and malformed messages in the event queue.
MESSAGE_EVENT = "candlepin.message"
#: Longest copy of a message body kept on a dead event (bytes).
DEAD_BODY_COPY_BYTES = 64 * 1024

#: Distinct ignored subjects logged at INFO level (the rest at DEBUG), so the set stays small.
_IGNORED_SUBJECTS_NOTED = 100

PROCESSED, IGNORED, DEFERRED, RETRY_LATER = "processed", "ignored", "deferred", "retry_later"
DEAD, DROPPED = "dead", "dropped"


class StoreUnavailable(Exception):
    """The database could not take a message that needs storing; do not ack it."""


class Dispatcher:
    """Runs one message at a time, in the calling thread, against ``registry``."""

    def __init__(self, max_body_bytes: int, registry: HandlerRegistry = message_handlers) -> None:
        self.max_body_bytes = max_body_bytes
        self.registry = registry
        self._ignored: set[str] = set()

    def dispatch(self, headers: Mapping[str, str], body: bytes) -> str:
        """Handle one frame's headers and body; the outcome (see the module docstring)."""
        try:
            message = parse_message(headers, body, self.max_body_bytes)
        except MalformedMessage as exc:
            return keep_dead(headers, body, f"malformed message: {exc}")
        function = self.registry.get(message.subject)
        if function is None:
            self._note_ignored(message.subject)
            return IGNORED
        try:
            # In autocommit, like a view without ATOMIC_REQUESTS: a transaction per message would
            # cost three more database-driver calls per message for handlers that need none.
            function(message)
        except Exception as exc:
            return self._defer(message, body, exc)
        return PROCESSED

    def _note_ignored(self, subject: str) -> None:
        # Said once per subject (a forgotten registration shows up), then only at debug level.
        level = logging.DEBUG
        if subject not in self._ignored and len(self._ignored) < _IGNORED_SUBJECTS_NOTED:
            self._ignored.add(subject)
            level = logging.INFO
        logger.log(level, "no message handler for subject %s: such messages are acked and ignored", subject)

    def _defer(self, message: CandlepinMessage, body: bytes, error: Exception) -> str:
        metadata = {"subject": message.subject, "headers": message.headers, "body": message.body}
        delay = error.seconds if isinstance(error, RetryLater) else None
        try:
            _drop_broken_connection()  # the handler may have failed on (and broken) the connection
            event_id = push_event(MESSAGE_EVENT, message_key(message.headers), metadata, delay=delay)
        except Exception as exc:
            if _unavailable(exc):
                raise StoreUnavailable(_store_problem(exc)) from exc
            # The database refuses this content (a NUL character, a lone surrogate...): keep it raw.
            reason = f"handler failed ({describe_error(error)}) and the message cannot be stored for retry"
            return keep_dead(headers=message.headers, body=body, error=f"{reason}: {describe_error(exc)}")
        extra = {**_extra(message.headers), "subject": message.subject, "event_id": event_id}
        if delay is not None:
            logger.info(
                "message handler for %s asked to retry in %gs: stored as event #%s",
                message.subject,
                delay,
                event_id,
                extra=extra,
            )
            return RETRY_LATER
        logger.error(
            "message handler for %s failed; stored as event #%s for retry: %s",
            message.subject, event_id, describe_error(error), exc_info=error, extra=extra,
        )  # fmt: skip
        return DEFERRED


def keep_dead(headers: Mapping[str, str], body: bytes, error: str) -> str:
    """Keep a message no handler can take as a dead ``candlepin.message`` event; the outcome."""
    copy = body[:DEAD_BODY_COPY_BYTES]
    metadata = {
        "headers": {_storable(k): _storable(v) for k, v in headers.items()},
        "raw_body": _storable(copy.decode("utf-8", "backslashreplace")),
        "body_bytes": len(body),
        "body_truncated": len(copy) < len(body),
    }
    error = redact(error)
    try:
        event = Event.objects.create(
            event_type=MESSAGE_EVENT,
            object_id=message_key(headers),
            metadata=metadata,
            state=Event.DEAD,
            attempts=1,
            last_error=error,
        )
    except DatabaseError as exc:
        if _unavailable(exc):
            raise StoreUnavailable(_store_problem(exc)) from exc
        # Acked anyway: redelivering it would only fail the same way, forever.
        logger.critical(
            "message dropped, it cannot be stored (%s): %s", describe_error(exc), error, extra=_extra(headers)
        )
        return DROPPED
    logger.error("message kept as dead event #%s: %s", event.id, error, extra={**_extra(headers), "event_id": event.id})
    return DEAD


def handle_stored_message(event: QueuedEvent, registry: HandlerRegistry = message_handlers) -> None:
    """The event handler of ``candlepin.message``: run the stored message's handler again."""
    metadata = event.metadata if isinstance(event.metadata, dict) else {}
    headers = metadata.get("headers") or {}
    if isinstance(metadata.get("body"), dict):
        body = metadata["body"]
        message = CandlepinMessage(metadata.get("subject") or subject_of(headers, body), headers, body)
    else:  # a malformed message put back by requeue_events: parsed again, from the stored copy
        message = parse_message(headers, metadata.get("raw_body") or "", max_body_bytes=2**62)
    function = registry.get(message.subject)
    if function is None:
        raise LookupError(f"no message handler is registered for subject {message.subject!r}")
    function(message)


def message_key(headers: Mapping[str, str]) -> str:
    """The event's object_id: the message-id, so two messages never coalesce into one run."""
    key = _storable(headers.get("message-id") or "") or uuid.uuid4().hex
    if len(key) > MAX_OBJECT_ID_LENGTH:
        key = "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return key


def _storable(text: Any) -> str:
    # PostgreSQL text and jsonb refuse NUL characters.
    return str(text).replace("\x00", "\\x00")


def _drop_broken_connection() -> None:
    """Close this thread's connection if a database error left it unusable (as Django does
    between requests); the next query reconnects."""
    connection = connections[DEFAULT_DB_ALIAS]
    if connection.connection is None or not connection.errors_occurred:
        return
    if connection.is_usable():
        connection.errors_occurred = False
    else:
        connection.close()


def _unavailable(exc: BaseException) -> bool:
    """The database is away or not ready (as opposed to refusing this one row)."""
    return isinstance(exc, (OperationalError, InterfaceError, ProgrammingError))


def _store_problem(exc: BaseException) -> str:
    if isinstance(exc, ProgrammingError):
        return f"database cannot store messages (migrations applied?): {describe_error(exc)}"
    return f"database unreachable: {describe_error(exc)}"


def _extra(headers: Mapping[str, str]) -> dict[str, Any]:
    return {"message_id": headers.get("message-id"), "redelivered": headers.get("redelivered")}
