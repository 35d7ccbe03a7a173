"""The ``katello_events`` slot: the consumer of the durable event queue in the database."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import UTC, datetime
from typing import Any

from django.db import InterfaceError, OperationalError, connections

from katello_events.conf import get_config
from katello_events.errors import describe_error
from katello_events.event_queue.batch import RetryPolicy
from katello_events.event_queue.careful_lock import CarefulLock
from katello_events.event_queue.consumer import DEFAULT_BATCH_MAX_BYTES, BatchConsumer
from katello_events.event_queue.gauges import queue_gauges
from katello_events.event_queue.listener import NotifyListener
from katello_events.event_queue.maintenance import prune_dead
from katello_events.event_queue.push import NOTIFY_CHANNEL
from katello_events.fencing import Deposed, queue_alias
from katello_events.handlers.base import Handler, HandlerState
from katello_events.log import get_logger
from katello_events.pgdriver import is_driver_error
from katello_events.stats import HandlerStats
from katello_events.tasks.policy import our_aliases
from katello_events.tasks.summary import task_queues

logger = get_logger(__name__)

#: Handler threads by default: see docs/event-queue.md, "Concurrency" (why 4).
DEFAULT_CONCURRENCY = 4
#: Most handler threads a slot may run (each holds a database connection).
MAX_CONCURRENCY = 64

#: OPTIONS of the slot, with their defaults.
DEFAULT_OPTIONS: dict[str, Any] = {
    "BATCH_SIZE": 100,  # events claimed per transaction
    "CONCURRENCY": DEFAULT_CONCURRENCY,  # handler threads (PostgreSQL); 1: one thread, as before
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


class _Lane:
    """One consumer thread's own state: its consumer, its database session, its last tick."""

    def __init__(self, index: int, consumer: BatchConsumer) -> None:
        self.index = index
        self.consumer = consumer
        self.session: object | None = None  # the DB-API connection our session settings were made on
        self.outage_delay = 0.0
        self.last_tick = time.monotonic()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None  # what ended its thread, if anything did


class _Wakeup:
    """The NOTIFYs the listening thread saw, for the consumer threads to wait on."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self.generation = 0

    def ring(self) -> None:
        with self._condition:
            self.generation += 1
            self._condition.notify_all()

    def wait(self, seen: int, timeout: float) -> bool:
        """True once a ring came after ``seen`` (a generation read before the last claim)."""
        with self._condition:
            return self._condition.wait_for(lambda: self.generation != seen, timeout)


class EventQueueHandler(Handler):
    """Consumes the database event queue (see ``docs/event-queue.md``).

    Loop: claim and handle batches while there are any; when the queue is empty, wait for a
    NOTIFY (PostgreSQL) or ``POLL_INTERVAL``. A database outage is reported as the handler's
    problem and retried with capped backoff; nothing claimed is lost (the batch rolls back).

    ``CONCURRENCY`` 1 (PostgreSQL or not): that loop runs in the slot's thread, with one Django
    connection plus, on PostgreSQL, one listener connection. ``CONCURRENCY`` N > 1 (PostgreSQL):
    N consumer threads ("lanes"), each with its own Django connection, each taking only the
    (event_type, object_id) pairs of its hash partition, so a pair is never handled by two
    threads at once and its events keep their order; the slot's own thread holds the LISTEN
    connection, wakes the lanes on a NOTIFY and watches them; lane 0 also reads the gauges and
    prunes dead events. Careful tries run alone (``CarefulLock``). Stopping waits for every
    lane's unit in hand.
    """

    def __init__(self, name: str, options: dict[str, Any], stats: HandlerStats) -> None:
        unknown = set(options) - set(DEFAULT_OPTIONS)
        if unknown:
            raise ValueError(f"unknown OPTIONS for the event queue: {sorted(unknown)}")
        super().__init__(name, {**DEFAULT_OPTIONS, **options}, stats)
        concurrency = self.options["CONCURRENCY"]
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"OPTIONS['CONCURRENCY'] must be an int from 1 to {MAX_CONCURRENCY}, not {concurrency!r}")
        retry = RetryPolicy(
            max_attempts=int(self.options["MAX_ATTEMPTS"]),
            backoff=float(self.options["RETRY_BACKOFF"]),
            backoff_max=float(self.options["RETRY_BACKOFF_MAX"]),
        )
        if concurrency > 1 and connections[queue_alias()].vendor != "postgresql":
            logger.warning("event queue: CONCURRENCY %d needs PostgreSQL; running one thread", concurrency)
            concurrency = 1
        threads = CarefulLock() if concurrency > 1 else None
        self._lanes = [
            _Lane(
                index,
                BatchConsumer(
                    stats,
                    batch_size=int(self.options["BATCH_SIZE"]),
                    max_bytes=int(self.options["BATCH_MAX_BYTES"]),
                    retry=retry,
                    partition=(index, concurrency) if concurrency > 1 else None,
                    threads=threads,
                ),
            )
            for index in range(concurrency)
        ]
        #: The first lane's consumer (the only one with CONCURRENCY 1).
        self.consumer = self._lanes[0].consumer
        self._wakeup = _Wakeup()
        self._tasks_configured = any(our_aliases())
        self._deposed_by: Deposed | None = None
        self._listener: NotifyListener | None = None
        self._next_gauges = 0.0
        self._next_prune = 0.0
        config = get_config()
        self._dead_limit, self._dead_retention = config.DEAD_EVENT_LIMIT, config.DEAD_EVENT_RETENTION

    @property
    def concurrency(self) -> int:
        return len(self._lanes)

    def run(self) -> None:
        for lane in self._lanes:
            lane.consumer.use_fence(self.fence)  # set by the supervisor once this instance exists
        try:
            if self.concurrency == 1:
                self._run_lane(self._lanes[0], listening=True)
            else:
                self._conduct()
        finally:
            self._close_listener()
        if self._deposed_by is not None:
            self._deposed(self._deposed_by)

    def stop(self) -> None:
        super().stop()
        self._wakeup.ring()  # idle lanes notice at once

    def _run_lane(self, lane: _Lane, *, listening: bool) -> None:
        """Claim and handle batches until stopped or deposed (in the lane's own thread)."""
        while not self.stopping and self._deposed_by is None:
            self._tick(lane)
            seen = self._wakeup.generation
            try:
                handled = self._work(lane, listening=listening)
            except Deposed as exc:
                self._deposed_by = exc
                self._wakeup.ring()
                return
            except Exception as exc:  # noqa: BLE001 - the loop outlives any failure; _on_outage reports it
                self._on_outage(lane, exc, listening=listening)
                continue
            if handled == 0:
                self._wait_for_work(lane, seen, listening=listening)

    def _tick(self, lane: _Lane) -> None:
        lane.last_tick = time.monotonic()
        self.tick()

    # -- several lanes ---------------------------------------------------------------------------

    def _conduct(self) -> None:
        """CONCURRENCY > 1, in the slot's thread: start the lanes, relay NOTIFYs, watch them."""
        for lane in self._lanes:
            lane.thread = threading.Thread(
                target=self._lane_main, args=(lane,), name=f"katello-events:{self.name}:{lane.index}", daemon=True
            )
            lane.thread.start()
        try:
            while not self.stopping and self._deposed_by is None:
                self.tick()
                ended = next((lane for lane in self._lanes if lane.thread and not lane.thread.is_alive()), None)
                if ended is not None:
                    raise RuntimeError(
                        f"consumer thread {ended.index} ended: {describe_error(ended.error or 'no error')}"
                    )
                self._relay_notifies()
        finally:
            # Every lane finishes its unit in hand; a lane that never does keeps this thread
            # here, and the supervisor reports the slot as not stopping (the lock is kept).
            self._stop_requested.set()
            self._wakeup.ring()
            for lane in self._lanes:
                if lane.thread is not None:
                    lane.thread.join()

    def _lane_main(self, lane: _Lane) -> None:
        try:
            self._run_lane(lane, listening=False)
        except BaseException as exc:  # noqa: BLE001 - reported by the conductor, which ends the slot
            lane.error = exc
        finally:
            connections.close_all()  # this thread's connections: nobody else will close them

    def _relay_notifies(self) -> None:
        """Wait briefly for a NOTIFY on the one listener connection and wake the lanes."""
        connection = connections[self.consumer.alias]
        try:
            if self._listener is None:
                self._listener = NotifyListener(connection.settings_dict, NOTIFY_CHANNEL)
            if self._listener.wait(_STOP_CHECK):
                self._wakeup.ring()
        except Exception as exc:  # noqa: BLE001 - the lanes poll meanwhile; retried after a pause
            self._close_listener()
            logger.debug("event queue: listener lost (%s); the lanes poll until it is back", describe_error(exc))
            self.sleep(_STOP_CHECK)

    # -- one lane's work -------------------------------------------------------------------------

    def _deposed(self, exc: Deposed) -> None:
        """Another runner took the role: commit nothing more; the runner steps down shortly."""
        self.report_problem(f"deposed: another runner has taken the role ({exc})")
        logger.error("event queue: %s; handling nothing more in this process", exc)
        while not self.stopping:
            self.tick()
            self.sleep(_STOP_CHECK)

    def _work(self, lane: _Lane, *, listening: bool) -> int:
        connection = connections[lane.consumer.alias]
        if listening and connection.vendor == "postgresql" and self._listener is None:
            # LISTEN before claiming: a push committed after an empty claim still wakes us.
            self._listener = NotifyListener(connection.settings_dict, NOTIFY_CHANNEL)
        self._configure_session(lane)
        handled = lane.consumer.process_batch()
        if lane.index == 0:
            self._upkeep()
        if lane.outage_delay:
            logger.info("event queue: database reachable again")
        lane.outage_delay = 0.0
        self.clear_problem()
        return handled

    def _upkeep(self) -> None:
        """Lane 0, between batches: prune dead events and read the queue's gauges when due."""
        if time.monotonic() >= self._next_prune:
            self._prune()
        if time.monotonic() >= self._next_gauges:
            for gauge, value in queue_gauges(self.consumer.alias).items():
                self.stats.set_gauge(gauge, value)
            if self._tasks_configured:  # Django Tasks through our backend: counts per task queue
                self.stats.set_gauge("task_queues", task_queues(self.consumer.alias))
            self._next_gauges = time.monotonic() + float(self.options["STATS_INTERVAL"])

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

    def _configure_session(self, lane: _Lane) -> None:
        """On each new PostgreSQL session: bound how long a batch may hold its transaction idle.

        That is the lease: a runner that hangs or vanishes mid-batch loses its transaction
        after LEASE seconds, and its events become claimable again.
        """
        connection = connections[lane.consumer.alias]
        connection.ensure_connection()
        if connection.connection is lane.session or connection.vendor != "postgresql":
            return
        lease_ms = int(float(self.options["LEASE"]) * 1000)
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, false)", [str(lease_ms)])
        lane.session = connection.connection

    def _wait_for_work(self, lane: _Lane, seen: int, *, listening: bool) -> None:
        """Until a NOTIFY (the lane's own listener, or the slot's relayed), POLL_INTERVAL or stop."""
        deadline = time.monotonic() + float(self.options["POLL_INTERVAL"])
        while not self.stopping:
            self._tick(lane)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if not listening:
                if self._wakeup.wait(seen, min(remaining, _STOP_CHECK)):
                    return
                continue
            if self._listener is None:
                self.sleep(min(remaining, _STOP_CHECK))
                continue
            try:
                if self._listener.wait(min(remaining, _STOP_CHECK)):
                    return
            except Exception as exc:  # noqa: BLE001 - as in run(): reported by _on_outage, then retried
                self._on_outage(lane, exc, listening=listening)
                return

    def _on_outage(self, lane: _Lane, exc: Exception, *, listening: bool) -> None:
        """The database (or our session) failed: report it, drop the connections, back off."""
        database_error = isinstance(exc, (OperationalError, InterfaceError)) or is_driver_error(exc)
        problem = (
            f"database unreachable: {describe_error(exc)}"
            if database_error
            else f"event queue error: {describe_error(exc)}"
        )
        self.report_problem(problem)
        if not lane.outage_delay and (lane.index == 0 or not database_error):
            logger.warning("event queue: %s", problem, exc_info=not database_error)  # once, not per lane
        connections[lane.consumer.alias].close()
        lane.session = None
        if listening:
            self._close_listener()
        lane.outage_delay = min(max(lane.outage_delay * 2, 0.5), float(self.options["OUTAGE_BACKOFF_MAX"]))
        self.sleep(lane.outage_delay)

    def _close_listener(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            finally:
                self._listener = None

    # -- status ----------------------------------------------------------------------------------

    def status(self) -> HandlerState:
        """The slot's state; with several lanes, its tick is the oldest lane's (a stuck lane is a
        stalled slot, whatever the others do) and ``handling`` is that lane's."""
        state = super().status()
        if self.concurrency == 1:
            return state
        return dataclasses.replace(state, last_tick=min(state.last_tick, *(lane.last_tick for lane in self._lanes)))

    def details(self) -> dict[str, Any]:
        in_progress = sum(lane.consumer.in_progress for lane in self._lanes)
        if self.concurrency == 1:
            return {
                "batch_size": self.options["BATCH_SIZE"],
                "notify": self._listener is not None,
                "in_progress": in_progress,
                "handling": _handling(self.consumer.handling),
            }
        busy = [lane for lane in self._lanes if lane.consumer.handling is not None]
        oldest = min(busy, key=lambda lane: lane.last_tick, default=None)
        return {
            "batch_size": self.options["BATCH_SIZE"],
            "notify": self._listener is not None,
            "in_progress": in_progress,
            "concurrency": self.concurrency,
            "busy_threads": len(busy),
            "in_flight": in_progress,
            "handling": _handling(oldest.consumer.handling) if oldest else None,
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
