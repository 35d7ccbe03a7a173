"""Helpers for tests against the real broker: Candlepin-like messages, sending, RabbitMQ control."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import stomp

HOST, PORT = "127.0.0.1", 61613
BROKER_URL = f"stomp://guest:guest@{HOST}:{PORT}"
#: Per test process: a pytest worker that cleans up deletes its own queues, never the ones
#: another worker's tests are using.
QUEUE_PREFIX = f"katello.candlepin.test-{os.getpid()}-"

OWNER = "8a8d01f77c5f4a5b017c5f4e9ee70003"

#: subject -> (target, type, fields of a realistic body), after Candlepin's event JSON. The exact
#: shapes are in tests/fixtures/candlepin_messages/; these bodies differ on purpose in ``id``, a
#: unique uuid here (Candlepin sends null) by which the tests tell their messages apart (uid_of).
SUBJECTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "pool.created": ("POOL", "CREATED", {"entityId": "pool-1", "eventData": {"subscriptionId": "sub-1"}}),
    "pool.deleted": ("POOL", "DELETED", {"entityId": "pool-2", "eventData": None}),
    "entitlement.created": (
        "ENTITLEMENT",
        "CREATED",
        {"entityId": "ent-1", "referenceId": "pool-3", "referenceType": "POOL", "consumerUuid": "host-1"},
    ),
    "entitlement.deleted": (
        "ENTITLEMENT",
        "DELETED",
        {"entityId": "ent-2", "referenceId": "pool-4", "referenceType": "POOL", "consumerUuid": "host-2"},
    ),
    "compliance.created": (
        "COMPLIANCE",
        "CREATED",
        {
            "entityId": "host-3",
            "consumerUuid": "host-3",
            "eventData": {
                "status": "invalid",
                "reasons": [{"productName": "RHEL Server", "message": "Not supported by a valid subscription."}],
            },
        },
    ),
    "system_purpose_compliance.created": (
        "SYSTEM_PURPOSE_COMPLIANCE",
        "CREATED",
        {
            "entityId": "host-4",
            "consumerUuid": "host-4",
            "eventData": {
                "status": "mismatched",
                "reasons": ['The requested role "RHEL Server" is not provided by a currently consumed subscription.'],
                "nonCompliantRole": "RHEL Server",
                "compliantUsage": {"Production": []},
                "nonCompliantSLA": None,
                "compliantAddOns": {},
            },
        },
    ),
    "owner_content_access_mode.modified": (
        "OWNER_CONTENT_ACCESS_MODE",
        "MODIFIED",
        {"entityId": OWNER, "eventData": {"contentAccessMode": "org_environment"}},
    ),
}


def candlepin_body(target: str, kind: str, **fields: Any) -> dict[str, Any]:
    """A Candlepin event body; ``eventData`` given as a document is sent as a JSON string, as Candlepin does."""
    body = {
        "id": uuid.uuid4().hex,
        "type": kind,
        "target": target,
        "targetName": f"{target.title()} name",
        "timestamp": int(time.time() * 1000),
        "entityId": None,
        "ownerId": OWNER,
        "consumerUuid": None,
        "referenceId": None,
        "referenceType": None,
        "eventData": None,
        "messageText": None,
        "principal": {"type": "trusteduser", "name": "foreman_admin"},
        **fields,
    }
    if body["eventData"] is not None and not isinstance(body["eventData"], str):
        body["eventData"] = json.dumps(body["eventData"])
    return body


def subject_message(subject: str, *, headers: bool = True, **fields: Any) -> tuple[dict[str, str], bytes]:
    """(headers, body) of a message of ``subject`` (``target.type``), realistic when it is Candlepin's."""
    if subject in SUBJECTS:
        target, kind, defaults = SUBJECTS[subject]
    else:
        target, kind = (part.upper() for part in subject.split("."))
        defaults = {}
    body = candlepin_body(target, kind, **{**defaults, **fields})
    frame_headers = {"EVENT_TARGET": target, "EVENT_TYPE": kind} if headers else {}
    return frame_headers, json.dumps(body).encode()


def new_destination() -> str:
    return f"/queue/{QUEUE_PREFIX}{uuid.uuid4().hex[:12]}"


def send(destination: str, messages: list[tuple[dict[str, str], bytes | str]]) -> None:
    """Send persistent messages; returns once the broker has them all (a receipt on the last)."""
    connection = stomp.Connection12([(HOST, PORT)], vhost="/", auto_decode=False)
    receipt = threading.Event()

    class Receipts(stomp.ConnectionListener):
        def on_receipt(self, frame) -> None:
            receipt.set()

    connection.set_listener("receipts", Receipts())
    connection.connect("guest", "guest", wait=True)
    try:
        for n, (headers, body) in enumerate(messages):
            extra = {"receipt": "last"} if n == len(messages) - 1 else {}
            connection.send(destination, body, headers={"persistent": "true", **headers, **extra})
        assert receipt.wait(30), "the broker never confirmed the messages"
    finally:
        connection.disconnect()


def leave_unacked(destination: str, count: int) -> None:
    """Take ``count`` messages with a consumer that goes away without acking them: the broker then
    delivers them again, ``redelivered: true`` (and, on RabbitMQ, under a new ``message-id``)."""
    connection = stomp.Connection12([(HOST, PORT)], vhost="/", auto_decode=False)
    received: list[str] = []

    class Taker(stomp.ConnectionListener):
        def on_message(self, frame) -> None:
            received.append(frame.headers["message-id"])

    connection.set_listener("taker", Taker())
    connection.connect("guest", "guest", wait=True)
    try:
        connection.subscribe(destination, id="taker", ack="client-individual")
        deadline = time.monotonic() + 30
        while len(received) < count:
            assert time.monotonic() < deadline, f"only {len(received)} of {count} messages came"
            time.sleep(0.02)
    finally:
        connection.disconnect(receipt=uuid.uuid4().hex)  # the broker has taken them back when this returns


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    result = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr or result.stdout}")
    return result.stdout


def can_control_broker() -> bool:
    return shutil.which("rabbitmqctl") is not None


def messages_in_queue(destination: str) -> int:
    """Ready plus unacked messages of a /queue/ destination, as RabbitMQ counts them."""
    return _queue_figure(destination, "messages")


def unacked_in_queue(destination: str) -> int:
    """Messages of a /queue/ destination delivered and not acked, as RabbitMQ counts them."""
    return _queue_figure(destination, "messages_unacknowledged")


def consumers_of(destination: str) -> int:
    """Consumers subscribed to a /queue/ destination, as RabbitMQ counts them."""
    return _queue_figure(destination, "consumers")


def _queue_figure(destination: str, column: str) -> int:
    """One of ``rabbitmqctl list_queues``' columns for a /queue/ destination (0: no such queue)."""
    name = destination.removeprefix("/queue/")
    for line in rabbitmqctl("list_queues", "-q", "--no-table-headers", "name", column).splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == name:
            return int(fields[1])
    return 0


def delete_test_queues() -> None:
    """Remove every queue this test process created (one rabbitmqctl call, best effort)."""
    expression = (
        f'Prefix = <<"{QUEUE_PREFIX}">>, '
        '[rabbit_amqqueue:delete(Q, false, false, <<"tests">>) || Q <- rabbit_amqqueue:list(<<"/">>), '
        "{resource, _, queue, N} <- [amqqueue:get_name(Q)], "
        "binary:longest_common_prefix([N, Prefix]) =:= byte_size(Prefix)], ok."
    )
    subprocess.run(["rabbitmqctl", "eval", expression], capture_output=True, timeout=60)


def port_open(host: str = HOST, port: int = PORT) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def fake_management_api(document: Any, user: str = "monitor", password: str = "s3cr3t") -> Iterator[str]:
    """A local HTTP server answering every GET with ``document`` (401 without the credentials);
    yields its URL, credentials included, as DEPTH_PROBE_URL takes it."""
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the stdlib's name (pep8-naming allows do_*)
            status, payload = (200, json.dumps(document).encode())
            if self.headers.get("Authorization") != expected:
                status, payload = 401, b"{}"
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://{user}:{password}@127.0.0.1:{server.server_port}/api/queues/%2F/katello.candlepin"
    finally:
        server.shutdown()
        server.server_close()


# -- running the listener in a real runner -----------------------------------------------------

LISTENER = "katello_events.handlers.candlepin.CandlepinHandler"
QUEUE = "katello_events.handlers.event_queue.EventQueueHandler"
FAST = {"BROKER_URL": BROKER_URL, "RECONNECT_BACKOFF": 0.1, "RECONNECT_BACKOFF_MAX": 0.5, "CONNECT_TIMEOUT": 5}
#: The listener's direct path (handlers run in the listener): pinned by the tests of that path,
#: since the inbox is the default (docs/candlepin.md, "The inbox").
DIRECT = {"INBOX": False}
FAST_QUEUE = {"POLL_INTERVAL": 0.2, "RETRY_BACKOFF": 0.1, "RETRY_BACKOFF_MAX": 0.2, "STATS_INTERVAL": 0.1}


def run_listener(runners, lock_file, destination: str, *, event_queue: dict | bool = True, **options: Any):
    """An in-process runner with the listener on ``destination`` and the event queue, which runs
    the messages the listener stores (failed and redelivered ones): FAST_QUEUE updated with
    ``event_queue`` when it is a dict; no event queue when it is False."""
    from tests.conftest import make_runner, start

    handlers = {"candlepin_events": (LISTENER, {**FAST, "DESTINATION": destination, **options})}
    if event_queue is not False:
        handlers["katello_events"] = (QUEUE, {**FAST_QUEUE, **(event_queue if isinstance(event_queue, dict) else {})})
    return start(runners, make_runner(lock_file, handlers))


def status_row():
    from katello_events.models import HandlerStatus

    return HandlerStatus.objects.get(name="candlepin_events")


def snapshot(runner):
    supervisor = runner.supervisor
    return next(s for s in supervisor.snapshots() if s.name == "candlepin_events") if supervisor else None


def problem(runner) -> str | None:
    """The listener's own problem, once its thread runs (before that, the slot reports its start)."""
    state = snapshot(runner)
    return state.problem if state and state.running else None


def uid_of(message: tuple[dict, bytes]) -> str:
    """The Candlepin event id of a message made by :func:`subject_message`."""
    return json.loads(message[1])["id"]


@contextlib.contextmanager
def fenced_listener_thread(destination: str, **options: Any) -> Iterator[Any]:
    """A listener on ``destination`` in a thread of its own, holding a runner's term taken now (no
    runner around it, so nothing else reacts when the term ends); stopped and joined on exit."""
    from django.db import connections

    from katello_events.fencing import Fence, take_epoch
    from katello_events.handlers.candlepin import CandlepinHandler
    from katello_events.stats import HandlerStats

    handler = CandlepinHandler("candlepin_events", {**FAST, "DESTINATION": destination, **options}, HandlerStats())
    handler.fence = Fence(take_epoch("test", os.getpid(), lock_timeout=5))

    def run() -> None:
        try:
            handler.run()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, name="katello-events:candlepin_events", daemon=True)
    thread.start()
    try:
        yield handler
    finally:
        handler.stop()
        thread.join(10)
    assert not thread.is_alive()
