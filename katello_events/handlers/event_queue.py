"""The ``katello_events`` slot: the consumer of the durable event queue in the database."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from django.db import InterfaceError, OperationalError, connections

from katello_events.conf import get_config
from katello_events.errors import describe_error
from katello_events.event_queue.batch import RetryPolicy
from katello_events.event_queue.consumer import DEFAULT_BATCH_MAX_BYTES, BatchConsumer
from katello_events.event_queue.gauges import queue_gauges
from katello_events.event_queue.listener import NotifyListener
from katello_events.event_queue.maintenance import prune_dead
from katello_events.event_queue.push import NOTIFY_CHANNEL
from katello_events.fencing import Deposed
from katello_events.handlers.base import Handler
from katello_events.log import get_logger
from katello_events.pgdriver import is_driver_error
from katello_events.stats import HandlerStats

logger = get_logger(__name__)

#: OPTIONS of the slot, with their defaults.
DEFAULT_OPTIONS: dict[str, Any] = {
    "BATCH_SIZE": 100,  # events claimed per transaction
    "BATCH_MAX_BYTES": DEFAULT_BATCH_MAX_BYTES,  # bytes of metadata a batch takes (beyond its first event)
    "POLL_INTERVAL": 1.0,  # seconds between polls when no NOTIFY arrives (the only wake-up on SQLite)
    "MAX_ATTEMPTS": 5,  # failed attempts before an event is kept as dead
    "RETRY_BACKOFF": 10.0,  # seconds before the second attempt; doubles per failure
    "RETRY_BACKOFF_MAX": 3600.0,  # seconds
    "LEASE": 600.0,  # seconds a batch's transaction may sit idle before PostgreSQL ends it (0: never)
    "STATS_INTERVAL": 1.0,  # seconds between queue-depth readings
    "OUTAGE_BACKOFF_MAX": 10.0,  # seconds between reconnection attempts during a database outage
    "PRUNE_INTERVAL": 60.0,  # seconds between passes that keep dead events within their bounds
}

#: How often a wait is cut short to notice stop() (seconds).
_STOP_CHECK = 0.25


class EventQueueHandler(Handler):
    """Consumes the database event queue (see ``docs/event-queue.md``).

    Loop: claim and handle batches while there are any; when the queue is empty, wait for a
    NOTIFY (PostgreSQL) or ``POLL_INTERVAL``. A database outage is reported as the handler's
    problem and retried with capped backoff; nothing claimed is lost (the batch rolls back).
    Uses one Django connection (its thread's) plus, on PostgreSQL, one listener connection.
    """

    def __init__(self, name: str, options: dict[str, Any], stats: HandlerStats) -> None:
        unknown = set(options) - set(DEFAULT_OPTIONS)
        if unknown:
            raise ValueError(f"unknown OPTIONS for the event queue: {sorted(unknown)}")
        super().__init__(name, {**DEFAULT_OPTIONS, **options}, stats)
        retry = RetryPolicy(
            max_attempts=int(self.options["MAX_ATTEMPTS"]),
            backoff=float(self.options["RETRY_BACKOFF"]),
            backoff_max=float(self.options["RETRY_BACKOFF_MAX"]),
        )
        self.consumer = BatchConsumer(
            stats,
            batch_size=int(self.options["BATCH_SIZE"]),
            max_bytes=int(self.options["BATCH_MAX_BYTES"]),
            retry=retry,
        )
        self._listener: NotifyListener | None = None
        self._session: object | None = None  # the DB-API connection our session settings were made on
        self._next_gauges = 0.0
        self._next_prune = 0.0
        config = get_config()
        self._dead_limit, self._dead_retention = config.DEAD_EVENT_LIMIT, config.DEAD_EVENT_RETENTION
        self._outage_delay = 0.0

    def run(self) -> None:
        self.consumer.use_fence(self.fence)  # set by the supervisor once this instance exists
        try:
            while not self.stopping:
                self.tick()
                try:
                    handled = self._work()
                except Deposed as exc:
                    self._deposed(exc)
                    return
                except Exception as exc:  # noqa: BLE001 - the loop outlives any failure; _on_outage reports it
                    self._on_outage(exc)
                    continue
                if handled == 0:
                    self._wait_for_work()
        finally:
            self._close_listener()

    def _deposed(self, exc: Deposed) -> None:
        """Another runner took the role: commit nothing more; the runner steps down shortly."""
        self.report_problem(f"deposed: another runner has taken the role ({exc})")
        logger.error("event queue: %s; handling nothing more in this process", exc)
        while not self.stopping:
            self.tick()
            self.sleep(_STOP_CHECK)

    def _work(self) -> int:
        connection = connections[self.consumer.alias]
        if connection.vendor == "postgresql" and self._listener is None:
            # LISTEN before claiming: a push committed after an empty claim still wakes us.
            self._listener = NotifyListener(connection.settings_dict, NOTIFY_CHANNEL)
        self._configure_session()
        handled = self.consumer.process_batch()
        if time.monotonic() >= self._next_prune:
            self._prune()
        if time.monotonic() >= self._next_gauges:
            for gauge, value in queue_gauges(self.consumer.alias).items():
                self.stats.set_gauge(gauge, value)
            self._next_gauges = time.monotonic() + float(self.options["STATS_INTERVAL"])
        if self._outage_delay:
            logger.info("event queue: database reachable again")
        self._outage_delay = 0.0
        self.clear_problem()
        return handled

    def _prune(self) -> None:
        """Keep dead events within DEAD_EVENT_LIMIT and DEAD_EVENT_RETENTION; one log line a pass."""
        self._next_prune = time.monotonic() + float(self.options["PRUNE_INTERVAL"])
        pruned = prune_dead(self._dead_limit, self._dead_retention, self.consumer.alias)
        if pruned:
            self.stats.increment("pruned", pruned)
            logger.warning(
                "event queue: pruned %d dead event(s) (DEAD_EVENT_LIMIT %s, DEAD_EVENT_RETENTION %ss)",
                pruned, self._dead_limit, self._dead_retention, extra={"pruned": pruned},
            )  # fmt: skip

    def _configure_session(self) -> None:
        """On each new PostgreSQL session: bound how long a batch may hold its transaction idle.

        That is the lease: a runner that hangs or vanishes mid-batch loses its transaction
        after LEASE seconds, and its events become claimable again.
        """
        connection = connections[self.consumer.alias]
        connection.ensure_connection()
        if connection.connection is self._session or connection.vendor != "postgresql":
            return
        lease_ms = int(float(self.options["LEASE"]) * 1000)
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, false)", [str(lease_ms)])
        self._session = connection.connection

    def _wait_for_work(self) -> None:
        deadline = time.monotonic() + float(self.options["POLL_INTERVAL"])
        while not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._listener is None:
                self.sleep(min(remaining, _STOP_CHECK))
                continue
            try:
                if self._listener.wait(min(remaining, _STOP_CHECK)):
                    return
            except Exception as exc:  # noqa: BLE001 - as in run(): reported by _on_outage, then retried
                self._on_outage(exc)
                return

    def _on_outage(self, exc: Exception) -> None:
        """The database (or our session) failed: report it, drop the connections, back off."""
        database_error = isinstance(exc, (OperationalError, InterfaceError)) or is_driver_error(exc)
        problem = (
            f"database unreachable: {describe_error(exc)}"
            if database_error
            else f"event queue error: {describe_error(exc)}"
        )
        self.report_problem(problem)
        if not self._outage_delay:
            logger.warning("event queue: %s", problem, exc_info=not database_error)
        connections[self.consumer.alias].close()
        self._session = None
        self._close_listener()
        self._outage_delay = min(max(self._outage_delay * 2, 0.5), float(self.options["OUTAGE_BACKOFF_MAX"]))
        self.sleep(self._outage_delay)

    def _close_listener(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            finally:
                self._listener = None

    def details(self) -> dict[str, Any]:
        return {
            "batch_size": self.options["BATCH_SIZE"],
            "notify": self._listener is not None,
            "handling": _handling(self.consumer.handling),
        }


def _handling(handling: tuple[str, str, float] | None) -> dict[str, Any] | None:
    """What the consumer is handling now, for operators and stall reports."""
    if handling is None:
        return None
    event_type, object_id, since = handling
    return {
        "event_type": event_type,
        "object_id": object_id,
        "since": datetime.fromtimestamp(since, UTC).isoformat(),
        "seconds": round(time.time() - since, 1),
    }
