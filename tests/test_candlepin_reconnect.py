"""The listener reconnects as soon as a broker that was down is back, whatever its backoff has grown to.

Found by the chaos suite: after three broker restarts in a row the doubled backoff left the listener
asleep for up to RECONNECT_BACKOFF_MAX (28.7 s measured) after the broker's port had returned.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.candlepin_support import HOST, PORT, port_open, problem, run_listener, send, snapshot, subject_message
from tests.eventsapp.models import Handling
from tests.support import free_port, wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(60),
    pytest.mark.skipif(not port_open(), reason="needs the STOMP broker"),
]


@contextlib.contextmanager
def forwarder(port: int) -> Iterator[None]:
    """Listen on ``port`` and pipe every connection to the real broker: "the broker is back"."""
    server = socket.create_server(("127.0.0.1", port), reuse_port=False)
    stopping = threading.Event()
    sockets: list[socket.socket] = []

    def pipe(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def accept() -> None:
        server.settimeout(0.1)
        while not stopping.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection((HOST, PORT))
            sockets.extend((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopping.set()
        thread.join(5)
        server.close()
        for sock in sockets:
            # shutdown() first: a close() alone leaves a recv() blocked in a pipe thread holding
            # the connection open, and the listener would never see the broker go.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_a_broker_back_from_an_outage_is_reconnected_to_within_a_second_despite_a_long_backoff(runners, lock_file):
    from tests.candlepin_support import new_destination

    destination = new_destination()
    port = free_port()
    runner = run_listener(
        runners,
        lock_file,
        destination,
        BROKER_URL=f"stomp://guest:guest@127.0.0.1:{port}",
        RECONNECT_BACKOFF=30.0,
        RECONNECT_BACKOFF_MAX=30.0,
    )
    wait_for(lambda: (problem(runner) or "").startswith("broker unreachable"), 10, "the outage is reported")
    time.sleep(0.2)  # inside its 30 s backoff now
    message = subject_message("chaos.record")
    send(destination, [message])
    with forwarder(port):
        back = time.monotonic()
        wait_for(lambda: Handling.objects.exists(), 10, "the message is handled once the broker is back")
        assert time.monotonic() - back < 2.0, "reconnected at the broker's return, not at the end of the backoff"
        wait_for(lambda: problem(runner) is None, 5, "the problem is cleared")
    assert snapshot(runner).crashes == 0


def test_a_broker_gone_right_after_a_reconnection_is_reported_at_once_not_after_the_backoff(runners, lock_file):
    """A connection that did not last doubles the backoff; the outage after it must still show at
    once (found by the chaos suite: the third restart in a row was reported 30 s late)."""
    from tests.candlepin_support import new_destination

    port = free_port()
    with forwarder(port):
        runner = run_listener(
            runners,
            lock_file,
            new_destination(),
            BROKER_URL=f"stomp://guest:guest@127.0.0.1:{port}",
            RECONNECT_BACKOFF=30.0,
            RECONNECT_BACKOFF_MAX=30.0,
        )
        wait_for(lambda: snapshot(runner).gauges.get("connected_since"), 10, "connected")
    gone = time.monotonic()  # the port is closed and the connection cut: a broker that stopped
    wait_for(lambda: (problem(runner) or "").startswith("broker unreachable"), 10, "the outage is reported")
    assert time.monotonic() - gone < 5.0, "reported when the connection was lost, not after the 30 s backoff"
    assert snapshot(runner).crashes == 0
