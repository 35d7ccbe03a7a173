"""Batch handlers: ``@event_handler(type, batch_size=N)`` gets many events per call; a failed
call retries its events, and a PartialFailure only the objects it names."""

from __future__ import annotations

import pytest
from django.db import transaction

import katello_events
from katello_events.models import Event
from katello_events.registry import BatchHandler, event_handlers
from tests.conftest import make_runner, start
from tests.eventsapp.models import Handling
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "katello_events.handlers.event_queue.EventQueueHandler"
FAST = {"POLL_INTERVAL": 0.2, "RETRY_BACKOFF": 0.2, "RETRY_BACKOFF_MAX": 0.5, "STATS_INTERVAL": 0.1}


def run_queue(runners, lock_file, **options):
    options = {**FAST, "CONCURRENCY": 1, **options}
    return start(runners, make_runner(lock_file, {"katello_events": (QUEUE, options)}))


def push_all(events: list[tuple[str, dict]]) -> None:
    with transaction.atomic():
        for object_id, metadata in events:
            katello_events.push_event("test.batch", object_id, metadata)


def calls() -> dict[str, list[Handling]]:
    by_call: dict[str, list[Handling]] = {}
    for run in Handling.objects.filter(event_type="test.batch").order_by("id"):
        by_call.setdefault(run.metadata["call"], []).append(run)
    return by_call


def test_a_batch_handler_gets_distinct_coalesced_events_in_calls_of_at_most_its_size(runners, lock_file):
    push_all([(f"host-{n}", {"uid": f"u{n}"}) for n in range(12)] + [("host-0", {"uid": "u0-newer"})])
    run_queue(runners, lock_file)
    wait_for(lambda: not Event.objects.exists(), 20, "drained")
    sizes = sorted(len(runs) for runs in calls().values())
    assert sizes == [2, 5, 5], "12 distinct hosts in calls of at most 5"
    runs = Handling.objects.filter(event_type="test.batch")
    assert sorted(r.object_id for r in runs) == sorted(f"host-{n}" for n in range(12)), "each host once"
    host0 = runs.get(object_id="host-0")
    assert (host0.coalesced, host0.metadata["uid"]) == (2, "u0-newer")


def test_a_call_fills_up_beyond_batch_size_from_a_deep_queue(runners, lock_file):
    push_all([(f"host-{n}", {"uid": f"u{n}"}) for n in range(10)])
    run_queue(runners, lock_file, BATCH_SIZE=2)
    wait_for(lambda: not Event.objects.exists(), 20, "drained")
    assert sorted(len(runs) for runs in calls().values()) == [5, 5], "calls of the handler's size, not BATCH_SIZE"


def test_a_partial_failure_retries_only_the_objects_it_names(runners, lock_file):
    push_all([(f"host-{n}", {"uid": f"u{n}", "fail": n in (3, 7)}) for n in range(10)])
    run_queue(runners, lock_file, MAX_ATTEMPTS=2)
    wait_for(lambda: Event.objects.filter(state=Event.DEAD).count() == 2, 20, "the two failing hosts end dead")
    assert not Event.objects.filter(state=Event.PENDING).exists()
    dead = {e.object_id: e for e in Event.objects.all()}
    assert set(dead) == {"host-3", "host-7"}
    assert all(e.attempts == 2 and "these hosts were not found" in e.last_error for e in dead.values())
    committed = [r.object_id for r in Handling.objects.filter(event_type="test.batch")]
    others = [f"host-{n}" for n in range(10) if n not in (3, 7)]
    assert sorted(o for o in committed if o in others) == sorted(others), "the others were done once, not retried"
    row = runners[0].supervisor.slots[0].stats.counters()
    assert row["failed"] == 4  # two objects, two attempts each


def test_a_call_that_raises_retries_every_event_of_that_call(runners, lock_file):
    push_all([(f"host-{n}", {"uid": f"u{n}", "explode": n == 0}) for n in range(4)])
    with transaction.atomic():
        katello_events.push_event("test.record", "bystander", {"uid": "b"})
    run_queue(runners, lock_file, MAX_ATTEMPTS=2)
    wait_for(lambda: Event.objects.filter(state=Event.DEAD).count() == 1, 20, "the exploding host ends dead")
    wait_for(lambda: not Event.objects.filter(state=Event.PENDING).exists(), 20, "the others are done")
    assert Event.objects.get().object_id == "host-0"
    assert Handling.objects.filter(object_id="bystander").count() == 1, "another handler's event is unaffected"
    # Every event of the failed call was retried (a careful try, alone), and the failed call's
    # writes rolled back: one committed run each, on the second attempt.
    retried = Handling.objects.filter(event_type="test.batch").exclude(object_id="host-0")
    assert sorted((r.object_id, r.attempts, r.metadata["size"]) for r in retried) == [
        ("host-1", 1, 1), ("host-2", 1, 1), ("host-3", 1, 1),
    ]  # fmt: skip


def test_the_decorator_keeps_the_function_and_checks_the_size():
    function = event_handlers.get("test.batch")
    assert isinstance(function, BatchHandler)
    assert function.batch_size == 5
    with pytest.raises(TypeError, match="batch_size"):
        katello_events.event_handler("test.never", batch_size=0)


def test_a_partial_failure_in_a_call_of_its_own_keeps_the_calls_writes(runners, lock_file):
    with transaction.atomic():
        katello_events.push_event("test.fail", "first", {"uid": "f"})  # fails the fast batch first
    push_all([(f"host-{n}", {"uid": f"u{n}", "fail": n == 2}) for n in range(4)])
    run_queue(runners, lock_file, MAX_ATTEMPTS=2)
    wait_for(lambda: Event.objects.filter(state=Event.DEAD).count() == 2, 20, "test.fail and host-2 end dead")
    runs = Handling.objects.filter(event_type="test.batch")
    # The batch rolled back; the batch handler's call then ran in a transaction of its own,
    # where its PartialFailure kept its writes: one run each, host-2's first one included,
    # then host-2's retry (alone) failed again and was rolled back.
    assert sorted(r.object_id for r in runs) == ["host-0", "host-1", "host-2", "host-3"]
    assert {r.metadata["size"] for r in runs} == {4}
    assert Event.objects.get(object_id="host-2").attempts == 2
