"""The Candlepin listener against real RabbitMQ (STOMP) and real PostgreSQL, run by a real runner:
dispatch, acks, failed and malformed messages. The broker's own failures: test_candlepin_broker.py.

Each test has a destination of its own; messages are sent persistent, as Candlepin sends them.
"""

from __future__ import annotations

import json
import os
from datetime import datetime

import pytest
from django.db import OperationalError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from katello_events.candlepin import dispatch
from katello_events.candlepin.dispatch import MESSAGE_EVENT
from katello_events.fencing import take_epoch
from katello_events.handlers.candlepin import DEPOSED
from katello_events.models import Event
from katello_events.testing import drain_events
from tests.candlepin_support import (
    DIRECT,
    SUBJECTS,
    consumers_of,
    fenced_listener_thread,
    leave_unacked,
    messages_in_queue,
    problem,
    run_listener,
    send,
    snapshot,
    status_row,
    subject_message,
    uid_of,
)
from tests.eventsapp.models import Handling, Switch
from tests.support import wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(120),
    pytest.mark.usefixtures("candlepin_test_queues"),
]


def records(message_id: str) -> list[Handling]:
    return list(Handling.objects.filter(uid=message_id))


# -- dispatch ----------------------------------------------------------------------------------


@pytest.mark.parametrize("inbox", [False, True], ids=["direct", "inbox"])
def test_every_candlepin_subject_is_dispatched_end_to_end(runners, lock_file, destination, inbox):
    messages = [subject_message(subject) for subject in SUBJECTS]
    # Without EVENT_TARGET/EVENT_TYPE headers the subject comes from the body's target and type.
    messages.append(subject_message("pool.created", headers=False, entityId="pool-from-body"))
    send(destination, messages)
    run_listener(runners, lock_file, destination, INBOX=inbox)

    wait_for(lambda: Handling.objects.count() == len(messages), 20, "every message handled")
    runs = {run.uid: run for run in Handling.objects.all()}
    for message, subject in zip(messages, [*SUBJECTS, "pool.created"], strict=True):
        assert runs[uid_of(message)].event_type == subject
    by_subject = {run.event_type: run for run in runs.values() if run.object_id != "pool-from-body"}
    assert by_subject["pool.created"].object_id == "pool-1"  # a pool event: the pool is entityId
    assert by_subject["entitlement.created"].object_id == "pool-3"  # an entitlement event: referenceId
    assert by_subject["compliance.created"].metadata["event_data"]["status"] == "invalid"
    assert by_subject["system_purpose_compliance.created"].metadata["event_data"]["nonCompliantRole"] == "RHEL Server"
    assert by_subject["pool.deleted"].metadata["event_data"] is None

    def settled():
        row = status_row()
        return row.processed_count == len(messages) and row.details.get("in_flight") == 0 and row

    row = wait_for(settled, 10, "processed counted, nothing in flight")
    assert row.failed_count == 0
    assert row.counters.get("stored", 0) == (len(messages) if inbox else 0), "the inbox counts what it stored"
    assert row.details["inbox"] is inbox
    assert row.problem == ""
    assert row.details["connected_since"]
    assert row.details["last_message_at"]
    assert row.details["destination"] == destination
    assert row.details["broker"] == "stomp://127.0.0.1:61613"
    assert row.queue_depth is None, "no probe configured: the depth is unknown, not zero"
    wait_for(lambda: messages_in_queue(destination) == 0, 20, "every message acked", interval=0.5)


def test_an_unknown_subject_is_ignored_and_acked(runners, lock_file, destination):
    send(destination, [subject_message("consumer.created"), subject_message("pool.created")])
    run_listener(runners, lock_file, destination, **DIRECT)
    row = wait_for(
        lambda: (r := status_row()).counters.get("ignored") == 1 and r.processed_count == 1 and r,
        10,
        "the unknown subject counted as ignored, the other as processed",
    )
    assert Handling.objects.count() == 1
    assert not Event.objects.exists()
    assert row.failed_count == 0
    wait_for(lambda: messages_in_queue(destination) == 0, 20, "both acked", interval=0.5)


# -- failures ----------------------------------------------------------------------------------


def test_a_failing_handler_goes_to_the_event_queue_is_retried_then_kept_dead(runners, lock_file, destination, caplog):
    message = subject_message("testing.fail")
    send(destination, [message])
    run_listener(runners, lock_file, destination, **DIRECT, event_queue={"MAX_ATTEMPTS": 3})

    dead = wait_for(lambda: Event.objects.filter(state=Event.DEAD).first(), 20, "retried, then kept as dead")
    assert (dead.event_type, dead.attempts) == (MESSAGE_EVENT, 3)
    assert dead.object_id == dead.metadata["headers"]["message-id"], "one event per message: nothing coalesces"
    assert dead.metadata["subject"] == "testing.fail"
    assert dead.metadata["body"]["id"] == uid_of(message)
    assert f"RuntimeError: cannot handle message {uid_of(message)}" in dead.last_error
    assert "hunter2" not in dead.last_error
    assert not any("hunter2" in r.getMessage() for r in caplog.records)
    row = wait_for(lambda: (r := status_row()).failed_count == 1 and r, 10, "the listener counted one failure")
    assert row.counters["deferred"] == 1
    assert row.processed_count == 0
    wait_for(lambda: messages_in_queue(destination) == 0, 20, "acked once stored", interval=0.5)


def test_a_stored_message_runs_again_with_its_subject_body_and_event_data(runners, lock_file, destination):
    message = subject_message("testing.fail_until_switched", eventData={"status": "valid"})
    send(destination, [message])
    run_listener(runners, lock_file, destination, **DIRECT, event_queue={"RETRY_BACKOFF": 0.3, "MAX_ATTEMPTS": 50})
    wait_for(lambda: Event.objects.filter(event_type=MESSAGE_EVENT, attempts__gte=1).exists(), 20, "retrying")
    Switch.objects.create(name=uid_of(message))
    [run] = wait_for(lambda: records(uid_of(message)), 20, "handled by the event queue once switched on")
    assert run.event_type == "testing.fail_until_switched"
    assert run.metadata["event_data"] == {"status": "valid"}
    wait_for(lambda: not Event.objects.exists(), 10, "the stored message is gone once handled")


def test_a_slow_handler_does_not_hold_back_the_commit_and_ack_of_the_message_before(runners, lock_file, destination):
    # Both wait in one burst; the burst's transaction ends once it has run ACK_DELAY.
    send(destination, [subject_message("testing.record", sleep=0.1), subject_message("testing.record", sleep=8)])
    run_listener(runners, lock_file, destination, **DIRECT)
    wait_for(lambda: Handling.objects.count() == 1, 10, "the first committed while the second handler runs")
    # The second handler sleeps 8 s: room enough, on a loaded machine, to see the first acked.
    wait_for(lambda: messages_in_queue(destination) == 1, 6, "the first is acked meanwhile", interval=0.2)
    wait_for(lambda: Handling.objects.count() == 2, 20, "the second committed once done")
    wait_for(lambda: messages_in_queue(destination) == 0, 10, "the second is acked once done", interval=0.3)


def test_retry_later_is_stored_for_later_and_is_not_a_failure(runners, lock_file, destination):
    send(destination, [subject_message("testing.retry_later", seconds=3600)])
    run_listener(runners, lock_file, destination, **DIRECT)
    event = wait_for(lambda: Event.objects.first(), 10, "stored for later")
    assert (event.state, event.attempts) == (Event.PENDING, 0)
    assert 3590 < (event.run_after - event.created_at).total_seconds() <= 3600
    row = wait_for(lambda: (r := status_row()).counters.get("retried_later") == 1 and r, 10, "counted")
    assert row.failed_count == 0


def test_a_handler_that_breaks_its_database_connection_still_gets_its_message_stored(
    runners, lock_file, destination, caplog
):
    send(destination, [subject_message("testing.lose_connection"), subject_message("pool.created")])
    runner = run_listener(runners, lock_file, destination, **DIRECT, event_queue=False)  # the stored message stays put
    wait_for(lambda: Handling.objects.count() == 1, 10, "the next message handled on a fresh connection")
    assert Event.objects.get().metadata["subject"] == "testing.lose_connection"
    assert snapshot(runner).counters["deferred"] == 1
    assert "database unreachable" not in caplog.text, "a broken session is replaced, not an outage"


def malformed_bodies(limit: int) -> st.SearchStrategy[bytes]:
    """Bodies the listener cannot understand, of every kind it must survive."""
    valid_json = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=10,
    )

    def no_subject(document: dict) -> dict:
        document.pop("target", None)
        return document

    def not_json(text: str) -> bool:
        try:
            json.loads(text)
        except ValueError:
            return True
        return False

    bad_utf8 = st.tuples(st.binary(max_size=50), st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"]), st.binary())
    return st.one_of(
        bad_utf8.map(b"".join),
        st.text(max_size=80).filter(not_json).map(str.encode),
        valid_json.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.text(max_size=8), valid_json, max_size=5)
        .map(no_subject)
        .map(lambda d: json.dumps(d).encode()),
        st.sampled_from(["NaN", "-Infinity", "1e999"]).map(
            lambda n: f'{{"target": "POOL", "type": "CREATED", "x": {n}}}'.encode()
        ),
        st.integers(2000, 5000).map(lambda depth: ("[" * depth + "]" * depth).encode()),
        st.integers(1, 300).map(
            lambda extra: b'{"target": "POOL", "type": "CREATED", "x": "' + b"a" * limit + b"a" * extra + b'"}'
        ),
    )


LIMIT = 16 * 1024


@pytest.fixture
def malformed_listener(runners, lock_file, destination):
    send(destination, [subject_message("pool.created")])  # declares the queue
    runner = run_listener(runners, lock_file, destination, **DIRECT, MAX_BODY_BYTES=LIMIT)
    wait_for(lambda: Handling.objects.count() == 1, 10, "the listener is consuming")
    return runner


@settings(
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(bodies=st.lists(malformed_bodies(LIMIT), min_size=10, max_size=20))
def test_malformed_messages_never_crash_the_listener_each_is_counted_acked_and_kept_dead(
    malformed_listener, destination, bodies
):
    runner = malformed_listener
    before = Event.objects.count()
    tags = [f"m{before + n}" for n in range(len(bodies))]
    handled = Handling.objects.count()
    # A valid message after the malformed ones: handled only once every one before it was dealt with.
    send(
        destination,
        [*[({"x-test": tag}, body) for tag, body in zip(tags, bodies, strict=True)], subject_message("pool.created")],
    )
    wait_for(lambda: Handling.objects.count() == handled + 1, 20, "the message after the malformed ones is handled")

    dead = {
        e.metadata["headers"]["x-test"]: e
        for e in Event.objects.filter(state=Event.DEAD)
        if "x-test" in e.metadata["headers"]
    }
    assert set(tags) <= set(dead), "each malformed message is kept as dead"
    for tag, body in zip(tags, bodies, strict=True):
        event = dead[tag]
        assert event.event_type == MESSAGE_EVENT
        assert event.last_error.startswith("malformed message: ")
        assert event.metadata["body_bytes"] == len(body)
        assert len(event.metadata["raw_body"]) <= 4 * dispatch.DEAD_BODY_COPY_BYTES
    state = snapshot(runner)
    assert state.running
    assert state.problem is None
    assert state.crashes == 0
    assert state.counters["dead"] == len(dead) == state.counters["failed"]


def test_after_the_malformed_ones_the_queue_is_empty(malformed_listener, destination):
    send(
        destination, [({}, b"\xff not json"), ({}, b"[]"), ({}, b'{"no": "subject"}'), subject_message("pool.created")]
    )
    wait_for(lambda: Handling.objects.count() == 2, 20, "the valid message after them handled")
    assert Event.objects.filter(state=Event.DEAD).count() == 3
    wait_for(lambda: messages_in_queue(destination) == 0, 20, "every malformed message acked", interval=0.5)


def test_a_database_outage_while_storing_leaves_the_message_to_the_broker(runners, lock_file, destination, monkeypatch):
    outage = {"on": True}
    real_push = dispatch.push_event

    def push(*args, **kwargs):
        if outage["on"]:
            raise OperationalError("could not connect to server: Connection refused")
        return real_push(*args, **kwargs)

    monkeypatch.setattr(dispatch, "push_event", push)
    send(destination, [subject_message("testing.fail")])
    runner = run_listener(runners, lock_file, destination, **DIRECT)
    wait_for(lambda: (problem(runner) or "").startswith("database unreachable"), 10, "reported")
    assert not Event.objects.exists()
    assert messages_in_queue(destination) == 1, "not acked: the broker keeps it"
    outage["on"] = False
    stored = wait_for(lambda: Event.objects.first(), 20, "stored once the database is back")
    assert stored.metadata["headers"]["redelivered"] == "true"
    wait_for(lambda: snapshot(runner).running and problem(runner) is None, 10, "the problem clears by itself")


# -- poison: what a handler raises, what was delivered before --------------------------------------


def test_a_base_exception_from_a_handler_fails_its_message_and_never_the_listener(runners, lock_file, destination):
    send(destination, [subject_message("testing.base_exception"), subject_message("pool.created")])
    runner = run_listener(runners, lock_file, destination, **DIRECT, event_queue=False)  # the stored message stays put
    wait_for(lambda: Handling.objects.count() == 1, 10, "the message after it handled")
    stored = wait_for(lambda: Event.objects.first(), 10, "the failed message stored for retry")
    assert (stored.metadata["subject"], stored.state) == ("testing.base_exception", Event.PENDING)
    state = wait_for(lambda: (s := snapshot(runner)).counters.get("deferred") == 1 and s, 10, "counted")
    assert state.counters["failed"] == 1
    assert state.counters["processed"] == 1
    assert state.running
    assert state.crashes == 0
    assert state.problem is None
    wait_for(lambda: messages_in_queue(destination) == 0, 20, "both acked", interval=0.5)


def test_a_redelivered_message_goes_through_the_event_queue_and_the_next_ones_keep_flowing(
    runners, lock_file, destination
):
    again, after = subject_message("testing.record"), subject_message("testing.record")
    send(destination, [again])
    leave_unacked(destination, 1)  # a consumer took it and went away: the broker delivers it again
    send(destination, [after])
    runner = run_listener(runners, lock_file, destination, **DIRECT, event_queue=False)
    wait_for(lambda: records(uid_of(after)), 10, "the next message handled directly")
    stored = Event.objects.get()
    assert stored.metadata["body"]["id"] == uid_of(again)
    assert stored.metadata["headers"]["redelivered"] == "true"
    assert not records(uid_of(again)), "the redelivered message was not handled by the listener"
    state = wait_for(lambda: (s := snapshot(runner)).counters.get("redelivered") == 1 and s, 10, "counted")
    assert state.counters["failed"] == 0
    assert state.counters["processed"] == 1
    wait_for(lambda: messages_in_queue(destination) == 0, 20, "acked once stored", interval=0.5)
    # The event queue runs it, under its retry and poison rules.
    drain_events()
    [run] = records(uid_of(again))
    assert run.metadata["redelivered"]
    assert not Event.objects.exists()


def test_the_message_in_hand_is_named_in_the_details(runners, lock_file, destination):
    send(destination, [subject_message("testing.record", sleep=2)])
    runner = run_listener(runners, lock_file, destination, **DIRECT)
    handling = wait_for(lambda: snapshot(runner).details.get("handling"), 10, "the handler is running")
    assert handling["subject"] == "testing.record"
    assert handling["message_id"].startswith("T_")
    assert datetime.fromisoformat(handling["since"]).tzinfo is not None
    wait_for(lambda: status_row().details.get("handling"), 10, "in the status row too")
    wait_for(lambda: snapshot(runner).details.get("handling") is None, 10, "nothing in hand once done")


# -- fencing ---------------------------------------------------------------------------------------


@pytest.fixture
def fenced_listener(destination):
    """A listener on the direct path, holding the runner's term taken now."""
    with fenced_listener_thread(destination, **DIRECT) as handler:
        yield handler


def test_a_deposed_listener_acks_nothing_drops_the_connection_and_consumes_no_more(fenced_listener, destination):
    handler = fenced_listener
    send(destination, [subject_message("testing.record")])
    wait_for(lambda: Handling.objects.count() == 1, 10, "handled while its runner holds the role")
    wait_for(lambda: messages_in_queue(destination) == 0, 20, "and acked", interval=0.3)
    take_epoch("successor", os.getpid(), lock_timeout=5)  # another runner takes the role
    later = [subject_message("testing.record") for _ in range(3)]
    send(destination, later)
    wait_for(lambda: handler.status().problem == DEPOSED, 10, "reported")
    assert handler.details()["broker"] is None, "the connection is dropped"
    wait_for(lambda: consumers_of(destination) == 0, 20, "unsubscribed", interval=0.3)
    assert messages_in_queue(destination) == 3, "none acked: the broker keeps them for the next runner"
    # Its loop goes on (it ticks) without consuming again, until its runner stops it.
    ticked = handler.status().last_tick
    wait_for(lambda: handler.status().last_tick > ticked + 0.5, 5, "the loop still turns")
    assert handler.connection is None
    assert consumers_of(destination) == 0
    assert Handling.objects.count() == 1
    assert not Event.objects.exists()
