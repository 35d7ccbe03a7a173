"""The event queue with several handler threads (CONCURRENCY): throughput without giving up a
pair's guarantees (one run at a time, in order, coalesced), a clean stop, and kill -9."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections import defaultdict

import pytest
from django.db import transaction

import katello_events
from katello_events.event_queue.careful_lock import CarefulLock
from katello_events.models import Event, HandlerStatus
from tests.conftest import make_runner, start
from tests.eventsapp.models import Handling
from tests.support import manage_args, wait_for

QUEUE = "katello_events.handlers.event_queue.EventQueueHandler"
FAST = {"POLL_INTERVAL": 0.2, "RETRY_BACKOFF": 0.2, "RETRY_BACKOFF_MAX": 1.0, "STATS_INTERVAL": 0.1}


def run_queue(runners, lock_file, **options):
    return start(runners, make_runner(lock_file, {"katello_events": (QUEUE, {**FAST, **options})}))


def push(object_id: str, **metadata) -> None:
    with transaction.atomic():
        katello_events.push_event("test.span", object_id, metadata)


def runs() -> list[Handling]:
    return list(Handling.objects.filter(event_type="test.span").order_by("id"))


def overlapping(spans: list[tuple[float, float]]) -> int:
    """The most spans running at one moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    return max(itertools.accumulate(step for _, step in edges), default=0)


@pytest.mark.django_db(transaction=True)
def test_pairs_run_one_at_a_time_in_order_while_others_run_beside_them(runners, lock_file, tmp_path):
    with transaction.atomic():
        for n in range(40):
            katello_events.push_event("test.span", f"obj-{n % 10}", {"uid": f"u{n}", "sleep": 0.05})
    mark = tmp_path / "hot-started"
    push("hot", uid="first", sleep=1.0, mark=str(mark))
    run_queue(runners, lock_file, CONCURRENCY=4)
    wait_for(mark.exists, 20, "the hot pair's first run started")
    push("hot", uid="second")  # pushed again while its handler runs
    wait_for(lambda: not Event.objects.exists() and Handling.objects.filter(uid="second").exists(), 30, "drained")

    by_pair: dict[str, list[Handling]] = defaultdict(list)
    for run in runs():
        by_pair[run.object_id].append(run)
    for pair, pair_runs in by_pair.items():
        spans = sorted((r.metadata["start"], r.metadata["end"]) for r in pair_runs)
        assert overlapping(spans) == 1, f"{pair} was handled by two threads at once"
    hot = sorted(by_pair["hot"], key=lambda r: r.metadata["start"])
    assert [r.metadata["uid"] for r in hot] == ["first", "second"], "the newest push is handled last"
    everything = [(r.metadata["start"], r.metadata["end"]) for r in runs()]
    assert overlapping(everything) >= 2, "different pairs ran at the same time"
    assert len({r.metadata["thread"] for r in runs()}) >= 2


@pytest.mark.django_db(transaction=True)
def test_twins_still_coalesce_and_the_status_shows_busy_threads(runners, lock_file, tmp_path):
    with transaction.atomic():
        for n in range(5):  # one pair pushed five times before the runner starts: one run
            katello_events.push_event("test.span", "twin", {"uid": f"t{n}"})
        for n in range(16):
            katello_events.push_event("test.span", f"slow-{n}", {"uid": f"s{n}", "sleep": 0.6})
    run_queue(runners, lock_file, CONCURRENCY=4)

    def busy():
        row = HandlerStatus.objects.filter(name="katello_events").first()
        return row and (row.details or {}).get("busy_threads", 0) >= 2 and row.details

    details = wait_for(busy, 20, "the status shows several threads busy")
    assert details["concurrency"] == 4
    assert details["in_flight"] >= 2
    wait_for(lambda: not Event.objects.exists(), 30, "drained")
    (twin,) = Handling.objects.filter(object_id="twin")
    assert (twin.coalesced, twin.metadata["uid"]) == (5, "t4")


@pytest.mark.django_db(transaction=True)
def test_a_clean_stop_waits_for_every_threads_unit_in_hand(runners, lock_file, tmp_path):
    marks = [tmp_path / f"started-{n}" for n in range(8)]
    with transaction.atomic():
        for n, mark in enumerate(marks):
            katello_events.push_event("test.span", f"obj-{n}", {"uid": f"u{n}", "sleep": 1.0, "mark": str(mark)})
    runner = run_queue(runners, lock_file, CONCURRENCY=4, BATCH_SIZE=1)
    wait_for(lambda: sum(m.exists() for m in marks) >= 3, 20, "several threads are handling events")
    assert runner.stop(30)
    started = {f"u{n}" for n, mark in enumerate(marks) if mark.exists()}
    handled = set(Handling.objects.values_list("uid", flat=True))
    assert handled == started, "every run in hand finished and committed before the stop returned"
    pending = {e.metadata["uid"] for e in Event.objects.all()}
    assert handled | pending == {f"u{n}" for n in range(8)}, "nothing lost"
    assert not handled & pending


@pytest.mark.django_db(transaction=True)
def test_concurrency_1_runs_one_thread_as_before(runners, lock_file):
    runner = run_queue(runners, lock_file, CONCURRENCY=1)
    with transaction.atomic():
        for n in range(6):
            katello_events.push_event("test.span", f"obj-{n}", {"uid": f"u{n}"})
    wait_for(lambda: Handling.objects.count() == 6, 20, "handled")
    assert {r.metadata["thread"] for r in runs()} == {"katello-events:katello_events"}, "the slot's own thread"
    (slot,) = runner.supervisor.slots
    assert slot.handler.concurrency == 1


@pytest.mark.process
@pytest.mark.timeout(240)
@pytest.mark.django_db(transaction=True)
def test_kill_9_during_a_concurrent_drain_loses_and_duplicates_nothing(start_server):
    with transaction.atomic():
        for n in range(400):
            katello_events.push_event("test.span", f"obj-{n}", {"uid": f"u{n}", "sleep": 0.02})
    env = {"KATELLO_EVENTS_CONCURRENCY": "8"}
    first = start_server(manage_args("run_event_daemon"), **env)
    wait_for(lambda: Handling.objects.count() >= 60, 60, "the first runner is draining")
    os.kill(first.pid, signal.SIGKILL)
    first.process.wait(10)
    assert Handling.objects.count() < 400, "killed mid-drain"
    start_server(manage_args("run_event_daemon"), **env)
    wait_for(lambda: not Event.objects.exists(), 120, "every event handled by the next runner")
    uids = list(Handling.objects.values_list("uid", flat=True))
    assert set(uids) == {f"u{n}" for n in range(400)}, "at least once: nothing lost"
    # Each thread's batch commits its handlers' writes with its delete: the batches in flight
    # at the kill rolled back whole, so database-only handlers see no duplicate.
    assert len(uids) == 400
    threads = {r.metadata["thread"] for r in Handling.objects.filter(pid=first.pid)}
    assert len(threads) >= 2, "the killed runner was draining with several threads"


def test_the_careful_lock_lets_a_careful_try_run_alone():
    lock = CarefulLock()
    inside: list[str] = []
    seen_together: list[list[str]] = []
    guard = threading.Lock()

    def work(kind: str, n: int) -> None:
        with lock.careful() if kind == "careful" else lock.batch():
            with guard:
                inside.append(f"{kind}{n}")
                seen_together.append(list(inside))
            time.sleep(0.01)
            with guard:
                inside.remove(f"{kind}{n}")

    threads = [threading.Thread(target=work, args=("careful" if n % 4 == 0 else "batch", n)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(t.is_alive() for t in threads)
    for together in seen_together:
        if any(name.startswith("careful") for name in together):
            assert len(together) == 1, f"a careful try ran beside {together}"
    assert max(len(t) for t in seen_together) >= 2, "batches do run side by side"
