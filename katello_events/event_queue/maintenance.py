"""Operator actions on the queue, shared by ``manage.py requeue_events`` and the Django admin, and
the bounds the runner keeps on dead events."""

from __future__ import annotations

from datetime import timedelta

from django.db import router, transaction
from django.db.models import QuerySet, Value
from django.db.models.functions import Now

from katello_events.event_queue.push import notify_consumer
from katello_events.models import Event


def requeue_dead(events: QuerySet[Event] | None = None) -> int:
    """Move the dead events among ``events`` (default: every event) back to pending; how many moved.

    Attempts are reset and ``run_after`` is now, so the consumer takes them at once; it is woken
    (PostgreSQL NOTIFY) when the update commits. Events that are not dead are left alone, so a
    selection mixing pending and dead events is safe to pass.
    """
    alias = router.db_for_write(Event)
    dead = (Event.objects.all() if events is None else events).using(alias).filter(state=Event.DEAD)
    with transaction.atomic(using=alias):
        count = dead.update(state=Event.PENDING, attempts=0, run_after=Now(), updated_at=Now())
        if count:
            notify_consumer(alias)  # delivered once the rows are visible
    return count


def prune_dead(limit: int | None, retention: float | None, using: str | None = None) -> int:
    """Delete dead events older than ``retention`` seconds, then the oldest beyond ``limit``;
    how many went. Pending events are never touched."""
    alias = using or router.db_for_write(Event)
    dead = Event.objects.db_manager(alias).filter(state=Event.DEAD)
    pruned = 0
    if retention is not None:
        pruned += dead.filter(updated_at__lt=Now() - Value(timedelta(seconds=retention))).delete()[0]
    if limit is not None:
        excess = dead.count() - limit
        if excess > 0:
            oldest = list(dead.order_by("updated_at", "id").values_list("id", flat=True)[:excess])
            pruned += dead.filter(id__in=oldest).delete()[0]
    return pruned
