"""The OPTIONS of a ``TASKS`` backend of ours, read from the setting: retries and how long results
are kept. Needs no Tasks framework (the runner reads them while it runs tasks)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from katello_events.conf import get_config
from katello_events.event_queue.batch import RetryPolicy

#: Dotted path of the backend class, as ``TASKS[alias]["BACKEND"]`` names it.
BACKEND_PATH = "katello_events.tasks.EventQueueBackend"
_BACKEND_PATHS = {BACKEND_PATH, "katello_events.tasks.backend.EventQueueBackend"}

#: Seconds finished results are kept by default (a week).
DEFAULT_RESULT_RETENTION = 7 * 24 * 3600.0

#: OPTIONS keys a backend accepts.
OPTION_NAMES = ("MAX_ATTEMPTS", "RETRY_BACKOFF", "RETRY_BACKOFF_MAX", "RESULT_RETENTION")


@dataclass(frozen=True)
class TaskOptions:
    """One backend's options: its retry policy and its results' retention (seconds)."""

    retry: RetryPolicy
    result_retention: float


def parse_options(alias: str, options: Mapping[str, Any]) -> TaskOptions:
    """``OPTIONS`` checked; the retry policy defaults to the ``katello_events`` slot's. Raises
    ``ImproperlyConfigured`` naming the backend for an unknown key or a bad value."""
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ImproperlyConfigured(
            f"TASKS[{alias!r}]['OPTIONS'] has unknown key(s) {unknown}; known: {', '.join(OPTION_NAMES)}"
        )
    queue = _queue_retry()
    try:
        retry = RetryPolicy(
            max_attempts=int(options.get("MAX_ATTEMPTS", queue.max_attempts)),
            backoff=float(options.get("RETRY_BACKOFF", queue.backoff)),
            backoff_max=float(options.get("RETRY_BACKOFF_MAX", queue.backoff_max)),
        )
        retention = float(options.get("RESULT_RETENTION", DEFAULT_RESULT_RETENTION))
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS']: {exc}") from exc
    if retry.max_attempts < 1 or retry.backoff < 0 or retry.backoff_max < 0 or retention < 0:
        raise ImproperlyConfigured(
            f"TASKS[{alias!r}]['OPTIONS']: MAX_ATTEMPTS must be at least 1, and the delays zero or more"
        )
    return TaskOptions(retry=retry, result_retention=retention)


def options_of(alias: str) -> TaskOptions:
    """The options of backend ``alias`` as this process's settings give them; the defaults when
    the alias is not (or no longer) one of ours."""
    params = _our_backends().get(alias)
    try:
        return parse_options(alias, (params or {}).get("OPTIONS") or {})
    except ImproperlyConfigured:
        return parse_options(alias, {})  # the backend itself reports it where it is used


def our_aliases() -> Iterator[str]:
    """The ``TASKS`` aliases whose backend is ours."""
    yield from _our_backends()


def _our_backends() -> dict[str, Mapping[str, Any]]:
    tasks = getattr(settings, "TASKS", None)
    if not isinstance(tasks, Mapping):
        return {}
    return {
        str(alias): params
        for alias, params in tasks.items()
        if isinstance(params, Mapping) and params.get("BACKEND") in _BACKEND_PATHS
    }


def _queue_retry() -> RetryPolicy:
    """The ``katello_events`` slot's retry policy (its OPTIONS over the queue's defaults)."""
    default = RetryPolicy()
    try:
        slot = get_config().HANDLERS.get("katello_events") or {}
        options = slot.get("OPTIONS") or {}
        return RetryPolicy(
            max_attempts=int(options.get("MAX_ATTEMPTS", default.max_attempts)),
            backoff=float(options.get("RETRY_BACKOFF", default.backoff)),
            backoff_max=float(options.get("RETRY_BACKOFF_MAX", default.backoff_max)),
        )
    except (ImproperlyConfigured, TypeError, ValueError, AttributeError):
        return default  # a refused KATELLO_EVENTS: the status surfaces say so
