"""stomp.py 9 glue: one STOMP 1.2 connection to one broker, subscribed, its frames handed over.

stomp.py calls listeners from a receiver thread it recreates on every connection, and never
reconnects by itself; reconnecting from its callbacks races with its own teardown. So the
listener here does two things only: put frames on a queue and set a flag when the connection is
gone. Connecting, acking, closing and reconnecting all happen in the handler's own thread.
A connection object is used once: after a loss the handler opens a new one (frames of the old
one cannot be acked any more; the broker redelivers them).
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable

import stomp
from stomp.utils import Frame

from katello_events.candlepin.diagnosis import capture_connect_errors, check_tls_files
from katello_events.candlepin.options import BrokerAddress, ListenerSettings
from katello_events.errors import describe_error
from katello_events.log import get_logger

logger = get_logger(__name__)

#: How often a wait inside open() checks for stop() and for a loss (seconds).
_POLL = 0.05
#: Most acks written at once, and longest an ack waits for its batch (seconds); see ack(). The
#: listener's bursts (one transaction each) hold at most ACK_BATCH messages: half the default
#: PREFETCH, so the broker has the other half to deliver while a burst's transaction commits.
#: (32 measured 8% slower with the fence check: more transactions, three round trips each.)
ACK_BATCH = 50
ACK_DELAY = 0.05
#: How long close() waits for the broker's DISCONNECT receipt before dropping the socket (seconds).
_CLOSE_GRACE = 1.0


class BrokerUnreachable(Exception):
    """No broker of BROKER_URL could be connected and subscribed to; the text says why, per broker."""


class FrameListener(stomp.ConnectionListener):
    """Runs in stomp.py's receiver thread: hands frames over, records losses, nothing else."""

    def __init__(self) -> None:
        self.frames: queue.SimpleQueue[Frame] = queue.SimpleQueue()
        self.connected = threading.Event()
        self.lost = threading.Event()
        self.receipts: set[str] = set()
        self.error: str | None = None

    def on_connected(self, frame: Frame) -> None:
        self.connected.set()

    def on_message(self, frame: Frame) -> None:
        self.frames.put(frame)

    def on_receipt(self, frame: Frame) -> None:
        self.receipts.add(frame.headers.get("receipt-id", ""))

    def on_error(self, frame: Frame) -> None:
        # STOMP brokers close the connection after an ERROR frame: treat it as the loss it is.
        parts = [frame.headers.get("message", "").strip(), _body_text(frame.body)]
        detail = ": ".join(dict.fromkeys(part for part in parts if part))  # no part twice
        self.error = f"broker error: {detail}" if detail else "broker error"
        self.lost.set()

    def on_heartbeat_timeout(self) -> None:
        self.error = "missed heart-beats from the broker"

    def on_disconnected(self) -> None:
        self.lost.set()


class BrokerConnection:
    """One connection to one broker and its client-individual subscription.

    Used from the handler's thread only (the listener is the only part stomp.py's threads touch).
    """

    def __init__(self, address: BrokerAddress, settings: ListenerSettings) -> None:
        self.address = address
        self.settings = settings
        self.listener = FrameListener()
        #: Wall-clock time the subscription was confirmed (None until then).
        self.connected_at: float | None = None
        self._acks: list[str] = []
        self._acks_since = 0.0
        self._taken_at = 0.0  # when the frame being handled was taken
        self._stomp = stomp.Connection12(
            [(address.host, address.port)],
            prefer_localhost=False,
            try_loopback_connect=False,
            reconnect_sleep_initial=0,  # one attempt; our handler owns the retry policy
            reconnect_attempts_max=1,
            timeout=settings.connect_timeout,
            heartbeats=settings.heartbeats,
            vhost=settings.vhost,
            auto_decode=False,  # a non-UTF-8 body must reach us, not blow up inside stomp.py
        )
        if address.tls:
            self._stomp.set_ssl(
                for_hosts=[(address.host, address.port)],
                cert_file=settings.ssl_cert,
                key_file=settings.ssl_key,
                ca_certs=settings.ssl_ca,
            )
        self._stomp.set_listener("katello_events", self.listener)

    # -- opening -----------------------------------------------------------------------------

    def open(self, should_stop: Callable[[], bool]) -> None:
        """Connect, log in and subscribe; raises ``ConnectionError`` saying what failed."""
        settings = self.settings
        if self.address.tls:
            check_tls_files(settings)
        with capture_connect_errors() as errors:
            try:
                self._stomp.connect(
                    self.address.username,
                    self.address.password,
                    wait=False,
                    headers={"client-id": settings.client_id},
                )
            # Whatever stomp.py raises here (ConnectFailedException says nothing), the cause it logged
            # was kept by capture_connect_errors().
            except Exception as exc:  # noqa: BLE001 - see above
                raise ConnectionError(errors[-1] if errors else describe_error(exc)) from None
        self._wait_for(self.listener.connected.is_set, "no CONNECTED frame", should_stop)
        receipt = uuid.uuid4().hex
        self._stomp.subscribe(
            settings.destination,
            id=settings.subscription_id,
            ack="client-individual",
            headers={
                "prefetch-count": str(settings.prefetch),  # RabbitMQ
                "durable-subscription-name": settings.subscription_id,  # Artemis
            },
            receipt=receipt,
        )
        self._wait_for(lambda: receipt in self.listener.receipts, "the subscription was not confirmed", should_stop)
        self.connected_at = time.time()

    def _wait_for(self, condition: Callable[[], bool], what: str, should_stop: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.settings.connect_timeout
        while not condition():
            if self.listener.lost.is_set():
                raise ConnectionError(self.listener.error or "the broker closed the connection")
            if should_stop():
                raise ConnectionError("stopping")
            if time.monotonic() > deadline:
                raise ConnectionError(f"{what} within {self.settings.connect_timeout:g}s")
            time.sleep(_POLL)

    # -- consuming ---------------------------------------------------------------------------

    @property
    def lost(self) -> bool:
        return self.listener.lost.is_set()

    def next_frame(self, timeout: float) -> Frame | None:
        """The next received frame, or None after ``timeout`` seconds (pending acks go out first)."""
        try:
            frame = self.listener.frames.get_nowait()
        except queue.Empty:
            self.flush_acks()  # nothing to do meanwhile: never sit on acks while idle
            try:
                frame = self.listener.frames.get(timeout=timeout)
            except queue.Empty:
                return None
        self._taken_at = time.monotonic()
        return frame

    def next_burst(self, timeout: float, limit: int = ACK_BATCH) -> list[Frame]:
        """The next frame (waiting up to ``timeout`` seconds for it) and those already received
        behind it, ``limit`` at most; no waiting for more. Empty after ``timeout``."""
        first = self.next_frame(timeout)
        if first is None:
            return []
        frames = [first]
        take = self.listener.frames.get_nowait
        try:
            while len(frames) < limit:
                frames.append(take())
        except queue.Empty:
            pass
        return frames

    def in_flight(self) -> int:
        """Messages received and not acked yet: waiting, or handled with their ack pending."""
        return self.listener.frames.qsize() + len(self._acks)

    def ack(self, frame: Frame) -> None:
        """Acknowledge one handled message (STOMP 1.2: by its ``ack`` header).

        Acks are written in small batches, one socket write each: a write releases the GIL, and
        winning it back from stomp.py's receiver thread costs more than the ack itself. A batch
        goes out when it holds ACK_BATCH acks, when its oldest is ACK_DELAY old, when this
        message's burst was taken ACK_DELAY or more ago (slow handlers gain nothing from
        batching), or as soon as no frame is waiting. So an ack waits at most for the next
        message's transaction. On a lost connection acks are dropped: the broker redelivers.
        """
        if self.lost:
            return
        now = time.monotonic()
        if not self._acks:
            self._acks_since = now
        self._acks.append(frame.headers.get("ack") or frame.headers["message-id"])
        if len(self._acks) >= ACK_BATCH or now - min(self._acks_since, self._taken_at) >= ACK_DELAY:
            self.flush_acks()

    def flush_acks(self) -> None:
        """Write the pending acks; a failure marks the connection lost (the broker redelivers)."""
        if not self._acks:
            return
        ids, self._acks = self._acks, []
        transport = self._stomp.transport
        try:
            if getattr(transport, "blocking", True):
                transport.send(b"".join(_ack_frame(ack_id) for ack_id in ids))
            else:  # TLS: stomp.py's own thread writes; hand it each frame the usual way
                for ack_id in ids:
                    self._stomp.ack(ack_id)
        except Exception as exc:  # noqa: BLE001 - any failure to write loses the connection; the broker redelivers
            logger.warning(
                "could not ack %d message(s), they will be delivered again: %s", len(ids), describe_error(exc)
            )
            self.listener.lost.set()

    def close(self, ack_pending: bool = True) -> None:
        """Disconnect (idempotent, never raises). Unacked messages go back to the broker, and so
        do those whose acks are still pending when ``ack_pending`` is False (a deposed runner's)."""
        if not ack_pending:
            self._acks = []
        elif not self.lost:
            self.flush_acks()  # handled messages are not to be delivered again
        # A broken connection is being thrown away: whatever fails here changes nothing.
        with contextlib.suppress(Exception):
            if not self.lost and self._stomp.is_connected():
                self._stomp.disconnect()
                self.listener.lost.wait(_CLOSE_GRACE)
        with contextlib.suppress(Exception):
            # Without a receipt (broker gone) stomp.py would keep the socket and its threads.
            self._stomp.transport.disconnect_socket()


def open_connection(settings: ListenerSettings, should_stop: Callable[[], bool]) -> BrokerConnection:
    """The first broker of BROKER_URL that accepts us, connected and subscribed (failover in order)."""
    problems = []
    for address in settings.brokers:
        if should_stop():
            break
        connection = BrokerConnection(address, settings)
        try:
            connection.open(should_stop)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the next broker of the list is tried
            connection.close()
            text = str(exc) if isinstance(exc, ConnectionError) and str(exc) else describe_error(exc)
            problems.append(f"{address}: {text}")
            continue
        return connection
    raise BrokerUnreachable("; ".join(problems) or "stopping")


def any_port_open(settings: ListenerSettings, timeout: float = 0.5) -> bool:
    """Whether some broker of BROKER_URL accepts a TCP connection (closed at once, nothing sent).

    A cheap probe for the reconnection backoff: a broker that is down has its port closed, and the
    moment it opens again is the moment to reconnect, whatever the backoff has grown to.
    """
    for address in settings.brokers:
        try:
            with socket.create_connection((address.host, address.port), timeout=timeout):
                return True
        except OSError:
            continue
    return False


def _ack_frame(ack_id: str) -> bytes:
    """One encoded STOMP 1.2 ACK frame (header value escaped as the 1.2 spec says), written out
    directly: what stomp.py's packer makes of it, for a tenth of the time."""
    escaped = ack_id.replace("\\", "\\\\").replace("\n", "\\n").replace(":", "\\c").replace("\r", "\\r")
    return b"ACK\nid:" + escaped.encode() + b"\n\n\x00"


def _body_text(body: bytes | str | None) -> str:
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return text.strip().splitlines()[0][:200] if text.strip() else ""
