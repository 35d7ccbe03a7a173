"""Queue gauges for the status rows: ready, deferred, dead, age of the oldest ready event."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Min, Q
from django.db.models.functions import Now
from django.utils import timezone

from katello_events.models import Event


def queue_gauges(using: str | None = None) -> dict[str, Any]:
    """One aggregate query; ``queue_depth`` is what could run now (the Katello meaning)."""
    ready = Q(state=Event.PENDING, run_after__lte=Now())
    figures = Event.objects.db_manager(using).aggregate(
        queue_depth=Count("id", filter=ready),
        deferred=Count("id", filter=Q(state=Event.PENDING, run_after__gt=Now())),
        dead=Count("id", filter=Q(state=Event.DEAD)),
        oldest=Min("created_at", filter=ready),
    )
    oldest = figures.pop("oldest")
    figures["oldest_pending_age_s"] = round((timezone.now() - oldest).total_seconds(), 1) if oldest else None
    return figures
