"""The consumer side of the event queue: claim a batch, coalesce, handle, delete, retry.

One batch is one transaction: ``SELECT ... FOR UPDATE SKIP LOCKED`` claims the rows, the
handlers run, the rows are deleted, and the commit makes all of it true at once. So:

- a runner killed mid-batch changes nothing: PostgreSQL rolls back, the rows are unlocked and
  the next runner takes them at once (and handlers' own database writes roll back with them);
- nothing is ever marked "in progress", so nothing can be stuck there;
- when one handler of a batch raises, the batch is rolled back and its groups are run again
  one by one, each in a transaction of its own, so one failure costs the others nothing.

Handler errors never escape :meth:`BatchConsumer.process_batch`; database errors (an outage)
do, with every claimed row left as it was.
"""

from __future__ import annotations

import functools
import json
import operator
import traceback
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.db import connections, router, transaction
from django.db.models import Q, Value
from django.db.models.functions import Now

from katello_events.event_queue.batch import Group, RetryPolicy, group_rows
from katello_events.event_queue.types import QueuedEvent, RetryLater
from katello_events.handlers.base import HandlerStats, describe_error
from katello_events.models import Event
from katello_events.redaction import get_logger, redact
from katello_events.registry import HandlerRegistry, event_handlers

logger = get_logger(__name__)

#: At most this many full batches go by without a twin sweep (see BatchConsumer._sweep_due).
MAX_SWEEP_INTERVAL = 32

#: Longest traceback text kept on a failed event (characters).
MAX_ERROR_LENGTH = 4000

_COLUMNS = ("id", "event_type", "object_id", "metadata", "attempts", "created_at")

_TAKE_SQL = """
DELETE FROM katello_events_event WHERE id = ANY(ARRAY(
    SELECT id FROM katello_events_event
    WHERE state = 'pending' AND run_after <= statement_timestamp()
    ORDER BY id LIMIT %s
    FOR UPDATE SKIP LOCKED))
RETURNING id, event_type, object_id, metadata, attempts, created_at
"""

# One index probe per pair; the ORM would compile a 100-branch OR for every batch.
_TAKE_TWINS_SQL = """
DELETE FROM katello_events_event WHERE id = ANY(ARRAY(
    SELECT e.id FROM katello_events_event e
    JOIN unnest(%s::varchar[], %s::varchar[]) AS pair(event_type, object_id)
      ON e.event_type = pair.event_type AND e.object_id = pair.object_id
    WHERE e.state = 'pending'
    FOR UPDATE OF e SKIP LOCKED))
RETURNING id, event_type, object_id, metadata, attempts, created_at
"""


class _BatchFailed(Exception):
    """A handler raised during the fast path: roll the batch back and go one by one."""


class BatchConsumer:
    """Handles the queue one batch per :meth:`process_batch` call, in the calling thread."""

    def __init__(
        self,
        stats: HandlerStats,
        *,
        batch_size: int = 100,
        retry: RetryPolicy | None = None,
        registry: HandlerRegistry = event_handlers,
    ) -> None:
        self.stats = stats
        self.batch_size = batch_size
        self.retry = retry or RetryPolicy()
        self.registry = registry
        self._sweep_interval = 1  # full batches per twin sweep (adaptive, see _sweep_due)
        self._sweeps_to_skip = 0

    def process_batch(self) -> int:
        """Handle one batch; the number of (type, object) groups it held (0: queue empty)."""
        groups: list[Group] = []
        try:
            with transaction.atomic():
                groups = group_rows(self._take())
                if not groups:
                    return 0
                self.stats.set_gauge("in_progress", sum(len(g.rows) for g in groups))
                for group in groups:
                    self._run_in_batch(group)
                self._delete_taken(groups)
            failed = False
        except _BatchFailed:
            failed = True  # rolled back: every group of the batch is pending again, untouched
        finally:
            self.stats.set_gauge("in_progress", 0)
        if failed:
            # Outside the except block, so failures logged now do not chain to _BatchFailed.
            self._one_by_one(groups)
        else:
            for group in groups:
                self._count(group, "processed")
        return len(groups)

    # -- taking a batch ------------------------------------------------------------------------

    def _take(self) -> list[tuple]:
        """Claim a batch (and, from a deep queue, the twins of its pairs beyond it).

        On PostgreSQL the rows are deleted as they are claimed (``DELETE ... RETURNING``): in
        this transaction that is the same as deleting them after their handlers, and it saves
        a round trip per batch; a rollback puts them all back.
        """
        connection = connections[router.db_for_write(Event)]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(_TAKE_SQL, [self.batch_size])
                rows = cursor.fetchall()
                if self._sweep_due(rows):
                    pairs = sorted({(row[1], row[2]) for row in rows})
                    cursor.execute(_TAKE_TWINS_SQL, [[t for t, _ in pairs], [o for _, o in pairs]])
                    rows += self._swept(cursor.fetchall(), full_batch=len(rows) == self.batch_size)
            return [(*row[:3], _decode_json(row[3]), *row[4:]) for row in rows]
        runnable = Event.objects.select_for_update(skip_locked=True).filter(state=Event.PENDING, run_after__lte=Now())
        rows = list(runnable.order_by("id").values_list(*_COLUMNS)[: self.batch_size])
        if self._sweep_due(rows):
            pairs = {(row[1], row[2]) for row in rows}
            same_pair = functools.reduce(operator.or_, (Q(event_type=t, object_id=o) for t, o in pairs))
            claimed = [row[0] for row in rows]
            pending = Event.objects.select_for_update(skip_locked=True).filter(state=Event.PENDING)
            twins = pending.filter(same_pair).exclude(id__in=claimed).order_by("id").values_list(*_COLUMNS)
            rows += self._swept(list(twins), full_batch=len(rows) == self.batch_size)
        return rows

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
        if connections[router.db_for_write(Event)].vendor != "postgresql":  # deleted when taken there
            Event.objects.filter(id__in=[i for g in groups for i in g.ids]).delete()

    # -- the fast path: the whole batch in one transaction ---------------------------------

    def _run_in_batch(self, group: Group) -> None:
        function = self.registry.get(group.event_type)
        if function is None:
            raise _BatchFailed(f"no handler for {group.event_type!r}")  # settled as dead one by one
        try:
            function(group.event())
        except Exception as exc:
            raise _BatchFailed from exc

    # -- the slow path: one group per transaction --------------------------------------------

    def _one_by_one(self, groups: Iterable[Group]) -> None:
        for group in groups:
            outcome = self._run_alone(group)
            if outcome:
                self._count(group, outcome)

    def _run_alone(self, group: Group) -> str | None:
        with transaction.atomic():
            locked = set(
                Event.objects.select_for_update(skip_locked=True)
                .filter(id__in=group.ids, state=Event.PENDING)
                .values_list("id", flat=True)
            )
            group.rows = [row for row in group.rows if row[0] in locked]
            if not group.rows:
                return None
            function = self.registry.get(group.event_type)
            if function is None:
                return self._settle(group, "unknown")
            try:
                with transaction.atomic():  # a savepoint: the handler's own writes
                    function(group.event())
            except RetryLater as retry:
                return self._settle(group, "retry_later", delay=retry.seconds)
            except Exception as exc:
                return self._settle(group, "failed", error=exc)
            Event.objects.filter(id__in=group.ids).delete()
            return "processed"

    def _settle(self, group: Group, outcome: str, *, delay: float = 0.0, error: BaseException | None = None) -> str:
        """Fold the group into its newest row and reschedule it, or keep it as dead."""
        event = group.event()
        attempts = event.attempts
        fields: dict[str, Any] = {"updated_at": Now()}
        if outcome == "unknown":
            attempts += 1
            outcome = "dead"
            fields.update(state=Event.DEAD, last_error=f"no handler is registered for event type {event.event_type!r}")
            logger.error("event %s dropped to dead: %s", _label(event), fields["last_error"], extra=_extra(event))
        elif outcome == "failed":
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
        Event.objects.filter(id=event.id).update(attempts=attempts, **fields)
        Event.objects.filter(id__in=[i for i in group.ids if i != event.id]).delete()
        return outcome

    # -- counting ----------------------------------------------------------------------------

    def _count(self, group: Group, outcome: str) -> None:
        if outcome == "processed":
            self.stats.increment("processed")
            if len(group.rows) > 1:
                self.stats.increment("coalesced", len(group.rows) - 1)
        elif outcome == "retry_later":
            self.stats.increment("retried_later")
        else:  # failed, dead, unknown
            self.stats.increment("failed")
            if outcome in ("dead", "unknown"):
                self.stats.increment("dead")


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
    return redact(text[-MAX_ERROR_LENGTH:])


def _log_failure(event: QueuedEvent, attempts: int, max_attempts: int, delay: float, error, *, dead: bool) -> None:
    what = "kept as dead" if dead else f"retrying in {delay:g}s"
    logger.error(
        "event handler for %s failed (attempt %d of %d), %s: %s",
        _label(event), attempts, max_attempts, what, describe_error(error),
        exc_info=error, extra={**_extra(event), "attempts": attempts},
    )  # fmt: skip
