"""The one place that reads the ``KATELLO_EVENTS`` setting.

Every key has a documented default here (see also ``docs/configuration.md``). The merged
configuration is cached and the cache is dropped on Django's ``setting_changed`` signal, so
``override_settings(KATELLO_EVENTS=...)`` works in tests. Nothing reads settings at import time.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from typing import Any

from django.conf import settings

DEFAULT_HANDLERS: dict[str, dict[str, Any]] = {
    "katello_events": {
        "BACKEND": "katello_events.handlers.event_queue.EventQueueHandler",
        "OPTIONS": {},
    },
    "candlepin_events": {
        "BACKEND": "katello_events.handlers.candlepin.CandlepinHandler",
        "OPTIONS": {},
    },
}

DEFAULTS: dict[str, Any] = {
    # Start the runner's standby thread in web workers (first request, gunicorn/uWSGI hooks).
    # False for deployments whose web workers must run no threads: use `run_event_daemon` there.
    "AUTOSTART": True,
    # How the runner is elected: "file" (a lock file: one runner per host) or "postgres" (a
    # session-level advisory lock: one runner per database, across hosts).
    "LOCK_BACKEND": "file",
    # "postgres" backend: the DATABASES alias the lock connection is built from. Must reach
    # PostgreSQL directly or through a session-pooling pool, never a transaction-pooling one.
    "LOCK_DATABASE": "default",
    # "postgres" backend: the advisory lock key, an int (signed 64-bit) or a str (hashed).
    # None: derived from the lock database's NAME and a constant namespace.
    "LOCK_KEY": None,
    # Path of the election lock file ("file" backend). None: a per-database file in the runtime folder
    # ($XDG_RUNTIME_DIR or the temp folder)/katello_events/, created with mode 0700 if missing.
    "LOCK_FILE": None,
    # Seconds between a standby's non-blocking attempts to take the lock (failover time).
    "STANDBY_INTERVAL": 0.2,
    # Seconds between the runner's supervision passes and status-row heartbeats.
    "HEARTBEAT_INTERVAL": 2.0,
    # Seconds after which a status row without a heartbeat reads as "not running".
    "STALE_AFTER": 10.0,
    # Seconds a handler loop may go without calling tick() before it is reported as stalled.
    "STALL_TIMEOUT": 120.0,
    # Seconds the runner waits for handlers to finish the unit in hand when stopping.
    "STOP_TIMEOUT": 10.0,
    # Seconds before the first restart of a crashed handler; doubles per crash up to the max.
    "RESTART_BACKOFF": 1.0,
    "RESTART_BACKOFF_MAX": 60.0,
    # Seconds to wait before competing again after winning the lock but failing to start
    # (for example: the status table is not migrated yet).
    "START_RETRY_DELAY": 5.0,
    # Handler slots: name -> {"BACKEND": dotted path of a Handler subclass, "OPTIONS": {...}}.
    # Given whole: a HANDLERS setting replaces the default dict, it is not merged into it.
    "HANDLERS": DEFAULT_HANDLERS,
    # Queue depth above which a service reads WARN and queue_depth_exceeded is sent: one number
    # for every handler, or a dict of handler name -> number (key "default" for the others).
    # None: never warn.
    "QUEUE_DEPTH_WARNING": 1000,
    # Seconds the status read of /api/ping, /about/ and `ping` may take before it reports FAIL.
    "PING_TIMEOUT": 2.0,
    # Memory watchdog: megabytes of resident memory (RSS) above which the runner hands over
    # (handlers finish the unit in hand, the lock is released, a standby takes over). None: off.
    "MAX_RSS_MB": None,
    # After a handover (memory, a stalled handler), ask the server to recycle this process
    # (gunicorn: a graceful exit of the worker; run_event_daemon exits in any case). The process
    # never competes again either way.
    "RECYCLE_ON_HANDOVER": True,
    # Who sees error texts, hostnames and pids in /api/ping and on /about/:
    # "staff" (authenticated staff users), "authenticated", "everyone" or "nobody".
    "DETAILS_VISIBLE_TO": "staff",
}


@functools.cache
def get_config() -> dict[str, Any]:
    """The user's ``KATELLO_EVENTS`` dict merged over :data:`DEFAULTS` (cached)."""
    user = getattr(settings, "KATELLO_EVENTS", {}) or {}
    config = {**DEFAULTS, **user}
    config["LOCK_FILE"] = str(config["LOCK_FILE"]) if config["LOCK_FILE"] else default_lock_file()
    return config


def reset_config(**kwargs: Any) -> None:
    """Drop the cached configuration (receiver of ``setting_changed``)."""
    if kwargs.get("setting") in (None, "KATELLO_EVENTS", "DATABASES"):
        get_config.cache_clear()


def handler_specs(config: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The configured handler slots, each as ``{"BACKEND": str, "OPTIONS": dict}``."""
    specs = {}
    for name, spec in (config or get_config())["HANDLERS"].items():
        specs[name] = {"BACKEND": spec["BACKEND"], "OPTIONS": dict(spec.get("OPTIONS") or {})}
    return specs


def default_lock_file(databases: dict[str, Any] | None = None) -> str:
    """A lock file per database in the runtime folder.

    Keyed by the default database so two projects on one host elect one runner each, while
    every worker of one project (they share a database) competes for the same file.
    """
    db = (settings.DATABASES if databases is None else databases).get("default", {})
    key = "|".join(str(db.get(part, "")) for part in ("ENGINE", "HOST", "PORT", "NAME"))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return os.path.join(base, "katello_events", f"runner-{digest}.lock")


def queue_depth_threshold(name: str, config: dict[str, Any] | None = None) -> int | None:
    """The queue depth above which handler ``name`` reads WARN (``QUEUE_DEPTH_WARNING``), or None."""
    setting = (config or get_config())["QUEUE_DEPTH_WARNING"]
    return setting.get(name, setting.get("default")) if isinstance(setting, dict) else setting
