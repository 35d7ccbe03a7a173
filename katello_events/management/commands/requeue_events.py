"""``manage.py requeue_events``: put dead events back in the queue (by id, by type, or all)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from katello_events.event_queue.maintenance import requeue_dead
from katello_events.models import Event


class Command(BaseCommand):
    help = "Move dead events back to pending, with their attempt count reset."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--id", type=int, action="append", dest="ids", default=[], help="An event id (repeatable).")
        parser.add_argument("--type", action="append", dest="types", default=[], help="An event type (repeatable).")
        parser.add_argument("--all", action="store_true", help="Every dead event.")

    def handle(self, *args: Any, **options: Any) -> None:
        events = Event.objects.all()
        if options["ids"] or options["types"]:
            if options["ids"]:
                events = events.filter(id__in=options["ids"])
            if options["types"]:
                events = events.filter(event_type__in=options["types"])
        elif not options["all"]:
            raise CommandError("say which dead events to requeue: --id N, --type TYPE, or --all")
        count = requeue_dead(events)
        self.stdout.write(f"{count} dead event(s) requeued")
