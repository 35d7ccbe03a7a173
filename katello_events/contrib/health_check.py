"""A django-health-check check, for sites that already use that app (not a dependency of ours).

django-health-check 4 lists its checks in the view::

    from health_check.views import HealthCheckView

    path("ht/", HealthCheckView.as_view(checks=[
        "health_check.checks.Database",
        "katello_events.contrib.health_check.KatelloEventsHealthCheck",
    ]))

django-health-check 3 registers backends, in one of your AppConfig.ready()::

    from health_check.plugins import plugin_dir
    from katello_events.contrib.health_check import KatelloEventsHealthCheck

    plugin_dir.register(KatelloEventsHealthCheck)

The check fails (``ServiceUnavailable``) exactly when ``/api/ping`` says FAIL: a handler not
running, a stale heartbeat, a lost database or broker. WARN (a deep queue) passes, as it does
not fail the ping either. Health-check pages are usually public, so the error names the failing
services with their public messages only ("Not running", "Failing"); operators get the details
from ``/api/ping`` as staff or ``manage.py ping``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from django.db import connections
from health_check.exceptions import ServiceUnavailable

from katello_events.status.report import FAIL, collect_status, public_document


def check_katello_events() -> None:
    """Raise ``ServiceUnavailable`` naming the failing services when the status is FAIL."""
    document = public_document(collect_status())
    if document["status"] != FAIL:
        return
    failing = [f"{name}: {entry['message']}" for name, entry in document["services"].items() if entry["status"] == FAIL]
    raise ServiceUnavailable("; ".join(failing))


try:
    from health_check.base import HealthCheck
except ImportError:  # django-health-check 3
    from health_check.backends import BaseHealthCheckBackend

    class KatelloEventsHealthCheck(BaseHealthCheckBackend):
        """The katello_events handlers, as a django-health-check 3 backend."""

        critical_service = True

        def check_status(self, subset: Any = None) -> None:
            # Version 3 closes the thread's connections itself after each check.
            check_katello_events()

        def identifier(self) -> str:
            return "katello_events"

else:
    # One class per major version of django-health-check; only one of the two is ever defined.
    @dataclasses.dataclass
    class KatelloEventsHealthCheck(HealthCheck):  # type: ignore[no-redef]
        """The katello_events handlers, as a django-health-check 4 check."""

        def run(self) -> None:
            # Version 4 runs synchronous checks in an executor thread that nothing closes the
            # connections of; close ours rather than leak one per request.
            try:
                check_katello_events()
            finally:
                connection = connections["default"]
                if not connection.in_atomic_block:
                    connection.close()
