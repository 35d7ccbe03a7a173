"""The runner and its supervisor in this process, against the real test database."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading

import pytest

from katello_events.models import HandlerStatus
from katello_events.status.report import public_document, service_entry
from tests import probe
from tests.conftest import make_runner, start
from tests.support import lock_holders, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def row(name: str) -> HandlerStatus | None:
    return HandlerStatus.objects.filter(name=name).first()


def test_leader_claims_rows_heartbeats_and_stops_cleanly(runners, lock_file):
    runner = start(runners, make_runner(lock_file, {"count": ("CountingHandler", {})}))
    first = wait_for(lambda: row("count"), 5, "status row written")
    assert (first.running, first.pid, first.hostname) == (True, os.getpid(), runner.identity.hostname)
    assert lock_holders(lock_file) == {os.getpid()}
    wait_for(lambda: row("count").heartbeat_at > first.heartbeat_at, 5, "heartbeat advances")
    wait_for(lambda: row("count").processed_count > 0 and row("count").queue_depth == 7, 5, "counters flushed")

    assert runner.stop(10)
    final = row("count")
    assert final.running is False
    assert final.problem == ""
    assert final.last_error == ""
    assert final.counters["ignored"] > 0
    assert lock_holders(lock_file) == set()


def test_counters_are_cumulative_across_runners(runners, lock_file):
    handlers = {"count": ("CountingHandler", {"PER_TICK": 10})}
    first = start(runners, make_runner(lock_file, handlers))
    wait_for(lambda: (row("count") or HandlerStatus()).processed_count >= 100, 10, "first runner counts")
    first.stop(10)
    after_first = row("count")

    start(runners, make_runner(lock_file, handlers))
    wait_for(lambda: row("count").processed_count > after_first.processed_count + 50, 10, "second runner adds")
    assert row("count").counters["ignored"] > after_first.counters["ignored"]
    assert row("count").since >= after_first.since


def test_crashing_handler_is_restarted_with_backoff_and_its_error_redacted(runners, lock_file, caplog):
    caplog.set_level(logging.ERROR, logger="katello_events")
    start(runners, make_runner(lock_file, {"crash": ("CrashingHandler", {}), "count": ("CountingHandler", {})}))
    wait_for(lambda: (row("crash") or HandlerStatus()).restarts >= 3, 10, "crashes counted and restarted")
    crashed = row("crash")
    assert "RuntimeError: boom" in crashed.last_error
    assert "hunter2" not in crashed.last_error
    assert "hunter2" not in crashed.problem
    assert crashed.last_error_at is not None
    assert "hunter2" not in caplog.text
    assert "Traceback" in caplog.text
    assert "boom" in caplog.text
    assert row("count").running  # the healthy neighbour is unaffected


def test_stalled_handler_is_reported_then_handed_over_never_duplicated(runners, lock_file):
    recycled: list[str] = []
    runner = make_runner(lock_file, {"stall": ("StallingHandler", {})}, STALL_TIMEOUT=0.3)
    runner.on_handover = recycled.append
    start(runners, runner)
    stalled = wait_for(lambda: (r := row("stall")) and r.problem.startswith("stalled") and r, 5, "stall reported")
    assert not stalled.running
    assert stalled.restarts == 0
    assert [t.name for t in threading.enumerate()].count("katello-events:stall") <= 1
    # The stalled thread answered stop(), so the lock was released and the process retired.
    wait_for(lambda: runner.finished.is_set(), 10, "the runner stepped down and retired")
    assert runner.retired.startswith("stalled: handler stall made no progress")
    assert recycled == [runner.retired]
    assert not runner.wedged
    assert lock_holders(lock_file) == set()


def test_a_handler_that_never_returns_keeps_the_lock_reads_stalled_and_asks_for_a_recycle(runners, lock_file):
    recycled: list[str] = []
    runner = make_runner(lock_file, {"blocked": ("BlockedHandler", {})}, STALL_TIMEOUT=0.3, STOP_TIMEOUT=0.3)
    runner.on_handover = recycled.append
    try:
        start(runners, runner)
        wait_for(lambda: runner.finished.is_set(), 10, "the runner stepped down")
        assert runner.wedged
        assert recycled
        assert recycled[0].startswith("stalled: handler blocked")
        assert lock_holders(lock_file) == {os.getpid()}, "no second runner while the thread lives"
        final = row("blocked")
        assert not final.running
        assert final.problem.startswith("stalled: handler blocked")
        assert final.problem.endswith("the runner lock is held until this process exits")
        entry = service_entry(final, final.heartbeat_at, 10.0, "1")
        assert entry["status"] == "FAIL"
        assert public_document({"services": {"b": entry}})["services"]["b"]["message"] == "stalled"
    finally:
        probe.RELEASE.set()


def test_handler_that_will_not_stop_keeps_the_lock_until_the_process_ends(runners, lock_file, caplog):
    runner = start(
        runners, make_runner(lock_file, {"stubborn": ("StubbornHandler", {"IGNORE_STOP_FOR": 3})}, STOP_TIMEOUT=0.3)
    )
    runner.stop(5)
    assert runner.finished.is_set()
    assert "did not stop" in caplog.text
    # Releasing now could let a second runner start beside the handler still running here.
    assert lock_holders(lock_file) == {os.getpid()}
    assert runner.wedged
    stuck = row("stubborn")
    assert stuck.running is False
    assert "lock is held until this process exits" in stuck.problem


def test_failing_to_start_releases_the_lock(runners, lock_file, caplog):
    runner = make_runner(lock_file, {"bad": ("NoSuchHandler", {})}, START_RETRY_DELAY=0.5)
    runners.append(runner)
    runner.start()
    wait_for(lambda: "could not start the handlers" in caplog.text, 5, "start failure logged")
    assert not runner.leading.is_set()
    # The lock is free between attempts: the role is never blocked by a broken process.
    wait_for(lambda: lock_holders(lock_file) == set(), 5, "lock released after the failed start")
    assert caplog.text.count("could not start the handlers") == 1  # said once, not per attempt


def test_losing_the_lock_file_steps_down_then_leads_on_a_fresh_file(runners, lock_file, caplog):
    runner = start(runners, make_runner(lock_file, {"count": ("CountingHandler", {})}))
    os.unlink(lock_file)
    wait_for(lambda: "election lock was lost" in caplog.text, 5, "fencing noticed the removed file")
    wait_for(lambda: os.path.exists(lock_file) and lock_holders(lock_file) == {os.getpid()}, 5, "leads again")
    wait_for(lambda: row("count").running, 5, "rows say running again")
    assert runner.leading.is_set()


def test_a_handler_whose_constructor_raises_is_a_crash_not_a_dead_runner(runners, lock_file):
    runner = start(
        runners, make_runner(lock_file, {"bad": ("UnconstructibleHandler", {}), "ok": ("CountingHandler", {})})
    )
    wait_for(lambda: (row("bad") or HandlerStatus()).restarts >= 2, 10, "constructor failures counted")
    assert "ValueError: bad OPTIONS" in row("bad").last_error
    assert "sesame" not in row("bad").last_error
    assert row("ok").running
    assert runner.leading.is_set()


def test_a_broken_status_method_is_reported_and_the_runner_carries_on(runners, lock_file):
    runner = start(runners, make_runner(lock_file, {"broken": ("BrokenStatusHandler", {})}))
    broken = wait_for(lambda: (r := row("broken")) and r.problem and r, 5, "problem reported")
    assert broken.problem.startswith("status() failed: KeyError")
    wait_for(lambda: row("broken").processed_count > 0, 5, "counters still flushed")
    assert runner.leading.is_set()


def test_malformed_handler_options_release_the_lock(runners, lock_file, caplog):
    runner = make_runner(lock_file, {})
    malformed = {"x": {"BACKEND": "tests.probe.CountingHandler", "OPTIONS": ["not", "a", "dict"]}}
    runner.config = dataclasses.replace(runner.config, HANDLERS=malformed)
    runners.append(runner)
    runner.start()
    wait_for(lambda: "could not start the handlers" in caplog.text, 5, "start failure logged")
    wait_for(lambda: lock_holders(lock_file) == set(), 5, "lock released")
    assert not runner.finished.is_set(), "the control loop keeps competing"


def test_queue_depth_warnings_fire_once_per_crossing_with_hysteresis(runners, lock_file, caplog):
    from katello_events.signals import queue_depth_exceeded, queue_depth_recovered
    from tests.probe import DEPTH

    received = []

    def receiver(signal, **kwargs):
        received.append((signal, kwargs["handler"], kwargs["depth"], kwargs["threshold"]))

    def broken_receiver(**kwargs):
        raise RuntimeError("a receiver's bug must not break the runner")

    queue_depth_exceeded.connect(receiver)
    queue_depth_exceeded.connect(broken_receiver)
    queue_depth_recovered.connect(receiver)
    try:
        DEPTH["value"] = 5
        start(runners, make_runner(lock_file, {"depth": ("DepthHandler", {})}, QUEUE_DEPTH_WARNING={"depth": 10}))
        wait_for(lambda: row("depth") and row("depth").queue_depth == 5, 5, "depth reported")
        DEPTH["value"] = 50
        wait_for(lambda: received, 5, "exceeded sent")
        wait_for(lambda: row("depth").queue_depth == 50, 5, "deep queue reported")
        DEPTH["value"] = 9  # below the threshold, above 80 % of it: no recovery yet
        wait_for(lambda: row("depth").queue_depth == 9, 5, "depth 9 reported")
        DEPTH["value"] = 8
        wait_for(lambda: len(received) == 2, 5, "recovered sent")
        DEPTH["value"] = 11
        wait_for(lambda: len(received) == 3, 5, "exceeded sent again on the next crossing")
        wait_for(lambda: row("depth").queue_depth == 11, 5, "depth 11 reported")
    finally:
        queue_depth_exceeded.disconnect(receiver)
        queue_depth_exceeded.disconnect(broken_receiver)
        queue_depth_recovered.disconnect(receiver)
    assert [(s is queue_depth_exceeded, h, d, t) for s, h, d, t in received] == [
        (True, "depth", 50, 10),
        (False, "depth", 8, 10),
        (True, "depth", 11, 10),
    ]
    assert caplog.text.count("above its threshold of 10") == 2
    assert "a receiver's bug" in caplog.text


def test_a_status_row_locked_by_another_session_fails_heartbeats_but_never_freezes_the_loop(runners, lock_file, caplog):
    from django.db import connection

    from katello_events import pgdriver
    from katello_events.libpq import libpq_params

    runner = start(runners, make_runner(lock_file, {"count": ("CountingHandler", {})}, HEARTBEAT_INTERVAL=0.2))
    wait_for(lambda: row("count") is not None, 5, "row claimed")
    other = pgdriver.connect(**libpq_params(connection.settings_dict))
    other.autocommit = False
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT * FROM katello_events_handlerstatus WHERE name = 'count' FOR UPDATE")
        wait_for(lambda: "status heartbeat failed" in caplog.text, 15, "a heartbeat gave up on the lock")
        assert "canceling statement due to lock timeout" in caplog.text
        assert runner.leading.is_set(), "the control loop goes on: fencing and supervision too"
    finally:
        other.rollback()
        other.close()
    wait_for(lambda: "status heartbeat recovered" in caplog.text, 15, "the next heartbeat got through")
