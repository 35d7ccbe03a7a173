"""``manage.py ping [--json] [--services NAME ...]``: the status of the handlers, in ``hammer ping``'s layout.

Reads the shared status rows, so it works from any shell on any host with database access.
Exit status 1 when any service is FAIL.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from katello_events.status.report import FAIL, UnknownServices, collect_status, select_services


class Command(BaseCommand):
    help = "Print the status of the katello_events handlers; exit 1 when any is FAIL."
    requires_system_checks = ()

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", action="store_true", help="Print the full status document as JSON.")
        parser.add_argument(
            "--services",
            nargs="+",
            metavar="SERVICE",
            help="Only these services (names separated by spaces or commas); an unknown one exits 2.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        requested = [name.strip() for item in options["services"] or [] for name in item.split(",") if name.strip()]
        try:
            services = select_services(requested)
        except UnknownServices as exc:
            raise CommandError(str(exc), returncode=2) from None
        document = collect_status(services)
        if options["json"]:
            self.stdout.write(json.dumps(document, indent=2, sort_keys=True))
        else:
            self.stdout.write(hammer_layout(document))
        if document["status"] == FAIL:
            sys.exit(1)


def hammer_layout(document: dict[str, Any]) -> str:
    """The services as ``hammer ping`` prints them: each name at column 0, its fields at 4, the
    field labels padded to one width (``Status:          ok``)."""
    lines = []
    for name, service in document["services"].items():
        lines += [
            f"{name}:",
            f"    Status:          {service['status']}",
            f"    message:         {service['message']}",
            f"    Server Response: Duration: {service['duration_ms']}ms",
        ]
    return "\n".join(lines)
