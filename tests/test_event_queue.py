"""The durable event queue against real PostgreSQL, consumed by a real in-process runner."""

from __future__ import annotations

import itertools
import json
import threading
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.utils import timezone

import katello_events
from katello_events.event_queue.batch import RetryPolicy, group_rows
from katello_events.models import Event, HandlerStatus
from tests.conftest import make_runner, start
from tests.eventsapp.models import Handling, Switch
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "katello_events.handlers.event_queue.EventQueueHandler"
FAST = {"POLL_INTERVAL": 0.2, "RETRY_BACKOFF": 0.2, "RETRY_BACKOFF_MAX": 1.0, "STATS_INTERVAL": 0.1}


def run_queue(runners, lock_file, **options):
    return start(runners, make_runner(lock_file, {"katello_events": (QUEUE, {**FAST, **options})}))


def queue_drained() -> bool:
    return not Event.objects.filter(state=Event.PENDING).exists()


def handled(object_id: str) -> list[Handling]:
    return list(Handling.objects.filter(object_id=object_id).order_by("id"))


def status_row() -> HandlerStatus:
    return HandlerStatus.objects.get(name="katello_events")


# -- push_event ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("no.such.type", 1), {}, katello_events.UnknownEventType, "no handler is registered for event type"),
        (("test.record", None), {}, TypeError, "object_id must be an int or a str"),
        (("test.record", True), {}, TypeError, "object_id must be an int or a str"),
        (("test.record", 1.5), {}, TypeError, "object_id must be an int or a str"),
        (("test.record", ""), {}, ValueError, "1 to 255 characters"),
        (("test.record", "x" * 256), {}, ValueError, "1 to 255 characters"),
        (("test.record", 1, {1, 2}), {}, TypeError, "JSON-serialisable"),
        (("test.record", 1, {"x": float("nan")}), {}, TypeError, "JSON-serialisable"),
        (("test.record", 1), {"delay": -1}, ValueError, "must not be negative"),
        (("test.record", 1), {"delay": "soon"}, TypeError, "seconds or a timedelta"),
        # Found by the chaos suite's fuzzing: these reached the database (DataError, breaking the
        # caller's transaction) or overflowed in timedelta with an unclear OverflowError.
        (("test.record", "a\x00b"), {}, ValueError, "object_id must not contain NUL"),
        (("test.record", "\ud800"), {}, ValueError, "object_id must be valid Unicode text"),
        (("test.record", 1, {"k": "a\x00b"}), {}, ValueError, "metadata must not contain NUL"),
        (("test.record", 1, {"\x00": 1}), {}, ValueError, "metadata must not contain NUL"),
        (("test.record", 1, ["\udc80"]), {}, ValueError, "metadata must be valid Unicode text"),
        (("test.record", 1), {"delay": float("inf")}, ValueError, "finite number of seconds"),
        (("test.record", 1), {"delay": float("nan")}, ValueError, "finite number of seconds"),
        (("test.record", 1), {"delay": 10**20}, ValueError, "at most 36500 days"),
        (("test.record", 1), {"delay": -1e15}, ValueError, "must not be negative"),
        (("test.record", 1), {"delay": timedelta.max}, ValueError, "at most 36500 days"),
    ],
)
def test_bad_push_arguments_raise_clear_errors_and_write_nothing(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        katello_events.push_event(*args, **kwargs)
    assert not Event.objects.exists()


def test_push_joins_the_callers_transaction():
    seen_from_outside = []

    def count_elsewhere():
        seen_from_outside.append(Event.objects.count())
        connection.close()

    with transaction.atomic():
        event_id = katello_events.push_event("test.record", 7, {"a": 1})
        thread = threading.Thread(target=count_elsewhere)
        thread.start()
        thread.join()
    assert seen_from_outside == [0]
    event = Event.objects.get(id=event_id)
    assert (event.event_type, event.object_id, event.metadata, event.state) == ("test.record", "7", {"a": 1}, "pending")


def test_a_rolled_back_push_leaves_nothing():
    # PT012: raising inside the transaction is the point: it rolls the push back.
    with pytest.raises(RuntimeError), transaction.atomic():  # noqa: PT012
        katello_events.push_event("test.record", 1)
        raise RuntimeError("the caller's work failed")
    assert not Event.objects.exists()


def test_delay_defers_by_the_database_clock():
    katello_events.push_event("test.record", 1, delay=timedelta(minutes=5))
    katello_events.push_event("test.record", 2, delay=90)
    soon, later = Event.objects.order_by("id")
    assert timedelta(minutes=4) < soon.run_after - soon.created_at <= timedelta(minutes=5)
    assert timedelta(seconds=89) < later.run_after - later.created_at <= timedelta(seconds=90)


# -- consuming -------------------------------------------------------------------------------


def test_coalescing_runs_each_pair_once_with_the_newest_metadata(runners, lock_file):
    with transaction.atomic():
        for n in range(10):
            katello_events.push_event("test.record", "cv-1", {"n": n})
        katello_events.push_event("test.record", "cv-2", {"n": 0})
    run_queue(runners, lock_file)
    wait_for(queue_drained, 10, "queue drained")
    [run] = handled("cv-1")
    assert (run.metadata, run.coalesced) == ({"n": 9}, 10)
    assert len(handled("cv-2")) == 1
    wait_for(lambda: status_row().processed_count == 2, 5, "processed counted per handler run")
    assert status_row().counters["coalesced"] == 9


def test_twins_beyond_a_full_batch_are_swept_in(runners, lock_file):
    with transaction.atomic():
        katello_events.push_event("test.record", "twin", {"n": 0})
        for n in range(10):
            katello_events.push_event("test.record", f"other-{n}")
        for n in range(1, 4):
            katello_events.push_event("test.record", "twin", {"n": n})
    run_queue(runners, lock_file, BATCH_SIZE=5)
    wait_for(queue_drained, 10, "queue drained")
    [run] = handled("twin")
    assert (run.metadata, run.coalesced) == ({"n": 3}, 4)
    assert Handling.objects.count() == 11


def test_delay_debounces_a_pair_runs_once_when_its_first_event_is_due(runners, lock_file):
    run_queue(runners, lock_file)
    with transaction.atomic():
        katello_events.push_event("test.record", "composite-1", {"n": 0}, delay=1.0)
    for n in range(1, 10):  # ten quick pushes, each its own transaction
        katello_events.push_event("test.record", "composite-1", {"n": n}, delay=1.0)
    wait_for(queue_drained, 15, "handled once due")
    [run] = handled("composite-1")
    assert (run.metadata, run.coalesced) == ({"n": 9}, 10)


def test_an_event_pushed_while_its_twin_runs_runs_again_afterwards(runners, lock_file, tmp_path):
    mark = tmp_path / "started"
    run_queue(runners, lock_file)
    katello_events.push_event("test.record", "host-1", {"n": 1, "sleep": 1.0, "mark": str(mark)})
    wait_for(mark.exists, 10, "first run started")
    katello_events.push_event("test.record", "host-1", {"n": 2})
    wait_for(lambda: len(handled("host-1")) == 2, 15, "the second push ran too")
    assert [r.metadata["n"] for r in handled("host-1")] == [1, 2]
    assert queue_drained()


def test_failures_retry_with_backoff_then_stay_dead_with_their_error(runners, lock_file, caplog):
    katello_events.push_event("test.fail", "pool-9")
    run_queue(runners, lock_file, MAX_ATTEMPTS=3)
    dead = wait_for(lambda: Event.objects.filter(state=Event.DEAD).first(), 20, "event kept as dead")
    assert dead.attempts == 3
    assert "RuntimeError: cannot handle pool-9" in dead.last_error
    assert "Traceback" in dead.last_error
    assert "abc123" not in dead.last_error
    assert not Handling.objects.exists(), "the failing handler's own writes were rolled back"
    messages = [r.getMessage() for r in caplog.records if "pool-9" in r.getMessage()]
    assert "(attempt 1 of 3), retrying in 0.2s" in messages[0]
    assert "(attempt 2 of 3), retrying in 0.4s" in messages[1]
    assert "(attempt 3 of 3), kept as dead" in messages[2]
    assert all(r.exc_info for r in caplog.records if "pool-9" in r.getMessage())
    wait_for(lambda: status_row().failed_count == 3, 5, "every failed attempt counted")
    assert status_row().counters["dead"] == 1


def test_one_failing_event_costs_the_rest_of_its_batch_nothing(runners, lock_file):
    with transaction.atomic():
        for n in range(5):
            katello_events.push_event("test.record", f"ok-{n}")
        katello_events.push_event("test.fail", "bad")
        for n in range(5, 10):
            katello_events.push_event("test.record", f"ok-{n}")
    run_queue(runners, lock_file, MAX_ATTEMPTS=1)
    wait_for(queue_drained, 10, "queue drained")
    assert sorted(h.object_id for h in Handling.objects.all()) == sorted(f"ok-{n}" for n in range(10))
    assert Handling.objects.count() == 10, "each healthy event ran once"
    assert Event.objects.get().state == Event.DEAD


def test_retry_later_is_neither_a_failure_nor_lost(runners, lock_file):
    katello_events.push_event("test.retry_later_until_switched", "cv-3", {"seconds": 0.5})
    run_queue(runners, lock_file)
    wait_for(lambda: status_row().counters.get("retried_later", 0) >= 1, 10, "deferred by RetryLater")
    Switch.objects.create(name="cv-3")
    wait_for(queue_drained, 10, "handled after the delay")
    [run] = handled("cv-3")
    assert run.attempts == 0
    wait_for(lambda: status_row().processed_count == 1, 5, "processed counted")
    assert status_row().failed_count == 0


def test_an_event_type_without_handler_at_consume_time_is_kept_dead(runners, lock_file):
    Event.objects.create(event_type="removed.type", object_id="1")
    run_queue(runners, lock_file)
    dead = wait_for(lambda: Event.objects.filter(state=Event.DEAD).first(), 10, "kept as dead")
    assert "no handler is registered for event type 'removed.type'" in dead.last_error


def test_notify_wakes_the_consumer_without_waiting_for_the_poll(runners, lock_file):
    run_queue(runners, lock_file, POLL_INTERVAL=60)
    wait_for(lambda: status_row().details.get("notify"), 10, "listening")
    pushed = time.monotonic()
    katello_events.push_event("test.record", "fast")
    wait_for(lambda: handled("fast"), 10, "picked up")
    assert time.monotonic() - pushed < 10, "far below the 60 s poll interval"


def test_queue_gauges_reach_the_status_row(runners, lock_file):
    katello_events.push_event("test.record", "later", delay=3600)
    Event.objects.create(event_type="test.record", object_id="d", state=Event.DEAD)
    run_queue(runners, lock_file)
    row = wait_for(lambda: (r := status_row()).details.get("deferred") == 1 and r, 10, "gauges written")
    assert row.queue_depth == 0
    assert row.details["dead"] == 1
    assert row.details["oldest_pending_age_s"] is None


# -- commands --------------------------------------------------------------------------------


def test_requeue_events_puts_dead_events_back_by_id_type_or_all(runners, lock_file):
    for name in ("a", "b", "c"):
        Event.objects.create(event_type="test.fail_until_switched", object_id=name, state=Event.DEAD, attempts=5)
    Event.objects.create(event_type="test.record", object_id="d", state=Event.DEAD, attempts=5)
    with pytest.raises(CommandError, match="--all"):
        call_command("requeue_events")

    first = Event.objects.get(object_id="a")
    out = StringIO()
    call_command("requeue_events", "--id", str(first.id), stdout=out)
    assert "1 dead event(s) requeued" in out.getvalue()
    call_command("requeue_events", "--type", "test.record", stdout=out)
    assert set(Event.objects.filter(state=Event.PENDING).values_list("object_id", flat=True)) == {"a", "d"}
    assert Event.objects.get(object_id="a").attempts == 0

    Switch.objects.bulk_create([Switch(name=n) for n in "abc"])
    call_command("requeue_events", "--all", stdout=out)
    run_queue(runners, lock_file)
    wait_for(lambda: not Event.objects.exists(), 10, "requeued events handled")
    assert sorted(h.object_id for h in Handling.objects.all()) == ["a", "b", "c", "d"]


def test_prune_events_deletes_old_dead_events_only():
    old = timezone.now() - timedelta(days=40)
    Event.objects.create(event_type="test.record", object_id="old-dead", state=Event.DEAD)
    Event.objects.create(event_type="test.record", object_id="new-dead", state=Event.DEAD)
    Event.objects.create(event_type="test.record", object_id="old-pending")
    Event.objects.filter(object_id__startswith="old").update(updated_at=old)
    out = StringIO()
    call_command("prune_events", "--older-than", "30", stdout=out)
    assert "1 dead event(s) older than 30 day(s) deleted" in out.getvalue()
    assert set(Event.objects.values_list("object_id", flat=True)) == {"new-dead", "old-pending"}


# -- pure parts ------------------------------------------------------------------------------


def test_retry_policy_doubles_up_to_its_cap():
    policy = RetryPolicy(max_attempts=9, backoff=10, backoff_max=60)
    assert [policy.delay_after(n) for n in range(1, 6)] == [10, 20, 40, 60, 60]


def test_group_rows_orders_groups_by_their_oldest_event():
    now = timezone.now()
    rows = [
        (5, "t", "b", None, 0, now),
        (1, "t", "a", None, 0, now),
        (3, "t", "b", None, 2, now),
        (9, "t", "a", {}, 1, now),
    ]
    groups = group_rows(rows)
    assert [(g.object_id, g.ids) for g in groups] == [("a", [1, 9]), ("b", [3, 5])]
    event = groups[0].event()
    assert (event.id, event.metadata, event.attempts, event.coalesced) == (9, {}, 1, 2)
    assert json.dumps(event.metadata) == "{}"


def test_twin_sweeps_back_off_while_they_find_nothing_and_resume_when_they_do():
    from katello_events.event_queue.consumer import MAX_SWEEP_INTERVAL, BatchConsumer
    from katello_events.handlers.base import HandlerStats

    consumer = BatchConsumer(HandlerStats(), batch_size=2)
    full, short = [(1,), (2,)], [(1,)]
    assert consumer._sweep_due(short), "a batch that is not full always sweeps (the queue is shallow)"
    assert not consumer._sweep_due([]), "an empty batch has nothing to sweep for"
    swept = []
    for _ in range(200):
        if consumer._sweep_due(full):
            swept.append(True)
            consumer._swept([])
        else:
            swept.append(False)
    gaps = [i for i, s in enumerate(swept) if s]
    assert gaps[:4] == [0, 2, 6, 14], "the interval doubles while sweeps find nothing"
    assert max(b - a for a, b in itertools.pairwise(gaps)) == MAX_SWEEP_INTERVAL
    consumer._swept([(3, "t", "o", None, 0, None)])
    assert consumer._sweep_due(full), "a sweep that finds twins makes the next one due at once"


def test_push_event_refuses_oversized_or_too_deep_metadata_and_long_types_before_any_sql():
    from django.test import override_settings

    from katello_events.registry import event_handlers

    with override_settings(KATELLO_EVENTS={"MAX_METADATA_BYTES": 100}), transaction.atomic():
        with pytest.raises(ValueError, match="at most 100"):
            katello_events.push_event("test.record", "big", {"blob": "x" * 200})
        deep: list = []
        for _ in range(100_000):
            deep = [deep]
        with pytest.raises(ValueError, match="nested too deeply"):
            katello_events.push_event("test.record", "deep", deep)
        long_type = "t" * 101
        previous = event_handlers.reset()
        event_handlers.reset({**previous, long_type: lambda event: None})
        try:
            with pytest.raises(ValueError, match="at most 100 characters"):
                katello_events.push_event(long_type, "x")
        finally:
            event_handlers.reset(previous)
        katello_events.push_event("test.record", "fine", {"uid": "ok"})  # the transaction is still usable
    assert list(Event.objects.values_list("object_id", flat=True)) == ["fine"]


def test_a_twin_sweep_is_bounded_so_one_batch_stays_small():
    from katello_events.event_queue.consumer import TWINS_PER_BATCH, BatchConsumer
    from katello_events.handlers.base import HandlerStats

    with transaction.atomic():
        for n in range(25):
            katello_events.push_event("test.record", "hot", {"uid": f"u{n}"})
    consumer = BatchConsumer(HandlerStats(), batch_size=1)
    consumer.process_batch()
    (run,) = Handling.objects.all()
    assert run.coalesced == 1 + TWINS_PER_BATCH
    assert Event.objects.count() == 25 - run.coalesced, "the rest wait for the next batches"


def test_a_batch_is_bounded_by_the_bytes_of_its_metadata_too():
    from katello_events.event_queue.consumer import BatchConsumer
    from katello_events.handlers.base import HandlerStats

    blob = "x" * 100_000  # stored compressed-or-not, about 100 kB each: "x" * n compresses well
    big = "".join(f"{n:06d}" for n in range(20_000))  # 120 kB that does not compress much
    with transaction.atomic():
        for n in range(30):
            katello_events.push_event("test.record", f"o{n}", {"uid": f"u{n}", "blob": big, "pad": blob})
    consumer = BatchConsumer(HandlerStats(), batch_size=100, max_bytes=500_000)
    assert 1 < consumer.process_batch() < 30, "the byte bound cut the batch short of its 30 events"
    handled = Handling.objects.count()
    assert handled <= 500_000 // 40_000 + 1
    while consumer.process_batch():
        pass
    assert Handling.objects.count() == 30, "nothing is lost: the rest go in later batches"

    with transaction.atomic():
        katello_events.push_event("test.record", "huge", {"uid": "huge", "blob": big * 8})
    one = BatchConsumer(HandlerStats(), batch_size=100, max_bytes=1)
    assert one.process_batch() == 1, "an event larger than the bound still goes, alone"
