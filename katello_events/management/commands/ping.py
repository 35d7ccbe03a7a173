"""``manage.py ping [--json]``: the status of every handler, like ``hammer ping``.

Reads the shared status rows, so it works from any shell on any host with database access.
Exit status 1 when any service is FAIL.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand

from katello_events.status.report import FAIL, collect_status


class Command(BaseCommand):
    help = "Print the status of the katello_events handlers; exit 1 when any is FAIL."
    requires_system_checks = ()

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", action="store_true", help="Print the full status document as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        document = collect_status()
        if options["json"]:
            self.stdout.write(json.dumps(document, indent=2, sort_keys=True))
        else:
            self._print_text(document)
        if document["status"] == FAIL:
            sys.exit(1)

    def _print_text(self, document: dict[str, Any]) -> None:
        self.stdout.write("katello_events:")
        for name, service in document["services"].items():
            self.stdout.write(f"    {name}:")
            self.stdout.write(f"        Status:          {service['status']}")
            self.stdout.write(f"        message:         {service['message']}")
            self.stdout.write(f"        Server Response: Duration: {service['duration_ms']}ms")
