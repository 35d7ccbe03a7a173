"""The consumer side of the event queue: claim a batch, coalesce, handle, delete, retry.

One batch is one transaction: ``SELECT ... FOR UPDATE SKIP LOCKED`` claims the rows, the
handlers run, the rows are deleted, and the commit makes all of it true at once. So:

- a runner killed mid-batch changes nothing: PostgreSQL rolls back, the rows are unlocked and
  the next runner takes them at once (and handlers' own database writes roll back with them);
- nothing is ever marked "in progress", so nothing can be stuck there;
- when one handler of a batch raises (anything, ``BaseException`` included), the batch is
  rolled back, that call counts as its event's failed attempt (retried after the backoff), and
  the other groups are run again one by one, each in a transaction of its own, so one failure
  costs the others nothing. A database error is the exception: the batch's own transaction
  state may have caused it (an earlier handler left it aborted), so that group is run again
  alone too, uncharged.

Poison events, whose handler takes the process down (SIGKILL, a segfault, ``os._exit``) or never
returns, cannot be caught: they are charged by *careful tries* (see docs/event-queue.md,
"Poison events"). A careful try handles one group alone and commits its attempt, with
``attempt_started_at`` as a mark, before calling the handler; a try that ends clears the mark,
so a mark found still set means the runner died during that try. Careful tries are made for
every group that already has attempts, and for every group of the first batches a runner
takes after the previous runner ended uncleanly (``Fence.after_unclean_end``): the batch that
killed it is among them. The normal path writes nothing more.

Every batch transaction checks the runner's fencing token first (``katello_events.fencing``),
so a deposed runner commits nothing. Handler errors never escape
:meth:`BatchConsumer.process_batch`; database errors (an outage) and :class:`Deposed` do, with
every claimed row left as it was.
"""

from __future__ import annotations

import functools
import json
import operator
import time
import traceback
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import DatabaseError, connections, transaction
from django.db.models import Q, Value
from django.db.models.functions import Now

from katello_events.errors import describe_error
from katello_events.event_queue.batch import Chunk, Group, RetryPolicy, group_rows, plan_calls
from katello_events.event_queue.careful_lock import ALONE, CarefulLock, Unshared
from katello_events.event_queue.types import PartialFailure, QueuedEvent, RetryLater
from katello_events.fencing import FENCE_CTE, UNFENCED, Fence, queue_alias
from katello_events.log import get_logger
from katello_events.models import Event
from katello_events.redaction import redact
from katello_events.registry import BatchHandler, HandlerRegistry, event_handlers
from katello_events.stats import HandlerStats

logger = get_logger(__name__)

#: At most this many full batches go by without a twin sweep (see BatchConsumer._sweep_due).
MAX_SWEEP_INTERVAL = 32

#: A sweep takes at most this many twins per event of its batch: a pair pushed a million times
#: must not make one batch (and its memory) unbounded. Twins beyond it run in a later batch.
TWINS_PER_BATCH = 10

#: Bytes of metadata (as stored) a batch takes at most, beyond its first event; its twin sweep
#: takes as much again. With metadata up to ``MAX_METADATA_BYTES`` (1 MiB) a batch of 100
#: could otherwise hold 100 MiB, and its twins ten times that.
DEFAULT_BATCH_MAX_BYTES = 8 * 1024 * 1024

#: Longest traceback text kept on a failed event (characters).
MAX_ERROR_LENGTH = 4000

#: Batches taken one group at a time, each attempt committed first, after an unclean end of the
#: previous runner. The batch it died in holds the lowest ids that were due then; one more batch
#: covers deferred events that became due meanwhile and sort before them.
CAREFUL_BATCHES_AFTER_UNCLEAN_END = 2

#: The last error of an event whose careful try never ended.
DIED = "the runner died while handling it"

_COLUMNS = ("id", "event_type", "object_id", "metadata", "attempts", "created_at")

# The batch is bounded twice: LIMIT events, and the bytes of their metadata as stored (an event
# is taken while the events before it hold less than the byte limit, so the first always is;
# no metadata, SQL NULL, counts 0).
_PICK_SQL = """
DELETE FROM katello_events_event WHERE id = ANY(ARRAY(
    SELECT id FROM (
        SELECT id, sum(size) OVER (ORDER BY id) - size AS before
        FROM (
            SELECT id, coalesce(pg_column_size(metadata), 0) AS size FROM katello_events_event
            WHERE state = 'pending' AND run_after <= statement_timestamp(){fenced}{partition}
            ORDER BY id LIMIT %s
            FOR UPDATE SKIP LOCKED) AS picked
    ) AS sized WHERE before < %s))
RETURNING id, event_type, object_id, metadata, attempts, EXTRACT(EPOCH FROM created_at)::float8
"""
# With several consumer threads (CONCURRENCY), each takes only the pairs of its partition: a
# pair always goes to the same thread, so it is never handled twice at once and its events
# run in order. The twin sweep needs no filter: twins are of the same pairs.
PARTITION_SQL = " AND mod(abs(hashtext(event_type || chr(31) || object_id)::bigint), %s) = %s"


@functools.cache
def take_type_sql(*, partitioned: bool) -> str:
    """More due events of one type, for a batch handler's call (the claim's fence already holds).
    Parameters: event type, [partitions, partition,] limit, max bytes."""
    return _PICK_SQL.format(fenced=" AND event_type = %s", partition=PARTITION_SQL if partitioned else "")


@functools.cache
def take_sql(*, fenced: bool, partitioned: bool) -> str:
    """The claim query. The fencing check rides in it (no round trip of its own): a deposed
    runner claims nothing, and the fence row stays share-locked until the batch commits.
    Parameters: [epoch,] [partitions, partition,] batch size, max bytes."""
    sql = _PICK_SQL.format(
        fenced=" AND EXISTS (SELECT 1 FROM fence)" if fenced else "",
        partition=PARTITION_SQL if partitioned else "",
    )
    # (S608: every piece is a constant of ours; values go as query parameters.)
    return "WITH " + FENCE_CTE + sql if fenced else sql


# One index probe per pair; the ORM would compile a 100-branch OR for every batch. Bounded
# like a batch: a count, and the bytes of metadata.
_TAKE_TWINS_SQL = """
DELETE FROM katello_events_event WHERE id = ANY(ARRAY(
    SELECT id FROM (
        SELECT id, sum(size) OVER (ORDER BY id) - size AS before
        FROM (
            SELECT e.id, coalesce(pg_column_size(e.metadata), 0) AS size FROM katello_events_event e
            JOIN unnest(%s::varchar[], %s::varchar[]) AS pair(event_type, object_id)
              ON e.event_type = pair.event_type AND e.object_id = pair.object_id
            WHERE e.state = 'pending'
            ORDER BY e.id LIMIT %s
            FOR UPDATE OF e SKIP LOCKED) AS picked
    ) AS sized WHERE before < %s))
RETURNING id, event_type, object_id, metadata, attempts, EXTRACT(EPOCH FROM created_at)::float8
"""


def _within_bytes(rows: list[tuple], max_bytes: int) -> list[tuple]:
    """The leading rows whose metadata, before each, holds less than ``max_bytes`` (not PostgreSQL:
    the JSON text's length stands for the stored size)."""
    kept, total = [], 0
    for row in rows:
        if total >= max_bytes:
            break
        kept.append(row)
        total += len(row[3]) if isinstance(row[3], str) else len(json.dumps(row[3])) if row[3] is not None else 0
    return kept


class _BatchFailed(Exception):
    """A handler raised during the fast path: roll the batch back and go one by one.

    ``groups`` are those charged for it: the group whose handler raised, or the groups of a
    batch handler's call (those it named, with :class:`PartialFailure`); none for a group
    without a handler. The handler's exception is the ``__cause__``.
    """

    def __init__(self, reason: str, groups: list[Group] | None = None) -> None:
        super().__init__(reason)
        self.groups = groups or []


class _TakeCarefully(Exception):
    """The batch holds a group that needs a careful try: roll it back before any handler runs."""


class BatchConsumer:
    """Handles the queue one batch per :meth:`process_batch` call, in the calling thread."""

    def __init__(
        self,
        stats: HandlerStats,
        *,
        batch_size: int = 100,
        max_bytes: int = DEFAULT_BATCH_MAX_BYTES,
        retry: RetryPolicy | None = None,
        registry: HandlerRegistry = event_handlers,
        fence: Fence = UNFENCED,
        partition: tuple[int, int] | None = None,
        threads: CarefulLock | None = None,
    ) -> None:
        self.stats = stats
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        #: (index, count): take only the pairs whose hash falls in this partition (PostgreSQL;
        #: one consumer per thread, see CONCURRENCY). None: every pair.
        self.partition = partition if partition and partition[1] > 1 else None
        #: Shared by the slot's consumer threads: a careful try runs while no batch does.
        self.threads: CarefulLock | Unshared = threads or ALONE
        #: Events of the batch in hand (the fast path's; 0 between batches): the slot reports it.
        self.in_progress = 0
        self.retry = retry or RetryPolicy()
        self.registry = registry
        self.alias = queue_alias()
        self.events = Event.objects.db_manager(self.alias)
        self.fence = fence
        #: Batches still to be taken one group at a time (see CAREFUL_BATCHES_AFTER_UNCLEAN_END).
        self.careful_batches = CAREFUL_BATCHES_AFTER_UNCLEAN_END if fence.after_unclean_end else 0
        #: What is being handled now, (event_type, object_id, wall-clock start): for stall reports.
        self.handling: tuple[str, str, float] | None = None
        self._sweep_interval = 1  # full batches per twin sweep (adaptive, see _sweep_due)
        self._sweeps_to_skip = 0

    def use_fence(self, fence: Fence) -> None:
        """Work under ``fence`` from now on (the runner's term, known once its thread starts)."""
        self.fence = fence
        self.careful_batches = CAREFUL_BATCHES_AFTER_UNCLEAN_END if fence.after_unclean_end else 0

    def process_batch(self) -> int:
        """Handle one batch; the number of (type, object) groups it held (0: queue empty)."""
        groups: list[Group] = []
        path = "fast"
        culprits: list[Group] = []
        cause: BaseException | None = None
        try:
            with self.threads.batch(), transaction.atomic(using=self.alias):
                groups = group_rows(self._take())
                if not groups:
                    return 0
                if self.careful_batches or any(group.attempts for group in groups):
                    raise _TakeCarefully
                self.in_progress = sum(len(g.rows) for g in groups)
                for call in plan_calls(groups, self._batch_handler_of):
                    if isinstance(call, Chunk):
                        self._run_chunk_in_batch(call)
                    else:
                        self._run_in_batch(call)
                self._delete_taken(groups)
        except _BatchFailed as failure:
            path = "one by one"  # rolled back: every group of the batch is pending again, untouched
            cause = failure.__cause__  # the handler's exception whenever ``groups`` is set
            if cause is not None and not isinstance(cause, DatabaseError):
                culprits = failure.groups
        except _TakeCarefully:
            path = "careful"
        finally:
            self.handling = None
            self.in_progress = 0
        if path == "fast":
            self._count_processed(groups)
            return len(groups)
        # Outside the except blocks, so failures logged now do not chain to our exceptions.
        careful_all = path == "careful" and self.careful_batches > 0
        if careful_all:
            self.careful_batches -= 1
        if culprits and cause is not None:
            self._charge_failures(culprits, cause)
        charged = {id(group) for group in culprits}
        self._one_by_one([g for g in groups if id(g) not in charged], careful_all=careful_all)
        return len(groups)

    def _batch_handler_of(self, event_type: str) -> tuple[Any, int] | None:
        function = self.registry.get(event_type)
        return (function, function.batch_size) if isinstance(function, BatchHandler) else None

    # -- taking a batch ------------------------------------------------------------------------

    def _take(self) -> list[tuple]:
        """Claim a batch (and, from a deep queue, the twins of its pairs beyond it).

        On PostgreSQL the rows are deleted as they are claimed (``DELETE ... RETURNING``): in
        this transaction that is the same as deleting them after their handlers, and it saves
        a round trip per batch; a rollback puts them all back.
        """
        connection = connections[self.alias]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                fenced = self.fence.active
                params = [self.fence.epoch] if fenced else []
                if self.partition:
                    params += [self.partition[1], self.partition[0]]
                sql = take_sql(fenced=fenced, partitioned=self.partition is not None)
                cursor.execute(sql, [*params, self.batch_size, self.max_bytes])
                rows = cursor.fetchall()
                if not rows:
                    self.fence.check(self.alias)  # empty, or deposed? Only asked when idle.
                full = len(rows) == self.batch_size
                if self._sweep_due(rows):
                    pairs = sorted({(row[1], row[2]) for row in rows})
                    twins_limit = TWINS_PER_BATCH * self.batch_size
                    types, objects = [t for t, _ in pairs], [o for _, o in pairs]
                    cursor.execute(_TAKE_TWINS_SQL, [types, objects, twins_limit, self.max_bytes])
                    rows += self._swept(cursor.fetchall(), full_batch=full)
                if full:
                    rows += self._more_for_batch_handlers(cursor, rows)
            # created_at comes as epoch seconds: the driver's timestamptz loader costs more per row
            # than the rest of a no-op event's handling put together.
            return [(*row[:3], _decode_json(row[3]), row[4], datetime.fromtimestamp(row[5], UTC)) for row in rows]
        self.fence.check(self.alias)
        runnable = self.events.select_for_update(skip_locked=True).filter(state=Event.PENDING, run_after__lte=Now())
        rows = _within_bytes(list(runnable.order_by("id").values_list(*_COLUMNS)[: self.batch_size]), self.max_bytes)
        if self._sweep_due(rows):
            wanted = {(row[1], row[2]) for row in rows}
            same_pair = functools.reduce(operator.or_, (Q(event_type=t, object_id=o) for t, o in wanted))
            claimed = [row[0] for row in rows]
            pending = self.events.select_for_update(skip_locked=True).filter(state=Event.PENDING)
            twins = pending.filter(same_pair).exclude(id__in=claimed).order_by("id").values_list(*_COLUMNS)
            twins = twins[: TWINS_PER_BATCH * self.batch_size]
            rows += self._swept(_within_bytes(list(twins), self.max_bytes), full_batch=len(rows) == self.batch_size)
        return rows

    def _more_for_batch_handlers(self, cursor: Any, rows: list[tuple]) -> list[tuple]:
        """From a deep queue: enough more due events of each batch-handled type of the batch to
        fill one call (``batch_size`` objects), beyond ``BATCH_SIZE``."""
        pairs: dict[str, set[str]] = {}
        for row in rows:
            pairs.setdefault(row[1], set()).add(row[2])
        more: list[tuple] = []
        for event_type, objects in pairs.items():
            batch_handler = self._batch_handler_of(event_type)
            wanted = batch_handler[1] - len(objects) if batch_handler else 0
            if wanted > 0:
                partition = [self.partition[1], self.partition[0]] if self.partition else []
                sql = take_type_sql(partitioned=self.partition is not None)
                cursor.execute(sql, [event_type, *partition, wanted, self.max_bytes])
                more += cursor.fetchall()
        return more

    def _sweep_due(self, rows: list[tuple]) -> bool:
        """Whether to take the other pending events of this batch's pairs too.

        Twins are taken whether due or not (deferred by ``delay`` or a retry backoff): a pair
        runs once for all its pending events as soon as any of them is due, which is what
        makes ``delay`` a debounce. A batch that is not full drained the due queue, so its sweep
        is cheap and always made. A full batch (a deep queue) pays an index probe per pair, so
        while such sweeps find nothing they are made less and less often (down to one full
        batch in ``MAX_SWEEP_INTERVAL``); a twin that escapes runs later (at least once).
        """
        if len(rows) < self.batch_size:
            return bool(rows)
        if self._sweeps_to_skip > 0:
            self._sweeps_to_skip -= 1
            return False
        return True

    def _swept(self, twins: list[tuple], *, full_batch: bool = True) -> list[tuple]:
        if not full_batch:
            return twins
        self._sweep_interval = 1 if twins else min(self._sweep_interval * 2, MAX_SWEEP_INTERVAL)
        self._sweeps_to_skip = self._sweep_interval - 1
        return twins

    def _delete_taken(self, groups: list[Group]) -> None:
        if connections[self.alias].vendor != "postgresql":  # deleted when taken there
            self.events.filter(id__in=[i for g in groups for i in g.ids]).delete()

    # -- the fast path: the whole batch in one transaction ---------------------------------

    def _run_in_batch(self, group: Group) -> None:
        function = self.registry.get(group.event_type)
        if function is None:
            raise _BatchFailed(f"no handler for {group.event_type!r}")  # settled as dead one by one
        self.handling = (group.event_type, group.object_id, time.time())
        try:
            function(group.event())
        except BaseException as exc:  # SystemExit, KeyboardInterrupt... from a handler: its failure
            raise _BatchFailed("a handler raised", [group]) from exc

    def _run_chunk_in_batch(self, chunk: Chunk) -> None:
        """A batch handler's call in the batch's transaction; any failure rolls the batch back
        (the groups named by a PartialFailure, or all of the call's, are charged)."""
        self.handling = (chunk.event_type, _objects(chunk.groups), time.time())
        try:
            chunk.function(chunk.events())
        except PartialFailure as exc:
            raise _BatchFailed("a batch handler failed for some objects", _named(chunk.groups, exc)) from exc
        except BaseException as exc:
            raise _BatchFailed("a batch handler raised", chunk.groups) from exc

    # -- the slow path: one group (or one batch handler's call) per transaction --------------

    def _one_by_one(self, groups: list[Group], *, careful_all: bool) -> None:
        """Each group in a transaction of its own (carefully when due); a batch handler's groups
        that need no careful try go together, one transaction per call."""
        for call in plan_calls(groups, self._batch_handler_of):
            if isinstance(call, Chunk) and not careful_all and not any(g.attempts for g in call.groups):
                with self.threads.batch():
                    for group, settled in self._run_chunk_alone(call):
                        self._count(group, settled)
                continue
            for group in call.groups if isinstance(call, Chunk) else [call]:
                outcome: str | None
                if careful_all or group.attempts:
                    with self.threads.careful():  # alone: a death now is this group's
                        outcome = self._try_carefully(group)
                else:
                    with self.threads.batch():
                        outcome = self._run_alone(group)
                if outcome:
                    self._count(group, outcome)

    def _charge_failures(self, groups: list[Group], error: BaseException) -> None:
        """The groups whose handler call raised in the batch: that call was their attempt."""
        outcomes = []
        with self.threads.batch(), transaction.atomic(using=self.alias):
            self.fence.check(self.alias)
            for group in groups:
                self._lock(group)
                if group.rows:
                    outcomes.append((group, self._settle_raised(group, group.event(), error)))
        for group, outcome in outcomes:
            self._count(group, outcome)

    def _run_chunk_alone(self, chunk: Chunk) -> list[tuple[Group, str]]:
        """A batch handler's call in a transaction of its own: the groups' outcomes.

        Any exception rolls the call's writes back and charges every group of it; a
        :class:`PartialFailure` keeps them, and charges only the groups it names.
        """
        outcomes: list[tuple[Group, str]] = []
        with transaction.atomic(using=self.alias):
            self.fence.check(self.alias)
            for group in chunk.groups:
                self._lock(group)
            groups = [group for group in chunk.groups if group.rows]
            if not groups:
                return []
            events = [group.event() for group in groups]
            self.handling = (chunk.event_type, _objects(groups), time.time())
            savepoint = _savepoint_create(using=self.alias)
            try:
                chunk.function(events)
            except PartialFailure as exc:
                transaction.savepoint_commit(savepoint, using=self.alias)
                failed = {id(group) for group in _named(groups, exc)}
                for group, event in zip(groups, events, strict=True):
                    if id(group) in failed:
                        outcomes.append((group, self._settle_raised(group, event, exc)))
                    else:
                        self.events.filter(id__in=group.ids).delete()
                        outcomes.append((group, "processed"))
                return outcomes
            except BaseException as exc:  # noqa: BLE001 - anything a handler raises fails its call, nothing more
                transaction.savepoint_rollback(savepoint, using=self.alias)
                pairs = zip(groups, events, strict=True)
                return [(group, self._settle_raised(group, event, exc)) for group, event in pairs]
            finally:
                self.handling = None
            transaction.savepoint_commit(savepoint, using=self.alias)
            self.events.filter(id__in=[i for group in groups for i in group.ids]).delete()
            return [(group, "processed") for group in groups]

    def _lock(self, group: Group) -> dict[int, Any]:
        """Lock the group's rows still pending (dropping the others from it); id -> mark."""
        marks = dict(
            self.events.select_for_update(skip_locked=True)
            .filter(id__in=group.ids, state=Event.PENDING)
            .values_list("id", "attempt_started_at")
        )
        group.rows = [row for row in group.rows if row[0] in marks]
        return marks

    def _run_alone(self, group: Group, event: QueuedEvent | None = None) -> str | None:
        """One group in a transaction of its own; ``event``: what a careful try charged for."""
        with transaction.atomic(using=self.alias):
            self.fence.check(self.alias)
            self._lock(group)
            if not group.rows:
                return None
            event = event or group.event()
            function = self.registry.get(group.event_type)
            if function is None:
                return self._settle(group, event, "unknown")
            self.handling = (group.event_type, group.object_id, time.time())
            try:
                with transaction.atomic(using=self.alias):  # a savepoint: the handler's own writes
                    _call_alone(function, event)
            except BaseException as exc:  # noqa: BLE001 - anything a handler raises fails its event, nothing more
                return self._settle_raised(group, event, exc)
            finally:
                self.handling = None
            self.events.filter(id__in=group.ids).delete()
            return "processed"

    # -- careful tries: the attempt is committed before the handler runs ---------------------

    def _try_carefully(self, group: Group) -> str | None:
        with transaction.atomic(using=self.alias):
            self.fence.check(self.alias)
            marks = self._lock(group)
            if not group.rows:
                return None
            event = group.event()
            if any(marks.values()):
                return self._after_death(group, event)
            self._fold(group, event, attempts=event.attempts + 1, attempt_started_at=Now())
        return self._run_alone(group, event)

    def _after_death(self, group: Group, event: QueuedEvent) -> str:
        """A careful try of this group never ended: the runner died in it (already charged).

        A death in a normal batch cannot be blamed on one event (nothing was written before
        its handlers), so an event that also dies in its first careful try is presumed to have
        caused that one too, and is charged for both. Rescheduled with the usual backoff, so
        the events behind it flow meanwhile; dead once out of attempts.
        """
        deaths = event.attempts + 1 if event.attempts == 1 else event.attempts
        error = f"{DIED} (attempt {deaths} of {self.retry.max_attempts})"
        dead = deaths >= self.retry.max_attempts
        fields: dict[str, Any] = {"attempts": deaths, "last_error": error, "attempt_started_at": None}
        if dead:
            fields["state"] = Event.DEAD
        else:
            delay = self.retry.delay_after(deaths)
            fields["run_after"] = Now() + Value(timedelta(seconds=delay))
        self._fold(group, event, **fields)
        what = "kept as dead" if dead else f"retrying in {delay:g}s"
        logger.error("event %s: %s, %s", _label(event), error, what, extra={**_extra(event), "attempts": deaths})
        return "died_dead" if dead else "died"

    def _fold(self, group: Group, event: QueuedEvent, **fields: Any) -> None:
        """Update the group's newest row with ``fields`` and delete its other rows."""
        self.events.filter(id=event.id).update(updated_at=Now(), **fields)
        self.events.filter(id__in=[i for i in group.ids if i != event.id]).delete()

    def _settle_raised(self, group: Group, event: QueuedEvent, error: BaseException) -> str:
        if isinstance(error, RetryLater):
            return self._settle(group, event, "retry_later", delay=error.seconds)
        return self._settle(group, event, "failed", error=error)

    def _settle(
        self,
        group: Group,
        event: QueuedEvent,
        outcome: str,
        *,
        delay: float = 0.0,
        error: BaseException | None = None,
    ) -> str:
        """Fold the group into its newest row and reschedule it, or keep it as dead."""
        attempts = event.attempts
        fields: dict[str, Any] = {"attempt_started_at": None}
        if outcome == "unknown":
            attempts += 1
            outcome = "dead"
            fields.update(state=Event.DEAD, last_error=f"no handler is registered for event type {event.event_type!r}")
            logger.error("event %s dropped to dead: %s", _label(event), fields["last_error"], extra=_extra(event))
        elif outcome == "failed":
            assert error is not None  # noqa: S101 - narrows the type: "failed" comes only from _settle_raised()
            attempts += 1
            fields["last_error"] = _error_text(error)
            if attempts >= self.retry.max_attempts:
                outcome = "dead"
                fields["state"] = Event.DEAD
            else:
                delay = self.retry.delay_after(attempts)
            _log_failure(event, attempts, self.retry.max_attempts, delay, error, dead=outcome == "dead")
        if outcome != "dead":
            fields["run_after"] = Now() + Value(timedelta(seconds=delay))
        self._fold(group, event, attempts=attempts, **fields)
        return outcome

    # -- counting ----------------------------------------------------------------------------

    def _count_processed(self, groups: list[Group]) -> None:
        """A whole batch handled: one increment per counter, not per group (each takes a lock)."""
        self.stats.increment("processed", len(groups))
        coalesced = sum(len(group.rows) - 1 for group in groups)
        if coalesced:
            self.stats.increment("coalesced", coalesced)

    def _count(self, group: Group, outcome: str) -> None:
        if outcome == "processed":
            self.stats.increment("processed")
            if len(group.rows) > 1:
                self.stats.increment("coalesced", len(group.rows) - 1)
        elif outcome == "retry_later":
            self.stats.increment("retried_later")
        else:  # failed, dead, unknown, died, died_dead
            self.stats.increment("failed")
            if outcome.startswith("died"):
                self.stats.increment("deaths")
            if outcome in ("dead", "unknown", "died_dead"):
                self.stats.increment("dead")


#: Django 6.1 renamed ``transaction.savepoint()`` (deprecated there) to ``savepoint_create()``.
_savepoint_create = getattr(transaction, "savepoint_create", None) or transaction.savepoint


def _call_alone(function: Any, event: QueuedEvent) -> None:
    """Call an event's handler; a batch handler gets a list of one (a PartialFailure naming
    the event fails it, naming none leaves it done)."""
    if not isinstance(function, BatchHandler):
        function(event)
        return
    try:
        function([event])
    except PartialFailure as exc:
        if event.object_id in exc.failed:
            raise


def _named(groups: list[Group], failure: PartialFailure) -> list[Group]:
    """The groups a PartialFailure names; all of them when it names none of the call's objects
    (a handler that names unknown objects cannot be trusted to have done the others)."""
    named = [group for group in groups if group.object_id in failure.failed]
    return named or groups


def _objects(groups: list[Group]) -> str:
    """What a batch handler's call is about, for the status (the first objects, and a count)."""
    shown = ", ".join(group.object_id for group in groups[:3])
    return f"{shown} and {len(groups) - 3} more" if len(groups) > 3 else shown


def _decode_json(value: str | None) -> Any:
    # Django's PostgreSQL connections hand jsonb over undecoded (JSONField decodes it).
    return None if value is None else json.loads(value)


def _label(event: QueuedEvent) -> str:
    return f"{event.event_type}:{event.object_id} (#{event.id})"


def _extra(event: QueuedEvent) -> dict[str, Any]:
    return {"event_id": event.id, "event_type": event.event_type, "object_id": event.object_id}


def _error_text(error: BaseException | None) -> str:
    if error is None:
        return ""
    text = "".join(traceback.format_exception(error))
    return redact(text)[-MAX_ERROR_LENGTH:]  # redacted whole: a cut may start inside a URL


def _log_failure(
    event: QueuedEvent, attempts: int, max_attempts: int, delay: float, error: BaseException, *, dead: bool
) -> None:
    what = "kept as dead" if dead else f"retrying in {delay:g}s"
    logger.error(
        "event handler for %s failed (attempt %d of %d), %s: %s",
        _label(event), attempts, max_attempts, what, describe_error(error),
        exc_info=error, extra={**_extra(event), "attempts": attempts},
    )  # fmt: skip
