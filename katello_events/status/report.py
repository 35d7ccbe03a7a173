"""The reader's side of the status rows: one status document for every surface.

/api/ping, /about/ and ``manage.py ping`` all render :func:`collect_status`; it never raises:
a missing row, a stale heartbeat or an unreachable database become FAIL services.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import Error, InterfaceError, OperationalError, connections, transaction
from django.db.models.functions import Now

from katello_events.conf import get_config, handler_names, queue_depth_threshold
from katello_events.election.lock_path import UNUSABLE
from katello_events.errors import NOT_MIGRATED, describe_error, is_missing_table
from katello_events.models import HandlerStatus
from katello_events.redaction import redact
from katello_events.status.snapshot import STALLED

OK, WARN, FAIL = "ok", "WARN", "FAIL"

#: A slot whose handler crashed and waits for its restart (the supervisor's "restarting in ...").
CRASHING = "crashing"
RESTARTING = "restarting"
#: Every service, when ``KATELLO_EVENTS`` itself is refused (an unknown key): nothing runs.
MISCONFIGURED = "misconfigured"

#: What untrusted readers may see of a problem: its category, one of these, never its text.
CATEGORIES = (
    "database unreachable",
    "broker unreachable",
    STALLED,
    UNUSABLE,
    NOT_MIGRATED.split(":", 1)[0],
    "deposed",
    RESTARTING,
    "event queue error",
    "status unreadable",
    CRASHING,
    MISCONFIGURED,
)
NOT_RUNNING = "Not running"
#: The public message of a problem in no category (a handler's own report_problem text).
OTHER_PROBLEM = "handler problem"
#: Categories that say why a stopped service is not running better than "Not running" does.
_OWN_REASONS = {UNUSABLE, NOT_MIGRATED.split(":", 1)[0]}

#: Keys of a service entry that only trusted readers see (see ``DETAILS_VISIBLE_TO``).
DETAIL_KEYS = ("runner", "last_error", "last_error_at", "problem", "restarts", "details")


class UnknownServices(ValueError):
    """A caller asked for services that are not configured (``?services=``, ``--services``)."""

    def __init__(self, unknown: list[str], known: list[str]) -> None:
        self.unknown, self.known = unknown, known
        super().__init__(f"unknown service(s): {', '.join(unknown)}; the services are: {', '.join(known) or 'none'}")


def select_services(requested: list[str] | None) -> list[str] | None:
    """The configured services among ``requested`` (None: all); raises :class:`UnknownServices`."""
    if not requested:
        return None
    known = handler_names()
    unknown = [name for name in requested if name not in known]
    if unknown:
        raise UnknownServices(unknown, known)
    return [name for name in known if name in requested]


def collect_status(services: list[str] | None = None) -> dict[str, Any]:
    """The full status document (every detail), read from the status rows; ``services``
    restricts it to those (already checked with :func:`select_services`), as Katello's
    ``ping(services: [...])`` does."""
    try:
        config = get_config()
    except ImproperlyConfigured as exc:
        # The runner refuses to start with such a setting; every surface says why, not a 500.
        return unreachable_document(services or handler_names(), f"{MISCONFIGURED}: {redact(str(exc))}")
    names = [name for name in config["HANDLERS"] if services is None or name in services]
    started = time.monotonic()
    try:
        rows, db_now = _read_rows(names, float(config["PING_TIMEOUT"]))
    except Error as exc:  # InterfaceError (a closed connection) is not a DatabaseError
        return unreachable_document(names, _read_failure(exc))
    duration_ms = str(round((time.monotonic() - started) * 1000))
    by_name = {row.name: row for row in rows}
    entries = {
        name: service_entry(
            by_name.get(name),
            db_now,
            config["STALE_AFTER"],
            duration_ms,
            queue_depth_threshold(name, config),
            handover_grace(config),
        )
        for name in names
    }
    return {"status": overall(entries), "services": entries}


def _read_failure(exc: Error) -> str:
    """What a failed status read says: the tables are missing, the database is away, or else."""
    if is_missing_table(exc):  # SQLite reports it as an OperationalError, PostgreSQL not
        return NOT_MIGRATED
    if isinstance(exc, (OperationalError, InterfaceError)):
        connections["default"].close()
        return f"database unreachable: {redact(describe_error(exc))}"
    return f"status unreadable: {redact(describe_error(exc))}"


def handover_grace(config: Mapping[str, Any]) -> float:
    """Seconds a clean stop reads as a hand-over: a few standby attempts, at least one second."""
    return max(1.0, 5 * float(config["STANDBY_INTERVAL"]))


def _read_rows(names: list[str], timeout: float) -> tuple[Sequence[HandlerStatus], datetime | None]:
    """The rows and the database's clock; a slow database fails after ``timeout`` seconds."""
    connection = connections["default"]
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(int(timeout * 1000))])
        rows = list(HandlerStatus.objects.filter(name__in=names).annotate(db_now=Now()))
    return rows, (rows[0].db_now if rows else None)


def service_entry(
    row: HandlerStatus | None,
    db_now: datetime | None,
    stale_after: float,
    duration_ms: str,
    threshold: int | None = None,
    grace: float = 0.0,
) -> dict:
    """One service of the document, judged from its row (None: no row yet).

    A runner that stopped cleanly less than ``grace`` seconds ago reads WARN "handing over":
    a standby normally claims the rows within a fraction of a second, and a recycled worker
    must not make the ping flap to FAIL (503). Past ``grace`` it is FAIL like any stop.
    """
    if row is None:
        return _entry(FAIL, "Not running (never started)", duration_ms, running=False)
    age = (db_now - row.heartbeat_at).total_seconds() if db_now and row.heartbeat_at else None
    stale = age is None or age > stale_after
    running = row.running and not stale
    counts = f"{row.processed_count} Processed, {row.failed_count} Failed"
    if row.queue_depth is not None:
        counts += f", {row.queue_depth} in queue"
    if not row.running and not row.problem and age is not None and age <= grace:
        status, message = WARN, "Not running: handing over to the next runner"
    elif not row.running and row.problem.startswith(STALLED):
        # A stalled runner keeps its lock until its process is recycled: say what is wrong.
        status, message = FAIL, row.problem
    elif not row.running and row.problem.startswith(UNUSABLE):
        # A candidate that cannot compete wrote why: that is what stops the service.
        status, message = FAIL, row.problem
    elif not row.running and row.problem.startswith(RESTARTING):
        # The runner lives (its heartbeat says so when fresh) and restarts a crashed handler:
        # a crash loop (bad OPTIONS, a bug) reads "crashing", never a clean "Not running".
        if stale:
            status, message = FAIL, f"Not running (no heartbeat for {age:.0f}s)" if age is not None else "Not running"
        else:
            status, message = FAIL, f"{CRASHING}: {row.problem}"
    elif not row.running:
        status, message = FAIL, NOT_RUNNING + (f": {row.problem}" if row.problem else "")
    elif stale:
        status, message = FAIL, f"Not running (no heartbeat for {age:.0f}s)" if age is not None else "Not running"
    elif row.problem:
        status, message = FAIL, row.problem
    elif threshold is not None and row.queue_depth is not None and row.queue_depth > threshold:
        status, message = WARN, f"{counts} (queue deeper than {threshold})"
    else:
        status, message = OK, counts
    entry = _entry(status, message, duration_ms, running=running)
    entry.update(
        processed_count=row.processed_count,
        failed_count=row.failed_count,
        queue_depth=row.queue_depth,
        queue_depth_threshold=threshold,
        last_heartbeat=_iso(row.heartbeat_at),
        heartbeat_age_s=round(age, 1) if age is not None else None,
        counters=row.counters,
        runner={"hostname": row.hostname, "pid": row.pid, "since": _iso(row.since)},
        problem=row.problem or None,
        last_error=row.last_error or None,
        last_error_at=_iso(row.last_error_at),
        restarts=row.restarts,
        details=row.details,
    )
    if isinstance(row.details, dict) and row.details.get("task_queues"):
        # Counts only, like processed_count: every reader sees them (Django Tasks, docs/tasks.md).
        entry["task_queues"] = row.details["task_queues"]
    return entry


def unreachable_document(names: list[str], reason: str) -> dict[str, Any]:
    """Every service FAIL with the same ``reason``: the status could not be read, or the settings
    are refused (``misconfigured: ...``)."""
    services = {name: _entry(FAIL, reason, "0", running=None) for name in names}
    for entry in services.values():
        entry["problem"] = reason
    return {"status": FAIL, "services": services}


def overall(services: dict[str, dict]) -> str:
    return FAIL if any(s["status"] == FAIL for s in services.values()) else OK


def public_document(document: dict[str, Any]) -> dict[str, Any]:
    """The document without error texts, hostnames and pids, for untrusted readers."""
    services = {}
    for name, entry in document["services"].items():
        public = {k: v for k, v in entry.items() if k not in DETAIL_KEYS}
        if entry.get("problem"):
            public["message"] = public_category(public["message"])
        services[name] = public
    return {**document, "services": services}


def public_category(message: str) -> str:
    """The fixed category a problem message belongs to: never a word of its free text.

    Problems read "<category>: <detail>", and a handler may report any text: only a category
    of :data:`CATEGORIES` is shown, anything else reads :data:`OTHER_PROBLEM`.
    """
    rest = message
    if rest.startswith(NOT_RUNNING):
        rest = rest[len(NOT_RUNNING) :].lstrip(": ")
        found = _category_of(rest)
        return found if found in _OWN_REASONS else NOT_RUNNING
    return _category_of(rest) or OTHER_PROBLEM


def _category_of(text: str) -> str | None:
    lowered = text.lower()
    return next((category for category in CATEGORIES if lowered.startswith(category.lower())), None)


def _entry(status: str, message: str, duration_ms: str, *, running: bool | None) -> dict[str, Any]:
    return {
        "status": status,
        "message": message,
        "duration_ms": duration_ms,
        "running": running,
        "processed_count": None,
        "failed_count": None,
        "queue_depth": None,
        "last_heartbeat": None,
        "runner": None,
        "last_error": None,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
