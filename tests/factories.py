"""Rows for tests of the status surfaces."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from katello_events.models import HandlerStatus


def make_row(name: str, *, age: float = 0.5, **fields) -> HandlerStatus:
    """A status row of a healthy runner whose last heartbeat was ``age`` seconds ago."""
    defaults = dict(
        running=True,
        hostname="host-a",
        pid=4242,
        since=timezone.now() - timedelta(hours=1),
        heartbeat_at=timezone.now() - timedelta(seconds=age),
        processed_count=12,
        failed_count=1,
    )
    return HandlerStatus.objects.create(name=name, **{**defaults, **fields})
