"""``manage.py prune_events``: delete dead events that have been dead for a while."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from katello_events.models import Event


class Command(BaseCommand):
    help = "Delete dead events last updated more than --older-than days ago (pending events are never touched)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--older-than", type=float, default=30.0, metavar="DAYS", help="Default: 30 days.")

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["older_than"]
        if days < 0:
            raise CommandError("--older-than must be zero or more days")
        cutoff = timezone.now() - timedelta(days=days)
        count, _ = Event.objects.filter(state=Event.DEAD, updated_at__lt=cutoff).delete()
        self.stdout.write(f"{count} dead event(s) older than {days:g} day(s) deleted")
