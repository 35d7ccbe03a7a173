"""The listener's inbox (``OPTIONS["INBOX"]``, the default): every message is stored in the event
queue, one commit per burst, acked after it, and run by the event queue, coalesced by its
subject's ``coalesce_by`` key. Real RabbitMQ (STOMP) and real PostgreSQL, as in test_candlepin.py;
the first tests drive the burst runner without a broker.

What the direct path (``INBOX: False``) does is tested in test_candlepin.py and
test_candlepin_bursts.py, which pin it.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections import defaultdict

import pytest
from django.db import connection, transaction

import katello_events
from katello_events.candlepin.burst import BurstRunner
from katello_events.candlepin.dispatch import (
    DEAD,
    INBOX,
    MESSAGE_EVENT,
    REDELIVERED,
    STORE,
    STORED,
    Dispatcher,
    inbox_key,
    message_key,
)
from katello_events.candlepin.message import parse_message
from katello_events.event_queue.push import MAX_OBJECT_ID_LENGTH
from katello_events.fencing import queue_alias, take_epoch
from katello_events.handlers.candlepin import DEPOSED
from katello_events.models import Event, HandlerStatus
from katello_events.registry import HandlerRegistry, message_coalescing, message_handlers
from katello_events.testing import drain_events
from tests.candlepin_support import (
    BROKER_URL,
    DIRECT,
    consumers_of,
    fenced_listener_thread,
    messages_in_queue,
    run_listener,
    send,
    snapshot,
    status_row,
    subject_message,
    uid_of,
    unacked_in_queue,
)
from tests.eventsapp.events import CANDLEPIN_COALESCE_BY, record_message
from tests.eventsapp.models import Handling
from tests.support import manage_args, wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(120),
    pytest.mark.usefixtures("candlepin_test_queues"),
]

LIMIT = 1024 * 1024


def compliance(host: str, status: str) -> tuple[dict[str, str], bytes]:
    """A compliance.created message about ``host`` saying ``status``."""
    return subject_message("compliance.created", entityId=host, consumerUuid=host, eventData={"status": status})


def queue_row() -> HandlerStatus | None:
    return HandlerStatus.objects.filter(name="katello_events").first()


# -- the coalescing key ----------------------------------------------------------------------------


def parsed(subject: str = "compliance.created", **fields) -> katello_events.CandlepinMessage:
    headers, body = subject_message(subject, **fields)
    return parse_message({**headers, "message-id": uuid.uuid4().hex}, body, LIMIT)


def test_the_key_is_the_subject_and_what_coalesce_by_gives():
    message = parsed(consumerUuid="host-1")
    assert inbox_key(message, lambda m: m.body["consumerUuid"]) == "compliance.created:host-1"
    assert inbox_key(message, lambda m: 42) == "compliance.created:42"
    # Two subjects about one host are two statuses: their keys differ, so they never coalesce.
    purpose = parsed("system_purpose_compliance.created", consumerUuid="host-1")
    assert inbox_key(purpose, lambda m: m.body["consumerUuid"]) != inbox_key(message, lambda m: "host-1")


@pytest.mark.parametrize(
    "coalesce_by",
    [
        None,
        lambda m: None,
        lambda m: "",
        lambda m: m.body["no such field"],  # KeyError
        lambda m: True,
        lambda m: ["host-1"],
        lambda m: (_ for _ in ()).throw(SystemExit(3)),  # BaseException from application code
        lambda m: (_ for _ in ()).throw(KeyboardInterrupt()),
    ],
    ids=["no function", "none", "empty", "raises", "bool", "list", "system exit", "keyboard interrupt"],
)
def test_no_key_means_no_coalescing_and_a_failing_key_function_never_raises(coalesce_by):
    assert inbox_key(parsed(), coalesce_by) is None  # stored under its own message key


@pytest.mark.parametrize("key", ["h" * 400, "host\x00one", "host\ud800"], ids=["long", "nul", "lone surrogate"])
def test_a_key_too_long_or_not_storable_is_hashed_into_the_column(key):
    stored = inbox_key(parsed(), lambda m: key)
    assert stored.startswith("sha256:")
    assert len(stored) <= MAX_OBJECT_ID_LENGTH
    stored.encode("utf-8")  # storable as it is
    assert inbox_key(parsed(), lambda m: key) == stored, "the same key for the same thing"


def test_coalesce_by_is_registered_with_the_handler_and_must_be_callable():
    previous, previous_keys = message_handlers.reset(), message_coalescing.reset()
    try:

        def by_host(message):
            return message.body["consumerUuid"]

        @katello_events.message_handler("Compliance.Created", coalesce_by=by_host)
        def update(message) -> None: ...

        assert message_handlers.get("compliance.created") is update
        assert message_coalescing.get("compliance.created") is by_host

        @katello_events.message_handler("entitlement.created")
        def attach(message) -> None: ...

        assert "entitlement.created" not in message_coalescing, "the default: no coalescing"
        with pytest.raises(TypeError, match="coalesce_by"):
            katello_events.message_handler("pool.created", coalesce_by="entityId")
    finally:
        message_handlers.reset(previous)
        message_coalescing.reset(previous_keys)


# -- bursts into the inbox, without a broker ------------------------------------------------------


class CountingFence:
    """Counts its checks: one per transaction."""

    epoch = 1

    def __init__(self) -> None:
        self.checks = 0

    def check(self, using: str | None = None) -> None:
        assert connection.in_atomic_block, "the fence is checked inside the transaction it guards"
        self.checks += 1


def inbox_bursts(functions: dict, keys: dict | None = None, fence=None) -> BurstRunner:
    registry, coalescing = HandlerRegistry("message subject"), HandlerRegistry("coalescing key")
    for subject, function in functions.items():
        registry.register(subject, function)
    for subject, function in (keys or {}).items():
        coalescing.register(subject, function)
    dispatcher = Dispatcher(LIMIT, registry, inbox=True, coalescing=coalescing)
    return BurstRunner(dispatcher, fence or CountingFence(), queue_alias(), tick=lambda: None)


def frame(message: tuple[dict[str, str], bytes], **headers: str) -> tuple[dict[str, str], bytes]:
    frame_headers, body = message
    return {**frame_headers, "message-id": uuid.uuid4().hex, **headers}, body


def settle(runner: BurstRunner, frames) -> list[str]:
    return list(runner.run([runner.dispatcher.prepare(headers, body) for headers, body in frames]))


def test_a_burst_is_stored_in_one_transaction_and_no_handler_runs_in_the_listener():
    calls = []
    fence = CountingFence()
    runner = inbox_bursts({"testing.record": calls.append}, fence=fence)
    frames = [frame(subject_message("testing.record")) for _ in range(30)]
    assert settle(runner, frames) == [STORED] * 30
    assert fence.checks == 1, "one fenced transaction, one commit, for the whole burst"
    assert calls == [], "the event queue runs the handlers, not the listener"
    events = list(Event.objects.order_by("id"))
    assert [e.metadata["body"]["id"] for e in events] == [uid_of(f) for f in frames], "stored in delivery order"
    assert {e.event_type for e in events} == {MESSAGE_EVENT}
    assert [e.object_id for e in events] == [message_key(f[0]) for f in frames], "no key: one event per message"
    assert all(e.state == Event.PENDING and e.attempts == 0 for e in events)


def test_sorting_in_the_inbox_keeps_redelivered_malformed_and_ignored_apart():
    runner = inbox_bursts({"testing.record": record_message})
    dispatcher = runner.dispatcher
    assert dispatcher.prepare(*frame(subject_message("testing.record"))).kind == INBOX
    assert dispatcher.prepare(*frame(subject_message("testing.record"), redelivered="true")).kind == STORE
    frames = [
        frame(subject_message("testing.record")),
        ({"message-id": "bad"}, b"\xff not json"),
        frame(subject_message("testing.record"), redelivered="true"),
        frame(subject_message("consumer.created")),
    ]
    assert settle(runner, frames) == [STORED, DEAD, REDELIVERED, "ignored"]
    dead = Event.objects.get(state=Event.DEAD)
    assert dead.last_error.startswith("malformed message: ")
    assert Event.objects.filter(state=Event.PENDING).count() == 2


def test_a_message_the_database_refuses_is_kept_dead_alone_and_the_rest_of_its_burst_stored():
    runner = inbox_bursts({"testing.record": record_message})
    refused = frame(subject_message("testing.record", note="a NUL \u0000 here"))
    frames = [frame(subject_message("testing.record")), refused, frame(subject_message("testing.record"))]
    assert settle(runner, frames) == [STORED, DEAD, STORED]
    dead = Event.objects.get(state=Event.DEAD)
    assert "inbox and the message cannot be stored" in dead.last_error
    assert Event.objects.filter(state=Event.PENDING).count() == 2


def test_many_compliance_messages_for_a_few_hosts_run_once_per_host_with_the_newest_status():
    hosts = [f"host-{n}" for n in range(4)]
    runner = inbox_bursts(
        {"compliance.created": record_message}, {"compliance.created": CANDLEPIN_COALESCE_BY["compliance.created"]}
    )
    messages = [compliance(hosts[n % 4], f"status-{n}") for n in range(200)]
    for start in range(0, len(messages), 50):  # bursts of ACK_BATCH
        assert set(settle(runner, [frame(m) for m in messages[start : start + 50]])) == {STORED}
    assert Event.objects.count() == 200
    assert set(Event.objects.values_list("object_id", flat=True)) == {f"compliance.created:{h}" for h in hosts}

    stats = drain_events()
    runs = list(Handling.objects.order_by("id"))
    assert len(runs) == 4, "one run per host"
    newest = {hosts[n % 4]: f"status-{n}" for n in range(200)}
    assert {run.object_id: run.metadata["event_data"]["status"] for run in runs} == newest
    assert stats.counters()["coalesced"] == 196
    assert not Event.objects.exists()


# -- through a real runner: the listener and the event queue ------------------------------------------


def test_messages_are_stored_acked_after_commit_and_run_by_the_event_queue(runners, lock_file, destination):
    messages = [subject_message("testing.where") for _ in range(20)]
    send(destination, messages)
    runner = run_listener(runners, lock_file, destination)  # INBOX is the default

    wait_for(lambda: Handling.objects.count() == len(messages), 20, "every message handled")
    threads = {run.metadata["thread"] for run in Handling.objects.all()}
    # The event queue's thread (or its workers' threads, named after it), never the listener's.
    assert all(name.startswith("katello-events:katello_events") for name in threads), threads
    assert {run.uid for run in Handling.objects.all()} == {uid_of(m) for m in messages}
    wait_for(lambda: messages_in_queue(destination) == 0, 20, "every message acked", interval=0.3)
    wait_for(lambda: not Event.objects.exists(), 10, "the inbox is empty once the event queue ran it")

    def counted():
        row = status_row()
        return row.counters.get("stored") == len(messages) and row.details.get("in_flight") == 0 and row

    row = wait_for(counted, 10, "the listener counted what it stored")
    assert row.processed_count == len(messages), "processed: stored and acked"
    assert row.failed_count == 0
    assert row.details["inbox"] is True
    queue = wait_for(lambda: (r := queue_row()) and r.processed_count >= 1 and r, 10, "the event queue counted")
    assert queue.failed_count == 0
    assert snapshot(runner).crashes == 0


def test_without_the_event_queue_the_messages_wait_stored_and_acked(runners, lock_file, destination):
    messages = [subject_message("testing.where") for _ in range(10)]
    send(destination, messages)
    run_listener(runners, lock_file, destination, event_queue=False)
    wait_for(lambda: Event.objects.count() == len(messages), 20, "every message stored")
    wait_for(lambda: messages_in_queue(destination) == 0, 20, "and acked", interval=0.3)
    assert not Handling.objects.exists(), "no handler ran in the listener"
    drain_events()
    assert Handling.objects.count() == len(messages)


def test_a_burst_for_a_few_hosts_collapses_and_the_newest_status_wins(runners, lock_file, destination):
    hosts = ["host-a", "host-b", "host-c"]
    count = 300
    messages = [compliance(hosts[n % 3], f"status-{n}") for n in range(count)]
    send(destination, messages)
    run_listener(runners, lock_file, destination)

    newest = {hosts[n % 3]: f"status-{n}" for n in range(count)}

    def last_statuses() -> dict[str, str]:
        last = {}
        for run in Handling.objects.order_by("id"):
            last[run.object_id] = run.metadata["event_data"]["status"]
        return last

    wait_for(lambda: last_statuses() == newest, 30, "each host's newest status is the last one written")
    wait_for(lambda: not Event.objects.exists(), 20, "nothing left in the inbox")
    wait_for(lambda: messages_in_queue(destination) == 0, 20, "every message acked", interval=0.3)
    runs = Handling.objects.count()
    # Bursts of up to 50 are stored per commit; the event queue runs each batch once per host.
    assert runs <= count // 2, f"{runs} handler runs for {count} messages: they did not coalesce"
    assert last_statuses() == newest, "no older status after the newest"
    wait_for(
        lambda: (r := queue_row()) and r.processed_count == runs and r.counters.get("coalesced") == count - runs,
        10,
        "the event queue counted its runs, and the messages they stood for",
    )
    wait_for(lambda: status_row().counters.get("stored") == count, 10, "the listener counted what it stored")


def test_a_slow_handler_never_holds_the_acks(runners, lock_file, destination):
    count, seconds = 10, 1.5  # 15 s of handler work, one message after the other
    messages = [subject_message("testing.record", sleep=seconds) for _ in range(count)]
    send(destination, messages)
    run_listener(runners, lock_file, destination)
    # Well within the handlers' 15 s, even on a loaded machine; the listener needs a fraction of a second.
    wait_for(lambda: messages_in_queue(destination) == 0, 12, "every message acked", interval=0.2)
    handled = Handling.objects.count()
    assert handled < count, f"acked while handler work was still pending ({handled} of {count} done)"
    assert Event.objects.exists(), "the rest wait in the inbox"
    wait_for(lambda: status_row().details.get("in_flight") == 0, 10, "nothing held by the listener")
    # Done before teardown, so no batch is left sleeping in a transaction.
    wait_for(lambda: Handling.objects.count() == count, 60, "every handler ran in the end")


def test_malformed_messages_are_still_kept_dead(runners, lock_file, destination):
    good = subject_message("testing.where")
    send(destination, [({"x-test": "1"}, b"\xff not json"), ({"x-test": "2"}, b"[]"), good])
    run_listener(runners, lock_file, destination)
    wait_for(lambda: Handling.objects.filter(uid=uid_of(good)).exists(), 20, "the good message handled")
    dead = list(Event.objects.filter(state=Event.DEAD).order_by("id"))
    assert [e.metadata["headers"]["x-test"] for e in dead] == ["1", "2"]
    assert all(e.last_error.startswith("malformed message: ") for e in dead)
    row = wait_for(
        lambda: (r := status_row()).counters.get("dead") == 2 and r.counters.get("stored") == 1 and r, 10, "counted"
    )
    assert row.failed_count == 2
    wait_for(lambda: messages_in_queue(destination) == 0, 20, "all acked", interval=0.3)


def test_with_inbox_false_the_handler_runs_in_the_listener_as_before(runners, lock_file, destination):
    messages = [subject_message("testing.where") for _ in range(5)]
    send(destination, messages)
    run_listener(runners, lock_file, destination, **DIRECT)
    wait_for(lambda: Handling.objects.count() == len(messages), 20, "handled")
    assert {run.metadata["thread"] for run in Handling.objects.all()} == {"katello-events:candlepin_events"}
    row = wait_for(lambda: (r := status_row()).processed_count == len(messages) and r, 10, "counted")
    assert "stored" not in row.counters
    assert row.details["inbox"] is False
    assert not Event.objects.exists(), "nothing went through the event queue"


# -- nothing is lost when the burst does not commit -----------------------------------------------


@pytest.fixture
def fenced_listener(destination):
    """An inbox listener in a thread of its own, holding a runner's term taken now."""
    with fenced_listener_thread(destination) as handler:
        yield handler


def test_a_burst_rolled_back_stores_and_acks_nothing_and_the_next_runner_gets_every_message(
    fenced_listener, runners, lock_file, destination
):
    handler = fenced_listener
    wait_for(lambda: handler.details()["broker"], 10, "subscribed")
    take_epoch("successor", os.getpid(), lock_timeout=5)  # deposed: its next burst rolls back at the fence
    messages = [subject_message("testing.record") for _ in range(10)]
    send(destination, messages)
    wait_for(lambda: handler.status().problem == DEPOSED, 10, "the burst did not commit")
    wait_for(lambda: consumers_of(destination) == 0, 20, "its connection dropped", interval=0.3)
    assert not Event.objects.exists(), "nothing stored"
    assert messages_in_queue(destination) == len(messages), "nothing acked: the broker keeps them"

    run_listener(runners, lock_file, destination)  # the next runner
    wait_for(lambda: {r.uid for r in Handling.objects.all()} == {uid_of(m) for m in messages}, 30, "all handled")
    wait_for(lambda: messages_in_queue(destination) == 0, 20, "all acked", interval=0.3)
    counters = wait_for(
        lambda: (c := status_row().counters).get("stored", 0) + c.get("redelivered", 0) == len(messages) and c,
        10,
        "each counted once by the next runner",
    )
    assert counters.get("redelivered"), "those the deposed listener had received came back as redelivered"


def _blocked_inserts() -> int:
    """Backends waiting for a lock to insert into the event table (the inbox's store)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            " AND query LIKE 'INSERT INTO %%katello_events_event%%' AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


@pytest.mark.process
@pytest.mark.timeout(180)
def test_kill_9_before_the_burst_commits_loses_nothing(start_server, destination):
    env = {"CANDLEPIN_QUEUE": destination, "CANDLEPIN_BROKER_URL": BROKER_URL}
    first = start_server(manage_args("run_event_daemon"), **env)
    wait_for(lambda: (r := status_row_or_none()) and r.running and r.details.get("connected_since"), 60, "listening")
    messages = [subject_message("testing.record") for _ in range(40)]
    with transaction.atomic():
        # Writers of the event table wait for this lock: the listener's burst stops inside its
        # transaction, at its first store, and the runner is killed there, before any commit.
        with connection.cursor() as cursor:
            cursor.execute("LOCK TABLE katello_events_event IN SHARE MODE")
        send(destination, messages)
        wait_for(lambda: _blocked_inserts() >= 1, 30, "the burst waits inside its transaction")
        # Every message delivered to the killed runner: each comes back flagged redelivered.
        wait_for(lambda: unacked_in_queue(destination) == len(messages), 30, "all delivered", interval=0.3)
        os.kill(first.pid, signal.SIGKILL)
        first.process.wait(10)
    assert not Event.objects.exists(), "the killed burst committed nothing"
    assert not Handling.objects.exists()

    start_server(manage_args("run_event_daemon"), **env)
    wait_for(lambda: {r.uid for r in Handling.objects.all()} == {uid_of(m) for m in messages}, 60, "all handled")
    wait_for(lambda: not Event.objects.exists(), 30, "nothing left in the inbox")
    wait_for(lambda: messages_in_queue(destination) == 0, 30, "all acked", interval=0.5)
    runs = defaultdict(int)
    for run in Handling.objects.all():
        runs[run.uid] += 1
        assert run.metadata["redelivered"], "every message came back from the broker"
    assert set(runs.values()) == {1}


def status_row_or_none() -> HandlerStatus | None:
    return HandlerStatus.objects.filter(name="candlepin_events").first()


def test_the_stored_messages_keep_their_headers_and_body(runners, lock_file, destination):
    message = compliance("host-z", "valid")
    send(destination, [message])
    run_listener(runners, lock_file, destination, event_queue=False)
    event = wait_for(lambda: Event.objects.first(), 20, "stored")
    assert event.object_id == "compliance.created:host-z"
    assert event.metadata["subject"] == "compliance.created"
    assert event.metadata["body"] == json.loads(message[1])
    assert event.metadata["headers"]["EVENT_TARGET"] == "COMPLIANCE"
