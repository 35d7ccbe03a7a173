"""What becomes of each message: sorted on arrival, then ignored, handled, stored or kept dead.

:meth:`Dispatcher.prepare` sorts a frame into an :class:`Item` of one kind:

- ``run``: a handler is registered for its subject; the burst runner (``burst.py``) calls it;
- ``inbox``: the same, with the listener's ``INBOX`` on: it is stored in the event queue, which
  runs its handler there, coalesced by its subject's key (:func:`inbox_key`);
- ``ignore``: no handler is registered for its subject;
- ``store``: it was delivered before (the ``redelivered`` header, or a ``message-id`` this
  listener has already received): it is not handled here but stored in the durable event queue,
  whose retry and poison rules then apply, so a message whose handler kills the process cannot
  make the listener crash-loop;
- ``malformed``: it cannot be understood (see :class:`MalformedMessage`).

The outcomes, each safe to ack once its transaction has committed:

- ``processed``: its handler returned;
- ``skipped``: its handler raised :class:`SkipMessage`: nothing to do (done, like ``processed``);
- ``stored``: stored in the inbox (``INBOX``), for the event queue to run;
- ``ignored``: no handler;
- ``redelivered``: stored as a ``candlepin.message`` event without being handled here;
- ``deferred``: its handler raised; stored the same way for the event queue to retry;
- ``retry_later``: its handler raised :class:`RetryLater`; stored, due after the delay it asked
  for (not a failure);
- ``dead``: malformed, or it could not be stored for retry; kept as a dead event with its
  headers and a bounded copy of its body;
- ``dropped``: not even that could be written (the database refused the row itself): logged.

Every write here runs in a savepoint of the caller's transaction (the burst's, fenced), so a
refused row leaves that transaction usable, and is logged only once it commits.
:class:`StoreUnavailable` is raised when the database is away: nothing may be acked then, and the
broker will deliver the messages again.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, ProgrammingError, connections, transaction

from katello_events.candlepin.message import (
    CandlepinMessage,
    MalformedMessage,
    SkipMessage,
    parse_message,
    subject_of,
)
from katello_events.candlepin.recent import RecentIds
from katello_events.errors import describe_error
from katello_events.event_queue.push import MAX_OBJECT_ID_LENGTH, push_event, push_many
from katello_events.event_queue.types import QueuedEvent, RetryLater
from katello_events.fencing import queue_alias
from katello_events.log import LogBudget, get_logger
from katello_events.models import Event
from katello_events.redaction import redact
from katello_events.registry import HandlerRegistry, message_coalescing, message_handlers
from katello_events.stats import thread_stats

logger = get_logger(__name__)

#: The event type that carries stored (failed, redelivered, malformed) messages in the event queue.
MESSAGE_EVENT = "candlepin.message"
#: Longest copy of a message body kept on a dead event (bytes).
DEAD_BODY_COPY_BYTES = 64 * 1024

#: Key functions that failed, logged one by one per minute; the rest in one summary line.
KEY_LOG = LogBudget(limit=10, window=60.0)

#: Distinct ignored subjects logged at INFO level (the rest at DEBUG), so the set stays small.
_IGNORED_SUBJECTS_NOTED = 100

# Kinds of items.
RUN, INBOX, IGNORE, STORE, MALFORMED = "run", "inbox", "ignore", "store", "malformed"
# Outcomes.
#: Dead messages logged one by one per minute; the rest in one summary line.
DEAD_LOG = LogBudget(limit=10, window=60.0)

PROCESSED, STORED, IGNORED, REDELIVERED = "processed", "stored", "ignored", "redelivered"
SKIPPED = "skipped"
DEFERRED, RETRY_LATER, DEAD, DROPPED = "deferred", "retry_later", "dead", "dropped"


class StoreUnavailable(Exception):
    """The database could not take a message that needs storing (or its transaction); ack nothing."""

    @classmethod
    def of(cls, error: BaseException) -> StoreUnavailable:
        if isinstance(error, ProgrammingError):
            return cls(f"database cannot store messages (migrations applied?): {describe_error(error)}")
        return cls(f"database unreachable: {describe_error(error)}")


@dataclass(slots=True)
class Item:
    """One received message, sorted: what the listener does with it (see the module docstring)."""

    kind: str
    headers: Mapping[str, str]
    body: bytes
    message: CandlepinMessage | None = None
    function: Callable[[CandlepinMessage], Any] | None = None
    #: Why a malformed message cannot be understood.
    problem: str = ""
    #: The event's object_id when stored (INBOX: the coalescing key); None: :func:`message_key`.
    key: str | None = None

    def parsed(self) -> CandlepinMessage:
        """The parsed message, which every kind of item but MALFORMED has."""
        assert self.message is not None, f"a {self.kind} item has no message"  # noqa: S101 - narrows the type
        return self.message


class Dispatcher:
    """Sorts messages and settles those no handler runs now, in the calling thread."""

    def __init__(
        self,
        max_body_bytes: int,
        registry: HandlerRegistry = message_handlers,
        recent: RecentIds | None = None,
        *,
        inbox: bool = False,
        coalescing: HandlerRegistry = message_coalescing,
    ) -> None:
        """``inbox``: store every message a handler would run (INBOX) rather than run it here."""
        self.max_body_bytes = max_body_bytes
        self.registry = registry
        self.recent = recent if recent is not None else RecentIds()
        self.inbox = inbox
        self.coalescing = coalescing
        self._ignored: set[str] = set()

    def prepare(self, headers: Mapping[str, str], body: bytes) -> Item:
        """Sort one frame's headers and body into an :class:`Item` (no database access)."""
        try:
            message = parse_message(headers, body, self.max_body_bytes)
        except MalformedMessage as exc:
            return Item(MALFORMED, headers, body, problem=f"malformed message: {exc}")
        function = self.registry.get(message.subject)
        if function is None:
            return Item(IGNORE, headers, body, message)
        # Remembered only when a handler would run it: the only messages a redelivery makes risky.
        seen = self.recent.seen_before(message.message_id)
        if not self.inbox:
            if seen or message.redelivered:
                return Item(STORE, headers, body, message)
            return Item(RUN, headers, body, message, function)
        # The inbox: stored either way (a redelivery is still counted as one), keyed to coalesce.
        key = inbox_key(message, self.coalescing.get(message.subject))
        return Item(STORE if seen or message.redelivered else INBOX, headers, body, message, key=key)

    def settle(self, item: Item) -> str:
        """The outcome of an item no handler runs now: ignored, stored as redelivered, or kept dead."""
        if item.kind == IGNORE:
            self._note_ignored(item.parsed().subject)
            return IGNORED
        if item.kind in (STORE, INBOX):
            return store(item)
        return keep_dead(item.headers, item.body, item.problem)

    def _note_ignored(self, subject: str) -> None:
        # Said once per subject (a forgotten registration shows up), then only at debug level.
        level = logging.DEBUG
        if subject not in self._ignored and len(self._ignored) < _IGNORED_SUBJECTS_NOTED:
            self._ignored.add(subject)
            level = logging.INFO
        logger.log(level, "no message handler for subject %s: such messages are acked and ignored", subject)


def store(item: Item, error: BaseException | None = None) -> str:
    """Store a parsed message as a ``candlepin.message`` event: new in the inbox (an ``inbox``
    item), redelivered (no ``error``) or failed with ``error``; the outcome. A message the
    database refuses is kept dead instead."""
    message = item.parsed()
    metadata = {"subject": message.subject, "headers": message.headers, "body": message.body}
    delay = error.seconds if isinstance(error, RetryLater) else None
    alias = queue_alias()
    try:
        with transaction.atomic(using=alias):  # a savepoint: a refused row leaves the caller's transaction usable
            event_id = push_event(MESSAGE_EVENT, item.key or message_key(message.headers), metadata, delay=delay)
    except Exception as exc:
        if database_unavailable(exc):
            raise StoreUnavailable.of(exc) from exc
        # The database refuses this content (a NUL character, a lone surrogate...): keep it raw.
        if error is not None:
            reason = f"handler failed ({describe_error(error)})"
        else:
            reason = "inbox" if item.kind == INBOX else "redelivered"
        return keep_dead(item.headers, item.body, f"{reason} and the message cannot be stored: {describe_error(exc)}")
    if item.kind == INBOX and error is None:
        return STORED  # the common case, not worth a line per message; counted as "stored"
    extra = {**_extra(message.headers), "subject": message.subject, "event_id": event_id}
    if error is None:
        note = functools.partial(
            logger.info,
            "message for %s was delivered before: stored as event #%s, the event queue runs it",
            message.subject, event_id, extra=extra,
        )  # fmt: skip
        outcome = REDELIVERED
    elif delay is not None:
        note = functools.partial(
            logger.info,
            "message handler for %s asked to retry in %gs: stored as event #%s",
            message.subject, delay, event_id, extra=extra,
        )  # fmt: skip
        outcome = RETRY_LATER
    else:
        note = functools.partial(
            logger.error,
            "message handler for %s failed; stored as event #%s for retry: %s",
            message.subject, event_id, describe_error(error), exc_info=error, extra=extra,
        )  # fmt: skip
        outcome = DEFERRED
    transaction.on_commit(note, using=alias)  # said once it is true; a rolled-back burst says nothing
    return outcome


def store_inbox(items: Sequence[Item]) -> list[str]:
    """Store ``inbox`` items with one INSERT (in a savepoint); their outcomes, ``stored``. When the
    database refuses the lot, each is stored alone (:func:`store`), so only a refused one is
    kept dead, as it would be alone."""
    if len(items) == 1:
        return [store(items[0])]
    rows = []
    for item in items:
        message = item.parsed()
        metadata = {"subject": message.subject, "headers": message.headers, "body": message.body}
        rows.append((item.key or message_key(message.headers), metadata))
    try:
        with transaction.atomic(using=queue_alias()):  # a savepoint: a refusal leaves the burst's transaction usable
            push_many(MESSAGE_EVENT, rows)
    except Exception as exc:
        if database_unavailable(exc):
            raise StoreUnavailable.of(exc) from exc
        return [store(item) for item in items]  # a NUL character, a lone surrogate...: find which one
    return [STORED] * len(items)


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
    alias = queue_alias()
    try:
        with transaction.atomic(using=alias):  # a savepoint, as in store()
            event = Event.objects.using(alias).create(
                event_type=MESSAGE_EVENT,
                object_id=message_key(headers),
                metadata=metadata,
                state=Event.DEAD,
                attempts=1,
                last_error=error,
            )
    except DatabaseError as exc:
        if database_unavailable(exc):
            raise StoreUnavailable.of(exc) from exc
        # Acked anyway: redelivering it would only fail the same way, forever.
        logger.critical(
            "message dropped, it cannot be stored (%s): %s", describe_error(exc), error, extra=_extra(headers)
        )
        return DROPPED
    extra = {**_extra(headers), "event_id": event.id}
    if DEAD_LOG.allow():  # a flood logs a dozen lines and a summary (see log_dead_summary())
        line = functools.partial(logger.error, "message kept as dead event #%s: %s", event.id, error, extra=extra)
        transaction.on_commit(line, using=alias)
    return DEAD


def log_dead_summary() -> None:
    """Say how many dead messages went unlogged in a window that is over (the listener calls it)."""
    suppressed = DEAD_LOG.take_suppressed()
    if suppressed:
        logger.error(
            "%d more message(s) were kept as dead events in the last %gs without a line each "
            "(see the admin's events, or manage.py ping --json)",
            suppressed, DEAD_LOG.window, extra={"suppressed": suppressed},
        )  # fmt: skip


def log_key_summary() -> None:
    """Say how many failed key functions went unlogged in a window that is over (the listener calls it)."""
    suppressed = KEY_LOG.take_suppressed()
    if suppressed:
        logger.warning(
            "coalesce_by failed for %d more message(s) in the last %gs without a line each; "
            "they were stored without coalescing",
            suppressed, KEY_LOG.window, extra={"suppressed": suppressed},
        )  # fmt: skip


def handle_stored_message(event: QueuedEvent, registry: HandlerRegistry = message_handlers) -> None:
    """The event handler of ``candlepin.message``: run the stored message's handler again.

    A handler that raises :class:`SkipMessage` ends the run like a return (the event is done, not
    failed), logged at DEBUG, and counted ``skipped`` on the slot running this thread (the event
    queue's) once the run's transaction commits: a batch rolled back and run again counts once.
    """
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
    try:
        function(message)
    except SkipMessage as skip:
        note_skipped(message, skip, event_id=event.id)
        stats = thread_stats()
        if stats is not None:
            transaction.on_commit(functools.partial(stats.increment, SKIPPED), using=queue_alias())


def note_skipped(message: CandlepinMessage, skip: SkipMessage, **extra: Any) -> None:
    """Log a skipped message at DEBUG: expected (a host registered elsewhere), so never louder."""
    logger.debug(
        "message %s skipped: %s", message.subject, redact(str(skip)),
        extra={**_extra(message.headers), "subject": message.subject, **extra},
    )  # fmt: skip


def message_key(headers: Mapping[str, str]) -> str:
    """The event's object_id: the message-id, so two messages never coalesce into one run."""
    key = _storable(headers.get("message-id") or "") or uuid.uuid4().hex
    if len(key) > MAX_OBJECT_ID_LENGTH:
        key = "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return key


def inbox_key(message: CandlepinMessage, coalesce_by: Callable[[CandlepinMessage], Any] | None) -> str | None:
    """The object_id a message is stored under in the inbox: ``<subject>:<key>`` when its subject
    has a ``coalesce_by`` function that gives a key (a str or an int), so pending messages of one
    subject about one thing run once, with the newest; None (the message's own key, no
    coalescing) otherwise. The subject is part of it: two subjects never coalesce together
    (a host's compliance and its system purpose compliance are two statuses). Hashed when longer
    than the column or not storable as it is. Never raises: a key function that fails costs
    its message the coalescing, not its run (logged)."""
    if coalesce_by is None:
        return None
    try:
        key = coalesce_by(message)
    except BaseException as exc:  # noqa: BLE001 - SystemExit & co. too: application code, it must not end the thread
        _key_failed(message, f"raised {describe_error(exc)}")
        return None
    if key is None or key == "":
        return None
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        _key_failed(message, f"returned a {type(key).__name__}, not a str or an int")
        return None
    text = f"{message.subject}:{key}"
    if len(text) > MAX_OBJECT_ID_LENGTH or not _plain_text(text):
        text = "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return text


def _key_failed(message: CandlepinMessage, problem: str) -> None:
    if KEY_LOG.allow():  # a key function broken for every message of a flood logs a dozen lines
        logger.warning(
            "coalesce_by of %s %s; the message is stored without coalescing",
            message.subject, redact(problem), extra={**_extra(message.headers), "subject": message.subject},
        )  # fmt: skip


def _plain_text(text: str) -> bool:
    """Storable as an object_id as it is: no NUL, no lone surrogate (push_event refuses them)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def drop_broken_connection(alias: str) -> None:
    """Close the thread's connection on ``alias`` if a database error left it unusable (as Django
    does between requests); the next query reconnects. Cheap when nothing went wrong."""
    connection = connections[alias]
    if connection.connection is None or not connection.errors_occurred or connection.in_atomic_block:
        return
    if connection.is_usable():
        connection.errors_occurred = False
    else:
        connection.close()


def database_unavailable(exc: BaseException) -> bool:
    """The database is away or not ready (as opposed to refusing this one row)."""
    return isinstance(exc, (OperationalError, InterfaceError, ProgrammingError))


def _storable(text: Any) -> str:
    # PostgreSQL text and jsonb refuse NUL characters.
    return str(text).replace("\x00", "\\x00")


def _extra(headers: Mapping[str, str]) -> dict[str, Any]:
    return {"message_id": headers.get("message-id"), "redelivered": headers.get("redelivered")}
