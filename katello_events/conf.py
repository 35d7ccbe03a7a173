"""The one place that reads the ``KATELLO_EVENTS`` setting.

Every key has a type and a documented default here, in :class:`Config` (see also
``docs/configuration.md``). The merged configuration is cached and the cache is dropped on
Django's ``setting_changed`` signal, so ``override_settings(KATELLO_EVENTS=...)`` works in tests.
Nothing reads settings at import time.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import os
import tempfile
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

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


@dataclass(frozen=True)
class Config(Mapping[str, Any]):
    """``KATELLO_EVENTS`` merged over its defaults: one typed, read-only value per process.

    Built once by :func:`get_config`; an unknown key fails there, at start-up, with a "did you
    mean" suggestion. Read it as attributes (``config.STOP_TIMEOUT``); it is also a read-only
    mapping (``config["STOP_TIMEOUT"]``, ``{**config}``) for code written against the plain dict
    of earlier versions. ``dataclasses.replace(config, STOP_TIMEOUT=2.0)`` makes a variant.
    """

    # Start the runner's standby thread in web workers (first request, gunicorn/uWSGI hooks).
    # False for deployments whose web workers must run no threads: use `run_event_daemon` there.
    AUTOSTART: bool = True
    # How the runner is elected: "file" (a lock file: one runner per host) or "postgres" (a
    # session-level advisory lock: one runner per database, across hosts).
    LOCK_BACKEND: str = "file"
    # "postgres" backend: the DATABASES alias the lock connection is built from. Must reach
    # PostgreSQL directly or through a session-pooling pool, never a transaction-pooling one.
    LOCK_DATABASE: str = "default"
    # "postgres" backend: the advisory lock key, an int (signed 64-bit) or a str (hashed).
    # None: derived from the lock database's NAME and a constant namespace.
    LOCK_KEY: int | str | None = None
    # Path of the election lock file ("file" backend). None: a per-database file in the runtime folder
    # ($XDG_RUNTIME_DIR or the temp folder)/katello_events/, created with mode 0700 if missing.
    LOCK_FILE: str = ""  # "" in the dataclass: get_config() puts the default path in
    # Seconds between a standby's non-blocking attempts to take the lock (failover time).
    STANDBY_INTERVAL: float = 0.2
    # Seconds between the runner's supervision passes and status-row heartbeats.
    HEARTBEAT_INTERVAL: float = 2.0
    # Seconds after which a status row without a heartbeat reads as "not running".
    STALE_AFTER: float = 10.0
    # Seconds a handler loop may go without calling tick() before it is reported as stalled.
    STALL_TIMEOUT: float = 120.0
    # Seconds the runner waits for handlers to finish the unit in hand when stopping.
    STOP_TIMEOUT: float = 10.0
    # Seconds before the first restart of a crashed handler; doubles per crash up to the max.
    RESTART_BACKOFF: float = 1.0
    RESTART_BACKOFF_MAX: float = 60.0
    # Seconds to wait before competing again after winning the lock but failing to start
    # (for example: the status table is not migrated yet).
    START_RETRY_DELAY: float = 5.0
    # Handler slots: name -> {"BACKEND": dotted path of a Handler subclass, "OPTIONS": {...}}.
    # Given whole: a HANDLERS setting replaces the default dict, it is not merged into it.
    HANDLERS: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: copy.deepcopy(DEFAULT_HANDLERS))
    # Queue depth above which a service reads WARN and queue_depth_exceeded is sent: one number
    # for every handler, or a dict of handler name -> number (key "default" for the others).
    # None: never warn.
    QUEUE_DEPTH_WARNING: int | Mapping[str, int | None] | None = 1000
    # Seconds the status read of /api/ping, /about/ and `ping` may take before it reports FAIL.
    PING_TIMEOUT: float = 2.0
    # HTTP status of /api/ping and /about/ when a service is FAIL: 503 (load balancers and uptime
    # checks read it without parsing the body) or 200 (Katello's own ping, for clients that
    # treat any 5xx as the server being down). E018.
    PING_FAIL_STATUS: int = 503
    # Memory watchdog: megabytes of resident memory (RSS) above which the runner hands over
    # (handlers finish the unit in hand, the lock is released, a standby takes over). None: off.
    MAX_RSS_MB: float | None = None
    # After a handover (memory, a stalled handler), ask the server to recycle this process
    # (gunicorn: a graceful exit of the worker; run_event_daemon exits in any case). The process
    # never competes again either way.
    RECYCLE_ON_HANDOVER: bool = True
    # Who sees error texts, hostnames and pids in /api/ping and on /about/:
    # "staff" (authenticated staff users), "authenticated", "everyone" or "nobody".
    DETAILS_VISIBLE_TO: str = "staff"
    # Largest metadata push_event accepts, in bytes of its JSON (a ValueError above it, before
    # anything is written): one event is not a place for bulk data.
    MAX_METADATA_BYTES: int = 1024 * 1024
    # Dead events kept at most (the oldest dead are pruned first by the runner; None: no limit),
    # and seconds a dead event is kept (None: for ever). A flood of bad input cannot fill the disk.
    DEAD_EVENT_LIMIT: int | None = 10_000
    DEAD_EVENT_RETENTION: float | None = 30 * 24 * 3600.0
    # Who may read /metrics at all: "everyone" (Prometheus scrapes anonymously), "staff",
    # "authenticated", or "nobody" (the URL answers 404: turned off).
    METRICS_VISIBLE_TO: str = "everyone"
    # Serve the runner_info metric (hostname and pid) to every reader /metrics admits, not only
    # to those DETAILS_VISIBLE_TO names: for a Prometheus that scrapes anonymously.
    METRICS_INCLUDE_RUNNER: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Config:
        """A config from ``values`` (a partial ``KATELLO_EVENTS``, or a whole one from an older
        version's dict); raises ImproperlyConfigured on an unknown key."""
        unknown = sorted(set(values) - set(KEYS))
        if unknown:
            raise ImproperlyConfigured("; ".join(unknown_key_message(key) for key in unknown))
        return cls(**values)

    def __getitem__(self, key: str) -> Any:
        if key not in KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(KEYS)

    def __len__(self) -> int:
        return len(KEYS)


#: The keys of KATELLO_EVENTS, in the order of the dataclass.
KEYS: tuple[str, ...] = tuple(f.name for f in fields(Config))
#: Every key's default (``LOCK_FILE``: None, meaning the per-database default path).
DEFAULTS: dict[str, Any] = {**{key: getattr(Config(), key) for key in KEYS}, "LOCK_FILE": None}


def unknown_key_message(key: str) -> str:
    """``Unknown KATELLO_EVENTS key 'HEARTBEAT' (did you mean 'HEARTBEAT_INTERVAL'?)``."""
    return f"Unknown KATELLO_EVENTS key {key!r}{did_you_mean(key, KEYS, 'keys')}"


def did_you_mean(key: str, known: Collection[str], what: str = "keys") -> str:
    """`` (did you mean 'BATCH_SIZE'?)`` for the closest of ``known``, else `` (known keys: ...)``."""
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (known {what}: {', '.join(known)})"


def unknown_option_message(handler: str, key: str, known: Collection[str]) -> str:
    """``Handler 'katello_events': unknown OPTIONS key 'BATCHSIZE' (did you mean 'BATCH_SIZE'?)``."""
    return f"Handler {handler!r}: unknown OPTIONS key {key!r}{did_you_mean(key, known, 'options')}"


def config_error() -> str | None:
    """Why :func:`get_config` refuses the setting (an unknown key, not a dict), or None.

    For the surfaces that must answer even then (``/api/ping``, ``/about/``, ``manage.py ping``,
    ``/metrics``) and for the one error line logged at start-up (``apps.py``).
    """
    try:
        get_config()
    except ImproperlyConfigured as exc:
        return str(exc)
    return None


def setting(key: str) -> Any:
    """``get_config()[key]``; when the setting is refused (see :func:`config_error`), the user's own
    value of ``key`` if it has one, else its default: who may read the status is still decided
    by ``DETAILS_VISIBLE_TO`` while a misspelt key beside it stops the handlers."""
    try:
        return get_config()[key]
    except ImproperlyConfigured:
        user = getattr(settings, "KATELLO_EVENTS", None)
        return user[key] if isinstance(user, Mapping) and key in user else DEFAULTS[key]


def handler_names() -> list[str]:
    """The configured handler slots' names, even when the setting is refused (then read from the
    user's ``HANDLERS`` when it is a dict, else the default slots)."""
    try:
        return list(get_config().HANDLERS)
    except ImproperlyConfigured:
        handlers = setting("HANDLERS")
        return [str(name) for name in handlers] if isinstance(handlers, Mapping) else list(DEFAULT_HANDLERS)


@functools.cache
def get_config() -> Config:
    """The user's ``KATELLO_EVENTS`` merged over the defaults (cached; see :class:`Config`).

    Raises ImproperlyConfigured when the setting is not a dict or names an unknown key.
    """
    user = getattr(settings, "KATELLO_EVENTS", {}) or {}
    if not isinstance(user, Mapping):
        raise ImproperlyConfigured("KATELLO_EVENTS must be a dict")
    values = dict(user)
    values["LOCK_FILE"] = str(values["LOCK_FILE"]) if values.get("LOCK_FILE") else default_lock_file()
    return Config.from_mapping(values)


def reset_config(**kwargs: Any) -> None:
    """Drop the cached configuration (receiver of ``setting_changed``)."""
    if kwargs.get("setting") in (None, "KATELLO_EVENTS", "DATABASES"):
        get_config.cache_clear()


def handler_specs(config: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The configured handler slots, each as ``{"BACKEND": str, "OPTIONS": dict}``."""
    specs = {}
    for name, spec in (config or get_config())["HANDLERS"].items():
        specs[name] = {"BACKEND": spec["BACKEND"], "OPTIONS": dict(spec.get("OPTIONS") or {})}
    return specs


def default_lock_file(databases: dict[str, Any] | None = None) -> str:
    """A lock file per database in this user's runtime folder (:func:`runtime_folder`).

    Keyed by the default database so two projects on one host elect one runner each, while
    every worker of one project (they share a database) competes for the same file.
    """
    db = (settings.DATABASES if databases is None else databases).get("default", {})
    key = "|".join(str(db.get(part, "")) for part in ("ENGINE", "HOST", "PORT", "NAME"))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(runtime_folder(), f"runner-{digest}.lock")


def runtime_folder() -> str:
    """This user's folder for the lock file: ``$XDG_RUNTIME_DIR/katello_events`` (systemd's
    per-user runtime folder), else ``katello_events-<uid>`` in the temp folder. Per user, so
    another local user cannot create it first; the election refuses it if they did anyway."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "katello_events")
    return os.path.join(tempfile.gettempdir(), f"katello_events-{os.geteuid()}")


def queue_depth_threshold(name: str, config: Mapping[str, Any] | None = None) -> int | None:
    """The queue depth above which handler ``name`` reads WARN (``QUEUE_DEPTH_WARNING``), or None."""
    setting = (config or get_config())["QUEUE_DEPTH_WARNING"]
    return setting.get(name, setting.get("default")) if isinstance(setting, dict) else setting
