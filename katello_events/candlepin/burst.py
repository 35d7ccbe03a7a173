"""Runs a burst of received messages in one fenced transaction, and one at a time after a failure.

A burst is the frames already waiting when the listener looks (up to ``ACK_BATCH``). Its items
run in order inside one transaction on the event queue's database, which first checks the
runner's fence (``katello_events.fencing``): a deposed runner commits nothing, and the listener
acks only what committed. The transaction also ends once it has run ``ACK_DELAY`` (a slow handler
does not hold back the commit and ack of the messages before it); the rest of the burst goes on
in the next one. With the listener's ``INBOX`` a burst runs no handler: each of its messages is
stored (``dispatch.store_inbox``: one INSERT for the messages in a row), so a burst costs one
commit, whatever its handlers would have cost.

When a handler raises, its transaction is rolled back and the messages it held run again one at
a time, each in a transaction of its own (fence check, handler, commit); a handler that fails
alone has its message stored for the event queue to retry (``dispatch.store``). So one failure
costs the other messages only a second run (handlers are idempotent: delivery is at least once).
A handler that fails first in its transaction already ran alone: it is not run again.

Anything a handler raises is a failure of its message, ``SystemExit``, ``KeyboardInterrupt`` and
``GeneratorExit`` included: it never ends the listener's thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence

from django.db import DatabaseError, connections, transaction

from katello_events.candlepin.connection import ACK_DELAY
from katello_events.candlepin.dispatch import (
    INBOX,
    PROCESSED,
    RUN,
    SKIPPED,
    Dispatcher,
    Item,
    StoreUnavailable,
    database_unavailable,
    drop_broken_connection,
    note_skipped,
    store,
    store_inbox,
)
from katello_events.candlepin.message import SkipMessage
from katello_events.fencing import Fence

#: libpq's PQTRANS_INERROR (psycopg2 and psycopg alike): a statement failed, the transaction is spoilt.
_TRANSACTION_IN_ERROR = 3


class _HandlerFailed(Exception):
    """A handler failed inside a transaction, which is rolled back: items up to ``end`` (exclusive)
    must run again. ``position`` is the failed item's, None when the commit itself refused."""

    def __init__(self, position: int | None, end: int, error: BaseException) -> None:
        super().__init__(position, end, error)
        self.position = position
        self.end = end
        self.error = error


class SpoiltTransaction(RuntimeError):
    """A handler returned, but a database error it caught left the transaction unusable."""


class BurstRunner:
    """Settles bursts of :class:`Item` for one listener, in its thread.

    Raises :class:`StoreUnavailable` when the database is away and
    :class:`katello_events.fencing.Deposed` when another runner has taken the role; either way,
    nothing of the transaction in hand was committed, and items yielded before stay committed.
    """

    def __init__(self, dispatcher: Dispatcher, fence: Fence, alias: str, tick: Callable[[], None]) -> None:
        """``tick`` tells the supervisor the listener is alive; called as each transaction begins."""
        self.dispatcher = dispatcher
        self.fence = fence
        self.alias = alias
        self.tick = tick
        self._connection = connections[alias]  # this thread's: the runner is used in one thread
        #: (subject, message-id, wall-clock start) of the item in hand; None between bursts.
        self.current: tuple[str, str | None, float] | None = None

    def run(self, items: Sequence[Item]) -> Generator[str, None, None]:
        """Settle ``items`` in order: yields each one's outcome once it has committed."""
        try:
            start = 0
            while start < len(items):
                try:
                    outcomes = self._together(items, start)
                except _HandlerFailed as failed:
                    yield from self._one_by_one(items, start, failed)
                    start = failed.end
                    continue
                yield from outcomes
                start += len(outcomes)
        finally:
            self.current = None

    # -- the fast path: the burst in one transaction -----------------------------------------

    def _together(self, items: Sequence[Item], start: int) -> list[str]:
        """Run items from ``start`` in one transaction until all ran or ACK_DELAY passed; their
        outcomes, committed. Raises _HandlerFailed (rolled back) when a handler raised."""
        outcomes: list[str] = []
        self.tick()  # once per transaction: one lasts ACK_DELAY plus its last handler at most
        began = time.monotonic()
        try:
            with transaction.atomic(using=self.alias):
                self.fence.check(self.alias)
                position = start
                while position < len(items):
                    inbox = _inbox_run(items, position)
                    if inbox:  # the inbox's messages in a row: one INSERT for them all
                        outcomes += self._store_inbox(inbox)
                        position += len(inbox)
                    else:
                        outcomes.append(self._settle(items[position], position))
                        position += 1
                    if time.monotonic() - began >= ACK_DELAY:
                        break
        except DatabaseError as exc:  # beginning, the fence check or the commit: not a handler
            if database_unavailable(exc):
                raise StoreUnavailable.of(exc) from exc
            raise _HandlerFailed(None, start + len(outcomes), exc) from exc  # the commit refused a write
        return outcomes

    def _settle(self, item: Item, position: int) -> str:
        if item.kind != RUN:
            message = item.message
            self.current = (message.subject, message.message_id, time.time()) if message else None
            return self.dispatcher.settle(item)
        message, function = item.parsed(), item.function
        assert function is not None  # noqa: S101 - narrows the type: dispatch gives every RUN item its handler
        self.current = (message.subject, message.message_id, time.time())
        outcome = PROCESSED
        try:
            function(message)
        except SkipMessage as skip:  # nothing to do: done, like a return
            note_skipped(message, skip)
            outcome = SKIPPED
        except BaseException as exc:  # SystemExit & co. too: a failure of this message, not of the thread
            raise _HandlerFailed(position, position + 1, exc) from exc
        if self._spoilt():
            # Committing now would silently roll back every message of the transaction, acked anyway.
            error = SpoiltTransaction("a database error was caught in the handler; wrap such queries in atomic()")
            raise _HandlerFailed(position, position + 1, error)
        return outcome

    def _store_inbox(self, items: Sequence[Item]) -> list[str]:
        message = items[0].parsed()
        self.current = (message.subject, message.message_id, time.time())
        return store_inbox(items)

    def _spoilt(self) -> bool:
        """Whether a statement failed in the transaction (Django's flag, or libpq's status)."""
        connection = self._connection
        if connection.needs_rollback:
            return True
        info = getattr(connection.connection, "info", None)
        return getattr(info, "transaction_status", None) == _TRANSACTION_IN_ERROR

    # -- the slow path: one message per transaction ----------------------------------------------

    def _one_by_one(self, items: Sequence[Item], start: int, failed: _HandlerFailed) -> Iterator[str]:
        for position in range(start, failed.end):
            if position == failed.position == start:
                # It failed first in its transaction: it already ran alone, so it is not run again.
                yield self._defer(items[position], failed.error)
            else:
                yield self._alone(items[position], position)

    def _alone(self, item: Item, position: int) -> str:
        self.tick()
        drop_broken_connection(self.alias)
        try:
            with transaction.atomic(using=self.alias):
                self.fence.check(self.alias)
                return self._settle(item, position)
        except _HandlerFailed as failed:
            error = failed.error
        except DatabaseError as exc:
            if database_unavailable(exc):
                raise StoreUnavailable.of(exc) from exc
            error = exc  # the commit refused what the handler wrote
        return self._defer(item, error)

    def _defer(self, item: Item, error: BaseException) -> str:
        """Store a message whose handler failed alone, in a fenced transaction of its own."""
        drop_broken_connection(self.alias)  # the handler may have failed on (and broken) the connection
        try:
            with transaction.atomic(using=self.alias):
                self.fence.check(self.alias)
                return store(item, error)
        except DatabaseError as exc:
            if database_unavailable(exc):
                raise StoreUnavailable.of(exc) from exc
            raise


def _inbox_run(items: Sequence[Item], start: int) -> Sequence[Item]:
    """The ``inbox`` items in a row from ``start`` (none when that one is not)."""
    end = start
    while end < len(items) and items[end].kind == INBOX:
        end += 1
    return items[start:end]
