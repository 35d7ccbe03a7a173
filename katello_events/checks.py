"""System checks (IDs are stable; every one is listed in ``docs/checks.md``)."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.utils.module_loading import import_string

from katello_events.conf import DEFAULTS, get_config

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
)
_DETAIL_AUDIENCES = ("staff", "authenticated", "everyone", "nobody")
_SHAPE_HINT = "See docs/configuration.md for the shape of KATELLO_EVENTS and its HANDLERS."
_HANDLER_HINT = "BACKEND must be the dotted path of a katello_events.handlers.Handler subclass."
_BROKER_HINT = (
    "Set OPTIONS['BROKER_URL'] to stomp://user:password@host:61613 or stomp+ssl://host:61613 "
    "(several, comma-separated, for failover); see docs/candlepin.md."
)
_CANDLEPIN_HINT = "See docs/candlepin.md for every option of the Candlepin listener and its default."


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    user = getattr(settings, "KATELLO_EVENTS", {})
    if not isinstance(user, dict):
        return [Error("KATELLO_EVENTS must be a dict.", hint=_SHAPE_HINT, id="katello_events.E001")]
    messages: list[CheckMessage] = [
        Warning(
            f"Unknown KATELLO_EVENTS key {key!r}.",
            hint=f"Known keys: {', '.join(sorted(DEFAULTS))}.",
            id="katello_events.W001",
        )
        for key in sorted(set(user) - set(DEFAULTS))
    ]
    config = get_config()
    messages += _check_intervals(config)
    messages += _check_handlers(config.get("HANDLERS"))
    messages += _check_election(config)
    messages += _check_watchdog(config)
    if config.get("DETAILS_VISIBLE_TO") not in _DETAIL_AUDIENCES:
        messages.append(
            Error(
                "KATELLO_EVENTS['DETAILS_VISIBLE_TO'] is not one of " + ", ".join(_DETAIL_AUDIENCES) + ".",
                hint="Choose who sees error texts, hostnames and pids on /api/ping and /about/.",
                id="katello_events.E005",
            )
        )
    return messages


def _check_intervals(config: dict[str, Any]) -> list[CheckMessage]:
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
        messages += _check_candlepin_options(name, backend, spec.get("OPTIONS") or {})
    return messages


def _check_candlepin_options(name: str, backend: type, options: dict[str, Any]) -> list[CheckMessage]:
    """E006 (no usable BROKER_URL) and E007 (any other option) for Candlepin listener slots."""
    from katello_events.candlepin.settings import option_errors, parse_options
    from katello_events.handlers.candlepin import CandlepinHandler

    if not issubclass(backend, CandlepinHandler):
        return []
    messages: list[CheckMessage] = []
    for error in option_errors(options):  # the texts never contain a password
        if error.key == "BROKER_URL":
            messages.append(Error(f"Handler {name!r}: {error}", hint=_BROKER_HINT, id="katello_events.E006"))
        else:
            messages.append(Error(f"Handler {name!r}: {error}", hint=_CANDLEPIN_HINT, id="katello_events.E007"))
    if messages:
        return messages
    settings = parse_options(options)
    for key, path in (("SSL_CERT", settings.ssl_cert), ("SSL_KEY", settings.ssl_key), ("SSL_CA", settings.ssl_ca)):
        if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            messages.append(
                Error(
                    f"Handler {name!r}: OPTIONS[{key!r}] {path!r} is not a readable file.",
                    hint="Give the path of a PEM file the server user can read.",
                    id="katello_events.E007",
                )
            )
    return messages


def _check_election(config: dict[str, Any]) -> list[CheckMessage]:
    backend = config.get("LOCK_BACKEND")
    if backend == "file":
        return _check_lock_file(config["LOCK_FILE"])
    if backend != "postgres":
        return [
            Error(
                f"KATELLO_EVENTS['LOCK_BACKEND'] must be 'file' or 'postgres', not {backend!r}.",
                hint="'file': one runner per host; 'postgres': one runner per database, across hosts.",
                id="katello_events.E008",
            )
        ]
    messages = _check_lock_key(config.get("LOCK_KEY"))
    alias = config.get("LOCK_DATABASE")
    database = settings.DATABASES.get(alias) if isinstance(alias, str) else None
    if database is None or "postgresql" not in str(database.get("ENGINE", "")):
        messages.append(
            Error(
                f"KATELLO_EVENTS['LOCK_DATABASE'] {alias!r} is not a PostgreSQL database of DATABASES.",
                hint="With LOCK_BACKEND 'postgres', name a DATABASES alias using "
                "django.db.backends.postgresql (default: 'default').",
                id="katello_events.E009",
            )
        )
    elif database.get("DISABLE_SERVER_SIDE_CURSORS"):
        messages.append(
            Warning(
                f"The lock database {alias!r} has DISABLE_SERVER_SIDE_CURSORS set, the usual sign of a "
                "transaction-pooling proxy such as PgBouncer.",
                hint="A session-level advisory lock does not survive transaction pooling. Point "
                "LOCK_DATABASE at an alias that reaches PostgreSQL directly or through a session pool; "
                "see docs/deployment.md.",
                id="katello_events.W003",
            )
        )
    return messages


def _check_lock_key(key: Any) -> list[CheckMessage]:
    if key is None or (isinstance(key, str) and key):
        return []
    if isinstance(key, int) and not isinstance(key, bool) and -(2**63) <= key < 2**63:
        return []
    return [
        Error(
            f"KATELLO_EVENTS['LOCK_KEY'] must be None, a signed 64-bit int or a non-empty str, not {key!r}.",
            hint="Leave it None to derive the key from the lock database's name.",
            id="katello_events.E010",
        )
    ]


def _check_watchdog(config: dict[str, Any]) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    limit = config.get("MAX_RSS_MB")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        messages.append(
            Error(
                f"KATELLO_EVENTS['MAX_RSS_MB'] must be None or a positive number of megabytes, not {limit!r}.",
                hint="None turns the memory watchdog off; otherwise give the runner's RSS limit in MB.",
                id="katello_events.E011",
            )
        )
    if not isinstance(config.get("RECYCLE_ON_HANDOVER"), bool):
        messages.append(
            Error(
                "KATELLO_EVENTS['RECYCLE_ON_HANDOVER'] must be True or False.",
                hint="True asks the server to recycle the process after a memory handover.",
                id="katello_events.E012",
            )
        )
    return messages


def _check_lock_file(path: str) -> list[CheckMessage]:
    # Never open the file here: in the runner process, closing any descriptor of the lock
    # file would release the lock.
    folder = os.path.dirname(path) or "."
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing) or "."
    problem = None
    if os.path.islink(path):
        problem = "it is a symlink"
    elif os.path.exists(path) and not os.path.isfile(path):
        problem = "it is not a regular file"
    elif not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        problem = f"the folder {existing!r} is not writable"
    if problem is None:
        return []
    return [
        Error(
            f"The election lock file {path!r} cannot be used: {problem}.",
            hint="Set KATELLO_EVENTS['LOCK_FILE'] to a path in a folder the server user can write.",
            id="katello_events.E003",
        )
    ]
