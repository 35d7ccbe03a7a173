"""Keeping task results: pruning finished ones after their backend's ``RESULT_RETENTION``, making
READY results whose event the queue gave up on (dead) FAILED, and retrying failed ones (the
admin's action). Needs no Tasks framework."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from django.db import DatabaseError, transaction
from django.db.models import CharField, Exists, OuterRef, QuerySet
from django.db.models.functions import Cast
from django.utils import timezone

from katello_events.errors import describe_error
from katello_events.event_queue.push import push_many
from katello_events.fencing import queue_alias
from katello_events.log import get_logger
from katello_events.models import Event, TaskResultRecord
from katello_events.tasks.execute import MAX_ERRORS, TASK_EVENT, TaskDied, parse_id
from katello_events.tasks.policy import options_of, our_aliases

logger = get_logger(__name__)

#: Seconds between prune passes of one runner process (made while tasks run).
PRUNE_INTERVAL = 60.0
#: Rows one pass deletes or settles at most (the rest wait for the next pass).
PRUNE_LIMIT = 1000

_lock = threading.Lock()
_last_prune = 0.0


def prune_if_due(alias: str) -> None:
    """A prune pass, at most once per ``PRUNE_INTERVAL`` in this process, inside the caller's
    transaction (a savepoint: a database error here costs the caller nothing)."""
    global _last_prune  # one timestamp per process, guarded by _lock
    now = time.monotonic()
    if now - _last_prune < PRUNE_INTERVAL or not _lock.acquire(blocking=False):
        return
    try:
        _last_prune = now
        with transaction.atomic(using=alias):
            pruned = prune_results(alias)
            settled = fail_dead(alias)
        if pruned or settled:
            logger.info("task results: %d pruned, %d made FAILED after their event died", pruned, settled)
    except DatabaseError as exc:
        logger.warning("could not prune task results: %s", describe_error(exc))
    finally:
        _lock.release()


def prune_results(alias: str | None = None) -> int:
    """Delete finished results older than their backend's ``RESULT_RETENTION``; how many."""
    alias = alias or queue_alias()
    results = TaskResultRecord.objects.using(alias).exclude(status=TaskResultRecord.READY)
    pruned = 0
    aliases = list(our_aliases())
    for backend in aliases:
        cutoff = timezone.now() - timedelta(seconds=options_of(backend).result_retention)
        pruned += _delete(results.filter(backend=backend, finished_at__lt=cutoff))
    # Results of a backend no longer configured: the default retention.
    cutoff = timezone.now() - timedelta(seconds=options_of("").result_retention)
    pruned += _delete(results.exclude(backend__in=aliases).filter(finished_at__lt=cutoff))
    return pruned


def _delete(results: QuerySet[TaskResultRecord]) -> int:
    ids = list(results.values_list("pk", flat=True)[:PRUNE_LIMIT])
    return results.filter(pk__in=ids).delete()[0] if ids else 0


def fail_dead(alias: str | None = None) -> int:
    """READY results whose task event is dead (and none pending) become FAILED, with the event's
    last error; the dead events go (the result holds their story now). How many."""
    alias = alias or queue_alias()
    events = Event.objects.using(alias).filter(event_type=TASK_EVENT)
    dead = list(events.filter(state=Event.DEAD).values_list("id", "object_id", "last_error")[:PRUNE_LIMIT])
    if not dead:
        return 0
    with transaction.atomic(using=alias):
        return _settle_dead(alias, events, dead)


def _settle_dead(alias: str, events: QuerySet[Event], dead: list[tuple[int, str, str]]) -> int:
    errors = {object_id: last_error for _, object_id, last_error in dead}
    pending = events.filter(state=Event.PENDING, object_id=Cast(OuterRef("pk"), output_field=CharField()))
    ids = [key for key in map(parse_id, errors) if key is not None]
    results = TaskResultRecord.objects.using(alias).filter(pk__in=ids, status=TaskResultRecord.READY)
    records = results.select_for_update(skip_locked=True).exclude(Exists(pending))
    now = timezone.now()
    settled = []
    for record in records:
        error = {"exception_class_path": f"{TaskDied.__module__}.{TaskDied.__qualname__}",
                 "traceback": errors[str(record.pk)] or "the event queue gave up on it"}  # fmt: skip
        record.errors = [*record.errors, error][-MAX_ERRORS:]
        record.status = TaskResultRecord.FAILED
        record.finished_at = now
        settled.append(record)
    TaskResultRecord.objects.using(alias).bulk_update(settled, ["errors", "status", "finished_at"])
    # Kept: the dead events of results still READY (locked now, or run again meanwhile).
    kept = {str(pk) for pk in results.values_list("pk", flat=True)}
    events.filter(id__in=[event_id for event_id, object_id, _ in dead if object_id not in kept]).delete()
    return len(settled)


def retry_failed(results: QuerySet[TaskResultRecord]) -> int:
    """Run the FAILED results among ``results`` again (READY, failures forgotten, errors kept);
    how many. Their dead events, if any, go; a new event each runs them once committed."""
    alias = queue_alias()
    with transaction.atomic(using=alias):
        ids = [
            str(pk)
            for pk in results.using(alias)
            .select_for_update()
            .filter(status=TaskResultRecord.FAILED)
            .values_list("pk", flat=True)
        ]
        dead = Event.objects.using(alias).filter(event_type=TASK_EVENT, state=Event.DEAD, object_id__in=ids)
        dead.delete()
        TaskResultRecord.objects.using(alias).filter(pk__in=ids).update(
            status=TaskResultRecord.READY, finished_at=None, failed_attempts=0, return_value=None
        )
        push_many(TASK_EVENT, [(pk, None) for pk in ids])
    return len(ids)
