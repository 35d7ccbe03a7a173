"""System checks (IDs are stable; every one is listed in ``docs/checks.md``).

One registered check; each component checks its own settings (``checks/election.py``,
``checks/candlepin_options.py``, ``checks/status.py``, ``checks/error_reports.py``) and this
module puts them together, with the PostgreSQL driver check (E014).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.utils.module_loading import import_string

from katello_events import pgdriver
from katello_events.checks.candlepin_options import check_candlepin_options
from katello_events.checks.election import check_election, check_watchdog
from katello_events.checks.error_reports import check_reporter_filter
from katello_events.checks.status import check_status_settings
from katello_events.conf import KEYS, get_config, unknown_key_message
from katello_events.links import docs_url

#: Positive numbers, in seconds.
_INTERVALS = (
    "STANDBY_INTERVAL",
    "HEARTBEAT_INTERVAL",
    "STALE_AFTER",
    "STALL_TIMEOUT",
    "STOP_TIMEOUT",
    "RESTART_BACKOFF",
    "RESTART_BACKOFF_MAX",
    "START_RETRY_DELAY",
    "PING_TIMEOUT",
)
_DETAIL_AUDIENCES = ("staff", "authenticated", "everyone", "nobody")
_SHAPE_HINT = f"The shape of KATELLO_EVENTS and its HANDLERS: {docs_url('configuration')}"
_HANDLER_HINT = "BACKEND must be the dotted path of a katello_events.handlers.Handler subclass."


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    user = getattr(settings, "KATELLO_EVENTS", {})
    if not isinstance(user, dict):
        return [Error("KATELLO_EVENTS must be a dict.", hint=_SHAPE_HINT, id="katello_events.E001")]
    unknown = sorted(set(user) - set(KEYS))
    if unknown:
        # get_config() refuses such a setting, so nothing else can be checked before it is fixed.
        hint = "Correct or remove it: every process that reads KATELLO_EVENTS refuses to start with it."
        return [Error(unknown_key_message(key), hint=hint, id="katello_events.E015") for key in unknown]
    messages: list[CheckMessage] = []
    config = get_config()
    messages += _check_intervals(config)
    messages += _check_handlers(config.get("HANDLERS"))
    messages += check_election(config)
    messages += check_watchdog(config)
    messages += check_status_settings(config)
    messages += check_driver()
    messages += _check_audiences(config)
    messages += check_reporter_filter(config)
    return messages


#: Settings naming an audience: (key, what it decides, check id).
_AUDIENCE_SETTINGS = (
    ("DETAILS_VISIBLE_TO", "Choose who sees error texts, hostnames and pids on /api/ping and /about/.", "E005"),
    ("METRICS_VISIBLE_TO", "Choose who may read /metrics; 'nobody' turns it off.", "E016"),
)


def _check_audiences(config: Mapping[str, Any]) -> list[CheckMessage]:
    return [
        Error(
            f"KATELLO_EVENTS[{key!r}] is not one of " + ", ".join(_DETAIL_AUDIENCES) + ".",
            hint=hint,
            id=f"katello_events.{check_id}",
        )
        for key, hint, check_id in _AUDIENCE_SETTINGS
        if config.get(key) not in _DETAIL_AUDIENCES
    ]


def _check_intervals(config: Mapping[str, Any]) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for key in _INTERVALS:
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            messages.append(
                Error(
                    f"KATELLO_EVENTS[{key!r}] must be a positive number of seconds, not {value!r}.",
                    hint="Intervals are seconds, as int or float, greater than zero.",
                    id="katello_events.E004",
                )
            )
    if messages:
        return messages
    if config["STALE_AFTER"] < 3 * config["HEARTBEAT_INTERVAL"]:
        messages.append(
            Warning(
                "KATELLO_EVENTS['STALE_AFTER'] is less than three heartbeat intervals.",
                hint="A busy database or a slow heartbeat would then make a healthy runner read as "
                "'not running'. Use at least 3 x HEARTBEAT_INTERVAL.",
                id="katello_events.W002",
            )
        )
    return messages


def check_driver(databases: dict[str, Any] | None = None) -> list[CheckMessage]:
    """E014: a PostgreSQL database without psycopg 3 or psycopg2 (installs force neither driver)."""
    if pgdriver.name() is not None:
        return []
    aliases = [
        alias
        for alias, database in (settings.DATABASES if databases is None else databases).items()
        if any(engine in str(database.get("ENGINE", "")) for engine in ("postgresql", "postgis"))
    ]
    if not aliases:
        return []
    return [
        Error(
            f"No PostgreSQL driver is installed, yet these DATABASES use PostgreSQL: {', '.join(map(repr, aliases))}.",
            hint='Install one: pip install "katello_events[psycopg]" (psycopg 3, recommended) or '
            'pip install "katello_events[psycopg2]".',
            id="katello_events.E014",
        )
    ]


def _check_handlers(handlers: Any) -> list[CheckMessage]:
    from katello_events.handlers.base import Handler

    def well_formed(spec: Any) -> bool:
        return (
            isinstance(spec, dict)
            and isinstance(spec.get("BACKEND"), str)
            and isinstance(spec.get("OPTIONS", {}), dict)
        )

    if not isinstance(handlers, dict) or not all(well_formed(spec) for spec in handlers.values()):
        return [
            Error(
                "KATELLO_EVENTS['HANDLERS'] must map names to {'BACKEND': 'dotted.path', 'OPTIONS': {...}}.",
                hint=_SHAPE_HINT,
                id="katello_events.E001",
            )
        ]
    messages: list[CheckMessage] = []
    for name, spec in handlers.items():
        try:
            backend = import_string(spec["BACKEND"])
        except ImportError as exc:
            messages.append(
                Error(
                    f"Handler {name!r}: cannot import {spec['BACKEND']!r}: {exc}",
                    hint=_HANDLER_HINT,
                    id="katello_events.E002",
                )
            )
            continue
        if not (isinstance(backend, type) and issubclass(backend, Handler)):
            messages.append(
                Error(
                    f"Handler {name!r}: {spec['BACKEND']!r} is not a katello_events.handlers.Handler subclass.",
                    hint=_HANDLER_HINT,
                    id="katello_events.E002",
                )
            )
            continue
        messages += _check_options(name, backend, spec.get("OPTIONS") or {})
    return messages


def _check_options(name: str, backend: type[Any], options: dict[str, Any]) -> list[CheckMessage]:
    """E006/E007 for the Candlepin listener (an unknown key is E007 there); E017 for an unknown
    key of any other handler whose ``option_names()`` are known (the event queue's)."""
    from katello_events.handlers.base import unknown_options
    from katello_events.handlers.candlepin import CandlepinHandler

    if issubclass(backend, CandlepinHandler):
        return check_candlepin_options(name, backend, options)
    return [
        Error(
            f"{text}.",
            hint="Correct or remove it: the handler refuses to start with it (a crash loop). " + _SHAPE_HINT,
            id="katello_events.E017",
        )
        for text in unknown_options(name, backend, options)
    ]
