"""The listener's bursts against real PostgreSQL, without a broker: sorting messages on arrival,
one fenced transaction per burst, the one-by-one rerun after a failure, redelivered and seen
messages stored for the event queue, a deposed runner committing nothing.

Fences are real (``take_epoch``) where the test is about fencing, and a counting fake where it is
about how many transactions a burst took.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest
from django.db import DatabaseError, IntegrityError, connection

from katello_events.candlepin.burst import BurstRunner, SpoiltTransaction
from katello_events.candlepin.connection import ACK_DELAY
from katello_events.candlepin.dispatch import (
    DEAD,
    DEFERRED,
    IGNORE,
    MALFORMED,
    MESSAGE_EVENT,
    PROCESSED,
    REDELIVERED,
    RETRY_LATER,
    RUN,
    STORE,
    Dispatcher,
    handle_stored_message,
)
from katello_events.candlepin.recent import RecentIds
from katello_events.event_queue.types import QueuedEvent, RetryLater
from katello_events.fencing import Deposed, Fence, queue_alias, take_epoch
from katello_events.models import Event
from katello_events.registry import HandlerRegistry
from tests.candlepin_support import subject_message, uid_of
from tests.eventsapp.events import record_message
from tests.eventsapp.models import Handling

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

LIMIT = 1024 * 1024


class CountingFence:
    """A fence that counts its checks (one per transaction) and is deposed after ``current_for``."""

    epoch = 1

    def __init__(self, current_for: int | None = None) -> None:
        self.checks = 0
        self.current_for = current_for

    def check(self, using: str | None = None) -> None:
        assert connection.in_atomic_block, "the fence is checked inside the transaction it guards"
        self.checks += 1
        if self.current_for is not None and self.checks > self.current_for:
            raise Deposed("superseded")


class Calls:
    """Message handlers that count their calls per message, by the body's id."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def note(self, message) -> None:
        self.counts[message.body["id"]] = self.counts.get(message.body["id"], 0) + 1

    def record(self, message) -> None:
        self.note(message)
        record_message(message)

    def fail(self, message) -> None:
        self.note(message)
        raise RuntimeError(f"cannot handle {message.body['id']}")


def bursts(functions: dict, fence=None) -> BurstRunner:
    registry = HandlerRegistry("message subject")
    for subject, function in functions.items():
        registry.register(subject, function)
    return BurstRunner(Dispatcher(LIMIT, registry), fence or CountingFence(), queue_alias(), tick=lambda: None)


def frame(subject: str = "testing.record", **headers: str) -> tuple[dict[str, str], bytes]:
    frame_headers, body = subject_message(subject)
    return {**frame_headers, "message-id": uuid.uuid4().hex, **headers}, body


def settle(runner: BurstRunner, frames: list[tuple[dict[str, str], bytes]]) -> list[str]:
    items = [runner.dispatcher.prepare(headers, body) for headers, body in frames]
    return list(runner.run(items))


def handled(frames) -> list[int]:
    """Committed Handling rows per message, in order."""
    return [Handling.objects.filter(uid=uid_of(f)).count() for f in frames]


# -- sorting on arrival ----------------------------------------------------------------------------


def test_messages_are_sorted_on_arrival():
    dispatcher = Dispatcher(LIMIT, _registry("testing.record"))
    assert dispatcher.prepare(*frame()).kind == RUN
    assert dispatcher.prepare(*frame("consumer.created")).kind == IGNORE
    assert dispatcher.prepare(*frame(redelivered="true")).kind == STORE
    assert dispatcher.prepare({"redelivered": "true"}, b"\xff").kind == MALFORMED  # kept dead, as ever
    assert dispatcher.prepare(*frame("consumer.created", redelivered="true")).kind == IGNORE  # nothing to run


def test_a_message_id_seen_before_is_a_redelivery_even_without_the_header():
    dispatcher = Dispatcher(LIMIT, _registry("testing.record"))
    headers, body = frame()
    assert dispatcher.prepare(headers, body).kind == RUN
    assert dispatcher.prepare(headers, body).kind == STORE
    assert dispatcher.prepare({**headers, "message-id": "another"}, body).kind == RUN


def test_the_memory_of_message_ids_is_bounded_oldest_forgotten_first():
    recent = RecentIds(size=3)
    assert [recent.seen_before(i) for i in ("a", "b", "c", "a")] == [False, False, False, True]
    assert not recent.seen_before("d")
    assert len(recent) == 3
    assert not recent.seen_before("a"), "the oldest was forgotten"
    assert not recent.seen_before(None), "no id: never a redelivery"
    assert not recent.seen_before(""), "no id: never a redelivery"


def _registry(*subjects: str) -> HandlerRegistry:
    registry = HandlerRegistry("message subject")
    for subject in subjects:
        registry.register(subject, record_message)
    return registry


# -- one transaction per burst ---------------------------------------------------------------------


def test_a_burst_runs_in_one_transaction_with_one_fence_check():
    transactions = set()

    def record_in_transaction(message) -> None:
        assert connection.in_atomic_block
        with connection.cursor() as cursor:
            cursor.execute("SELECT txid_current()")
            transactions.add(cursor.fetchone()[0])
        record_message(message)

    fence = CountingFence()
    runner = bursts({"testing.record": record_in_transaction}, fence)
    frames = [frame() for _ in range(10)]
    assert settle(runner, frames) == [PROCESSED] * 10
    assert fence.checks == 1
    assert len(transactions) == 1
    assert handled(frames) == [1] * 10


def test_a_transaction_ends_once_it_has_run_ack_delay_and_the_burst_goes_on_in_the_next():
    fence, calls = CountingFence(), Calls()

    def slow(message) -> None:
        calls.record(message)
        time.sleep(ACK_DELAY * 1.5)

    runner = bursts({"testing.record": calls.record, "testing.slow": slow}, fence)
    frames = [frame("testing.slow"), frame(), frame()]
    outcomes = runner.run([runner.dispatcher.prepare(*f) for f in frames])
    assert next(outcomes) == PROCESSED
    assert handled(frames) == [1, 0, 0], "the slow handler's message committed before the next ones ran"
    assert list(outcomes) == [PROCESSED, PROCESSED]
    assert fence.checks == 2
    assert handled(frames) == [1, 1, 1]


# -- a failure: rolled back, then one by one ------------------------------------------------------


def test_a_failure_rolls_the_burst_back_and_its_messages_run_again_one_at_a_time():
    fence, calls = CountingFence(), Calls()
    runner = bursts({"testing.record": calls.record, "testing.fail": calls.fail}, fence)
    frames = [frame(), frame(), frame("testing.fail"), frame(), frame()]
    assert settle(runner, frames) == [PROCESSED, PROCESSED, DEFERRED, PROCESSED, PROCESSED]
    ids = [uid_of(f) for f in frames]
    # The first three ran in the burst (rolled back), then alone; the last two after, together.
    assert [calls.counts[i] for i in ids] == [2, 2, 2, 1, 1]
    assert handled(frames) == [1, 1, 0, 1, 1], "each effect committed once, the failed one's never"
    # burst; alone x3 (the failed one's store in a transaction of its own too); the rest together
    assert fence.checks == 1 + 3 + 1 + 1
    stored = Event.objects.get()
    assert (stored.event_type, stored.state, stored.attempts) == (MESSAGE_EVENT, Event.PENDING, 0)
    assert stored.metadata["subject"] == "testing.fail"
    assert stored.metadata["body"]["id"] == ids[2]
    assert stored.object_id == frames[2][0]["message-id"]


def test_a_handler_that_fails_first_in_its_transaction_is_not_run_again():
    fence, calls = CountingFence(), Calls()
    runner = bursts({"testing.record": calls.record, "testing.fail": calls.fail}, fence)
    frames = [frame("testing.fail"), frame()]
    assert settle(runner, frames) == [DEFERRED, PROCESSED]
    assert [calls.counts[uid_of(f)] for f in frames] == [1, 1]
    assert fence.checks == 3  # the burst; the failed message's store; the rest of the burst


@pytest.mark.parametrize("kind", [SystemExit, KeyboardInterrupt, GeneratorExit])
def test_a_base_exception_from_a_handler_is_a_failure_of_its_message(kind):
    def leave(message) -> None:
        raise kind(3)

    runner = bursts({"testing.record": record_message, "testing.leave": leave})
    frames = [frame(), frame("testing.leave"), frame()]
    assert settle(runner, frames) == [PROCESSED, DEFERRED, PROCESSED]
    assert Event.objects.get().metadata["subject"] == "testing.leave"
    assert handled(frames) == [1, 0, 1]


def test_retry_later_is_stored_due_after_its_delay():
    def later(message) -> None:
        raise RetryLater(3600, "busy")

    runner = bursts({"testing.record": record_message, "testing.later": later})
    frames = [frame(), frame("testing.later")]
    assert settle(runner, frames) == [PROCESSED, RETRY_LATER]
    event = Event.objects.get()
    assert 3590 < (event.run_after - event.created_at).total_seconds() <= 3600


@pytest.mark.parametrize("how", ["raw cursor", "ORM"])
def test_a_database_error_caught_inside_a_handler_fails_its_message_not_the_others(how, caplog):
    def swallow(message) -> None:
        try:
            if how == "ORM":  # Django marks the transaction for rollback
                Handling.objects.create(id=Handling.objects.get().id, event_type="x", pid=0, attempts=0, coalesced=1)
            else:  # only libpq knows
                with connection.cursor() as cursor:
                    cursor.execute("SELECT 1/0")
        except (IntegrityError, DatabaseError):
            pass  # committing now would roll back every message of the transaction, silently

    runner = bursts({"testing.record": record_message, "testing.swallow": swallow})
    frames = [frame(), frame("testing.swallow"), frame()]
    assert settle(runner, frames) == [PROCESSED, DEFERRED, PROCESSED]
    assert handled(frames) == [1, 0, 1]
    assert Event.objects.get().metadata["subject"] == "testing.swallow"
    assert f"failed; stored as event #{Event.objects.get().id} for retry: {SpoiltTransaction.__name__}" in caplog.text


def test_a_handler_that_ends_its_database_session_fails_alone_and_its_message_is_stored():
    def lose_connection(message) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    runner = bursts({"testing.record": record_message, "testing.lose_connection": lose_connection})
    frames = [frame(), frame("testing.lose_connection"), frame()]
    assert settle(runner, frames) == [PROCESSED, DEFERRED, PROCESSED]
    assert handled(frames) == [1, 0, 1]
    assert Event.objects.get().metadata["subject"] == "testing.lose_connection"


# -- messages delivered before: stored for the event queue ---------------------------------------


def test_a_redelivered_message_is_stored_for_the_event_queue_and_not_handled_here():
    calls = Calls()
    runner = bursts({"testing.record": calls.record})
    again = frame(redelivered="true")
    frames = [frame(), again, frame()]
    assert settle(runner, frames) == [PROCESSED, REDELIVERED, PROCESSED]
    assert uid_of(again) not in calls.counts
    assert handled(frames) == [1, 0, 1]
    event = Event.objects.get()
    assert (event.event_type, event.state, event.attempts) == (MESSAGE_EVENT, Event.PENDING, 0)
    assert event.object_id == again[0]["message-id"]
    assert set(event.metadata) == {"subject", "headers", "body"}, "the shape a failed message is stored in"
    # What the event queue then does with it: the same handler, with the same message.
    queued = QueuedEvent(event.id, event.event_type, event.object_id, event.metadata, 0, event.created_at)
    handle_stored_message(queued, runner.dispatcher.registry)
    assert calls.counts[uid_of(again)] == 1
    assert handled(frames) == [1, 1, 1]


def test_a_malformed_redelivered_message_is_kept_dead_as_ever():
    runner = bursts({"testing.record": record_message})
    assert settle(runner, [({"redelivered": "true"}, b"[1]")]) == [DEAD]
    assert Event.objects.get().state == Event.DEAD


def test_a_message_received_twice_is_handled_once_here_then_stored():
    calls = Calls()
    runner = bursts({"testing.record": calls.record})
    twice = frame()
    assert settle(runner, [twice]) == [PROCESSED]
    assert settle(runner, [twice]) == [REDELIVERED]
    assert calls.counts[uid_of(twice)] == 1
    assert Event.objects.count() == 1


# -- fencing ---------------------------------------------------------------------------------------


def test_a_deposed_runner_commits_nothing_and_runs_no_handler():
    calls = Calls()
    fence = Fence(take_epoch("test", os.getpid(), lock_timeout=5))
    runner = bursts({"testing.record": calls.record}, fence)
    frames = [frame(), frame(redelivered="true")]
    assert settle(runner, [frames[0]]) == [PROCESSED], "current: handled"
    take_epoch("successor", os.getpid(), lock_timeout=5)  # another runner takes the role
    with pytest.raises(Deposed):
        settle(runner, [frame(), *frames[1:]])
    assert Handling.objects.count() == 1
    assert not Event.objects.exists()
    assert sum(calls.counts.values()) == 1


def test_deposed_during_the_one_by_one_rerun_keeps_what_committed_before():
    fence, calls = CountingFence(current_for=2), Calls()  # the burst and one message alone
    runner = bursts({"testing.record": calls.record, "testing.fail": calls.fail}, fence)
    frames = [frame(), frame("testing.fail"), frame()]
    outcomes = runner.run([runner.dispatcher.prepare(*f) for f in frames])
    assert next(outcomes) == PROCESSED
    with pytest.raises(Deposed):
        next(outcomes)
    assert handled(frames) == [1, 0, 0]
    assert not Event.objects.exists(), "no store of the failed message"


def test_the_message_in_hand_is_known_while_its_handler_runs():
    seen = []

    def look(message) -> None:
        seen.append(runner.current)

    runner = bursts({"testing.record": look})
    headers, body = frame()
    before = time.time()
    settle(runner, [(headers, body)])
    [(subject, message_id, since)] = seen
    assert (subject, message_id) == ("testing.record", headers["message-id"])
    assert before <= since <= time.time()
    assert runner.current is None, "idle again"


def test_after_a_burst_the_connection_is_back_in_autocommit():
    runner = bursts({"testing.record": record_message, "testing.fail": Calls().fail})
    settle(runner, [frame(), frame("testing.fail")])
    assert not connection.in_atomic_block
    assert connection.get_autocommit()
