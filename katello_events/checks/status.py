"""System checks of the status settings: queue-depth thresholds, the FAIL answer's HTTP status,
and SQLite for several workers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning


def check_status_settings(config: Mapping[str, Any], databases: dict[str, Any] | None = None) -> list[CheckMessage]:
    databases = settings.DATABASES if databases is None else databases
    return (
        _check_thresholds(config.get("QUEUE_DEPTH_WARNING"))
        + _check_fail_status(config.get("PING_FAIL_STATUS", 503))
        + _check_sqlite(config, databases)
    )


def _check_fail_status(value: Any) -> list[CheckMessage]:
    if value == 200 or (isinstance(value, int) and not isinstance(value, bool) and 500 <= value <= 599):
        return []
    return [
        Error(
            f"KATELLO_EVENTS['PING_FAIL_STATUS'] must be 200 or a 5xx status, not {value!r}.",
            hint="503 (the default) for load balancers and uptime checks; 200 for clients that read "
            "Katello's ping, which answered FAIL with HTTP 200.",
            id="katello_events.E018",
        )
    ]


def _check_thresholds(setting: Any) -> list[CheckMessage]:
    values = setting.values() if isinstance(setting, dict) else [setting]
    if all(value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0) for value in values):
        return []
    return [
        Error(
            f"KATELLO_EVENTS['QUEUE_DEPTH_WARNING'] must be None, a positive int, or a dict of handler name "
            f"to one, not {setting!r}.",
            hint="For example 1000, or {'katello_events': 5000, 'default': 1000}; None never warns.",
            id="katello_events.E013",
        )
    ]


def _check_sqlite(config: Mapping[str, Any], databases: dict[str, Any]) -> list[CheckMessage]:
    engine = databases.get("default", {}).get("ENGINE", "")
    if "sqlite" not in engine or not config.get("AUTOSTART"):
        return []
    return [
        Warning(
            "The default database is SQLite: with several web workers, the runner's writes and the "
            "workers' requests wait on each other ('database is locked'), and the event queue can only poll.",
            hint="Use PostgreSQL when serving with several workers; SQLite suits development with one process.",
            id="katello_events.W004",
        )
    ]
