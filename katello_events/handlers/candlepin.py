"""The ``candlepin_events`` slot: the STOMP listener on Candlepin's broker (see ``docs/candlepin.md``)."""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from typing import Any

from django.db import connections
from stomp.utils import Frame

from katello_events.candlepin.burst import BurstRunner
from katello_events.candlepin.connection import (
    ACK_BATCH,
    BrokerConnection,
    BrokerUnreachable,
    any_port_open,
    open_connection,
)
from katello_events.candlepin.depth_probe import DepthProbe
from katello_events.candlepin.dispatch import (
    DEAD,
    DEFERRED,
    DROPPED,
    IGNORED,
    PROCESSED,
    REDELIVERED,
    RETRY_LATER,
    SKIPPED,
    STORED,
    Dispatcher,
    StoreUnavailable,
    log_dead_summary,
    log_key_summary,
)
from katello_events.candlepin.options import DEFAULT_OPTIONS, parse_options
from katello_events.errors import describe_error
from katello_events.fencing import Deposed, queue_alias
from katello_events.handlers.base import Handler
from katello_events.log import get_logger
from katello_events.stats import HandlerStats

logger = get_logger(__name__)

#: How long a wait for the next frame lasts before the loop looks at stop() again (seconds).
_STOP_CHECK = 0.25
#: Seconds between refreshes of the gauges (cheap, but not worth doing per message).
_GAUGE_INTERVAL = 0.2
#: A connection lost sooner than this after it was made (seconds) backs off before the next one,
#: so a broker that accepts and then drops us is not hammered.
_SHORT_LIVED = 10.0
#: While backing off from a broker whose port was closed, how often its port is tried (seconds).
_PORT_PROBE_INTERVAL = 0.5

#: The problem a deposed listener reports until its runner steps down.
DEPOSED = "deposed: another runner has taken the role"

#: The counters each outcome of the dispatcher adds to.
_COUNTERS = {
    PROCESSED: ("processed",),
    # Its handler raised SkipMessage: done with nothing to do, so processed too.
    SKIPPED: ("processed", "skipped"),
    # The inbox: the listener's work on a message is done once it is stored (docs/candlepin.md).
    STORED: ("processed", "stored"),
    IGNORED: ("ignored",),
    REDELIVERED: ("redelivered",),
    DEFERRED: ("failed", "deferred"),
    RETRY_LATER: ("retried_later",),
    DEAD: ("failed", "dead"),
    DROPPED: ("failed", "dropped"),
}


class CandlepinHandler(Handler):
    """Consumes Candlepin's event messages and runs the ``@message_handler`` of each subject.

    Loop: connect and subscribe (``ack: client-individual``, bounded prefetch); take the frames
    waiting in the listener's queue as one burst; sort them (``Dispatcher.prepare``); settle
    the burst in fenced transactions (``BurstRunner``); ack each message only once its
    transaction has committed: handled, ignored, or stored in the database (failed and
    redelivered messages go to the event queue, malformed ones are kept as dead events). With
    ``INBOX`` (the default) no handler runs here: every message is stored for the event queue.
    Frames of a lost connection are dropped unacked: the broker delivers them again. So every
    message is handled at least once.

    Losing the broker is not a crash: the handler reports ``broker unreachable: ...`` and
    reconnects with capped backoff from its own thread. A database outage while a message
    must be stored drops the connection too (the broker takes its unacked messages back) and
    waits for the database before reconnecting. A deposed runner (``fencing.Deposed``) acks
    nothing more, drops the connection and consumes no more until it is stopped.
    """

    def __init__(self, name: str, options: dict[str, Any], stats: HandlerStats) -> None:
        self.settings = parse_options(options)  # an OptionsError here is a crash with a clear text
        super().__init__(name, {**DEFAULT_OPTIONS, **options}, stats)
        self.dispatcher = Dispatcher(self.settings.max_body_bytes, inbox=self.settings.inbox)
        self.connection: BrokerConnection | None = None
        url = self.settings.depth_probe_url
        self._probe = DepthProbe(url) if url else None
        self._bursts: BurstRunner | None = None  # made in run(): it holds the thread's database connection
        self._alias = ""
        self._delay = 0.0  # the current reconnection backoff (seconds)
        self._database_down = False
        self._deposed = False
        self._connections = 0
        self._last_message_at: float | None = None
        self._last_complaint: str | None = None
        self._problem_kind: str | None = None  # "broker", "database" or "deposed" while one is reported
        self._next_gauges = 0.0
        self._next_probe = 0.0

    def run(self) -> None:
        self._publish_gauges()  # the slot's gauges may still describe a previous instance's connection
        self._alias = queue_alias()
        self._bursts = BurstRunner(self.dispatcher, self.fence, self._alias, self.tick)
        try:
            while not self.stopping:
                self.tick()
                connection = self.connection
                if self._deposed:
                    self.sleep(_STOP_CHECK)  # the runner steps down at its next heartbeat
                elif connection is None:
                    self._connect()
                elif connection.lost:
                    self._on_lost(connection)
                else:
                    frames = connection.next_burst(_STOP_CHECK, ACK_BATCH)
                    if frames:
                        self._handle(frames)
                    elif self._problem_kind:
                        self._recovered()  # connected, the database answered, nothing is held up
                    self._housekeeping()
        finally:
            self._disconnect()

    # -- one burst of messages -----------------------------------------------------------------

    def _handle(self, frames: list[Frame]) -> None:
        self._last_message_at = time.time()
        items = [self.dispatcher.prepare(frame.headers, frame.body) for frame in frames]
        connection = self.connection
        # Messages come only through a connection opened in run(), which made the burst runner first.
        assert connection is not None  # noqa: S101 - narrows the type; true by construction
        assert self._bursts is not None  # noqa: S101 - narrows the type; true by construction
        settled: dict[str, int] = {}
        outcomes = self._bursts.run(items)
        try:
            with contextlib.closing(outcomes):
                # Outcomes come once their transaction has committed: only then is a message acked.
                for outcome, frame in zip(outcomes, frames, strict=True):
                    connection.ack(frame)
                    settled[outcome] = settled.get(outcome, 0) + 1
                    if connection.lost:
                        break  # the rest cannot be acked: left to the broker, not handled here
        except StoreUnavailable as exc:
            self._on_database_outage(str(exc))
            return
        except Deposed as exc:
            self._on_deposed(exc)
            return
        finally:
            self._count(settled)
        if settled.keys() - {PROCESSED, SKIPPED, IGNORED}:
            # The event queue may run a stored message at once: its ack must be out before a
            # handler there can take the process down, or the broker would deliver it again.
            connection.flush_acks()
        if self._problem_kind:
            self._recovered()

    def _count(self, settled: dict[str, int]) -> None:
        """Add a burst's outcomes to the slot's counters (once per burst: each takes a lock)."""
        for outcome, amount in settled.items():
            for counter in _COUNTERS[outcome]:
                self.stats.increment(counter, amount)

    # -- connecting --------------------------------------------------------------------------

    def _connect(self) -> None:
        if self._database_down and not self._database_answers():
            self._back_off(broker=False)
            return
        try:
            connection = open_connection(self.settings, lambda: self.stopping)
        except BrokerUnreachable as exc:
            if not self.stopping:
                self._complain("broker", f"broker unreachable: {exc}")
                self._back_off()
            return
        self.connection = connection
        self._connections += 1
        if self._connections > 1:
            self.stats.increment("reconnects")
        if self._problem_kind == "broker":
            self._recovered()
        logger.info(
            "listening to %s on %s", self.settings.destination, connection.address,
            extra={"broker": str(connection.address), "destination": self.settings.destination},
        )  # fmt: skip
        self._publish_gauges()

    def _on_lost(self, connection: BrokerConnection) -> None:
        error = connection.listener.error
        logger.warning("connection to %s lost%s; reconnecting", connection.address, f" ({error})" if error else "")
        short_lived = time.time() - (connection.connected_at or 0) < _SHORT_LIVED
        self._disconnect()
        if short_lived:
            self._back_off()
        else:
            self._delay = 0.0

    def _disconnect(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()
        self._publish_gauges()

    def _back_off(self, broker: bool = True) -> None:
        settings = self.settings
        self._delay = min(max(self._delay * 2, settings.reconnect_backoff), settings.reconnect_backoff_max)
        if not broker or any_port_open(settings):
            self.sleep(self._delay)  # the broker is there and refuses us (or the database is away)
            return
        if self._problem_kind != "broker":
            # Known now, not after the backoff: a lost connection with every port closed means
            # the broker is down, and the status must say so while the backoff runs (up to
            # RECONNECT_BACKOFF_MAX after connections that did not last).
            brokers = ", ".join(str(address) for address in settings.brokers)
            self._complain("broker", f"broker unreachable: {brokers}: connection refused (port closed)")
        # The broker is down (port closed): the backoff grows over a long outage, but the moment
        # it is back is the moment to reconnect. Without this, three restarts in a row left the
        # listener asleep for up to RECONNECT_BACKOFF_MAX after the broker had returned.
        deadline = time.monotonic() + self._delay
        while not self.sleep(min(_PORT_PROBE_INTERVAL, max(0.0, deadline - time.monotonic()))):
            self.tick()
            if time.monotonic() >= deadline or any_port_open(settings):
                return

    def _complain(self, kind: str, problem: str) -> None:
        """Report a problem ("broker" or "database" kind); log it when it changes, not per attempt."""
        self.report_problem(problem)
        self._problem_kind = kind
        if problem != self._last_complaint:
            logger.warning("candlepin listener: %s (retrying with backoff)", problem)
            self._last_complaint = problem

    def _recovered(self) -> None:
        # A broker problem ends with a subscription; a database one only once a message went
        # through (or none is waiting): the database may answer and still refuse to store.
        logger.info("candlepin listener: recovered from: %s", self._last_complaint)
        if self._problem_kind == "database":
            self._delay = 0.0  # (a broker's backoff is reset by a connection that lasts)
        self.clear_problem()
        self._problem_kind = None
        self._last_complaint = None

    # -- the database ----------------------------------------------------------------------

    def _on_database_outage(self, problem: str) -> None:
        """Hold no message while the database is away: the broker takes them all back."""
        self._complain("database", f"{problem}; messages are left to the broker")
        connections[self._alias].close()
        self._disconnect()
        self._database_down = True
        self._back_off(broker=False)

    def _on_deposed(self, error: Deposed) -> None:
        """Another runner has the role: ack nothing more, and leave every message to the broker."""
        logger.error(
            "candlepin listener: %s (%s); no more messages are acked, the broker delivers them to the new runner",
            DEPOSED, error,
        )  # fmt: skip
        self.report_problem(DEPOSED)
        self._problem_kind = "deposed"
        self._deposed = True
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close(ack_pending=False)
        self._publish_gauges()

    def _database_answers(self) -> bool:
        connection = connections[self._alias]
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except Exception as exc:  # noqa: BLE001 - any failure means "not now": messages stay with the broker
            connection.close()
            self._complain("database", f"database unreachable: {describe_error(exc)}; messages are left to the broker")
            return False
        self._database_down = False
        return True

    # -- status ------------------------------------------------------------------------------

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_gauges:
            self._publish_gauges()
            log_dead_summary()
            log_key_summary()
            self._next_gauges = now + _GAUGE_INTERVAL
        if self._probe is not None and now >= self._next_probe:
            self.stats.set_gauge("queue_depth", self._probe.read())
            self._next_probe = time.monotonic() + self.settings.depth_probe_interval

    def _publish_gauges(self) -> None:
        connection = self.connection
        live = connection if connection is not None and not connection.lost else None
        self.stats.set_gauge("connected_since", _iso(live.connected_at) if live is not None else None)
        self.stats.set_gauge("in_flight", live.in_flight() if live is not None else 0)
        if self._last_message_at is not None:
            self.stats.set_gauge("last_message_at", _iso(self._last_message_at))

    def details(self) -> dict[str, Any]:
        connection, bursts = self.connection, self._bursts
        return {
            "broker": str(connection.address) if connection is not None else None,
            "brokers": [str(address) for address in self.settings.brokers],
            "destination": self.settings.destination,
            "subscription": self.settings.subscription_id,
            "prefetch": self.settings.prefetch,
            "inbox": self.settings.inbox,
            "handling": _handling(bursts.current if bursts is not None else None),
        }


def _handling(current: tuple[str, str | None, float] | None) -> dict[str, Any] | None:
    """The message in hand, so that a stalled slot's status names what it is stuck on."""
    if current is None:
        return None
    subject, message_id, since = current
    seconds = round(time.time() - since, 1)
    return {"subject": subject, "message_id": message_id, "since": _iso(since), "seconds": seconds}


def _iso(timestamp: float | None) -> str | None:
    return datetime.fromtimestamp(timestamp, UTC).isoformat() if timestamp is not None else None
