"""Real processes on two "hosts" sharing one PostgreSQL, and the memory watchdog.

A host is a server with a lock file of its own (so the file lock could never elect across them);
``LOCK_BACKEND=postgres`` must. Who holds the election is read from the server (pg_locks joined
with pg_stat_activity's application_name), never from the code under test.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from django.db import transaction

import katello_events
from katello_events.models import Event, HandlerStatus
from tests.cluster_support import admin_connection, election_holders, fence_holders, holders, lock_key, terminate
from tests.eventsapp.models import Handling
from tests.support import alive, children, free_port, gunicorn_args, lock_holders, manage_args, wait_for
from tests.test_processes import assert_runs_never_overlap, probe_runs, run_manage, workers_of

pytestmark = [pytest.mark.process, pytest.mark.timeout(240), pytest.mark.django_db(transaction=True)]

POSTGRES = {"KATELLO_EVENTS_LOCK_BACKEND": "postgres"}


@pytest.fixture
def admin(database_name):
    db = admin_connection(database_name)
    yield db
    db.close()


def the_runner(admin, database_name, among: set[int], timeout: float = 30.0) -> int:
    """Wait until exactly one process holds both locks, one of ``among``; its pid."""

    def single():
        held = election_holders(admin, database_name)
        return len(held) == 1 and held <= among and fence_holders(admin, database_name) == held and next(iter(held))

    return wait_for(single, timeout, "exactly one runner holding the advisory locks")


def assert_one_runner_for(admin, database_name, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert len(election_holders(admin, database_name)) <= 1
        assert len(fence_holders(admin, database_name)) <= 1
        time.sleep(0.05)


def rows_name(pid: int, timeout: float = 15.0) -> None:
    def named():
        rows = list(HandlerStatus.objects.exclude(name="grow"))
        return len(rows) >= 2 and all(r.pid == pid and r.running for r in rows)

    wait_for(named, timeout, f"status rows name runner {pid}")


def push_many(count: int, prefix: str, **metadata) -> set[str]:
    with transaction.atomic():
        for n in range(count):
            katello_events.push_event("test.record", f"{prefix}-{n}", {"uid": f"{prefix}{n}", **metadata})
    return {f"{prefix}{n}" for n in range(count)}


def assert_handled_once_never_concurrently(uids: set[str]) -> None:
    wait_for(lambda: not Event.objects.exists(), 120, "every event handled")
    handled = list(Handling.objects.order_by("handled_at").values_list("uid", "pid"))
    assert sorted(uid for uid, _ in handled) == sorted(uids), "each event handled exactly once"
    order = [pid for _, pid in handled]
    runs = [pid for n, pid in enumerate(order) if n == 0 or order[n - 1] != pid]
    assert len(runs) == len(set(runs)), f"runners' handling interleaved: {runs}"


def assert_probe_runs_never_overlap(log_path, killed: dict[int, float]) -> None:
    """Probe start/stop lines never overlap; a pid killed with -9 ended at its kill time."""
    runs = probe_runs(log_path)
    runs += [("stop", pid, at) for pid, at in killed.items() if ("start", pid) in [(w, p) for w, p, _ in runs]]
    assert_runs_never_overlap(runs)


def test_two_hosts_one_runner_and_kill_9_of_a_host_moves_it_within_seconds(
    start_server, database_name, admin, tmp_path
):
    probe = tmp_path / "probe.log"
    hosts = [
        start_server(
            gunicorn_args(free_port(), 2),
            lock_file=tmp_path / f"host{n}" / "runner.lock",
            KATELLO_EVENTS_PROBE_LOG=str(probe),
            **POSTGRES,
        )
        for n in (1, 2)
    ]
    workers = {host.pid: workers_of(host, 2) for host in hosts}
    everyone = set().union(*workers.values())
    runner = the_runner(admin, database_name, everyone)
    rows_name(runner)
    assert_one_runner_for(admin, database_name, 1.5)
    assert not any(lock_holders(tmp_path / f"host{n}" / "runner.lock") for n in (1, 2)), "no file lock is used"
    assert all(host.pid not in election_holders(admin, database_name) for host in hosts), "never a master"

    uids = push_many(150, "k", sleep=0.01)
    wait_for(lambda: Handling.objects.count() >= 20, 60, "the runner is handling events")
    runner_host = next(host for host in hosts if runner in workers[host.pid])
    other = next(host for host in hosts if host is not runner_host)
    os.killpg(runner_host.pid, signal.SIGKILL)  # every process of that "host"
    killed_at = time.monotonic()
    new = the_runner(admin, database_name, workers[other.pid], timeout=15)
    took = time.monotonic() - killed_at
    assert took < 5.0, f"failover to the other host took {took:.2f}s"
    rows_name(new)
    assert_handled_once_never_concurrently(uids)
    assert_probe_runs_never_overlap(probe, dict.fromkeys(workers[runner_host.pid], killed_at))
    assert_one_runner_for(admin, database_name, 1.0)


def test_terminating_the_lock_session_stops_the_old_runner_before_another_starts(
    start_server, database_name, admin, tmp_path
):
    probe = tmp_path / "probe.log"
    daemons = [
        start_server(
            manage_args("run_event_daemon"),
            lock_file=tmp_path / f"host{n}" / "runner.lock",
            KATELLO_EVENTS_PROBE_LOG=str(probe),
            **POSTGRES,
        )
        for n in (1, 2)
    ]
    pids = {daemon.pid for daemon in daemons}
    old = the_runner(admin, database_name, pids, timeout=60)
    wait_for(lambda: all("waiting for PostgreSQL advisory lock" in d.log() for d in daemons), 30, "both up")
    uids = push_many(150, "t", sleep=0.01)
    wait_for(lambda: Handling.objects.count() >= 20, 60, "the runner is handling events")

    assert terminate(admin, holders(admin, lock_key(database_name))[old])
    old_daemon = next(d for d in daemons if d.pid == old)
    wait_for(lambda: "election lock was lost" in old_daemon.log(), 10, "the old runner noticed at a heartbeat")
    wait_for(lambda: ("stop", old) in [(w, p) for w, p, _ in probe_runs(probe)], 15, "its handlers stopped")
    assert_handled_once_never_concurrently(uids)
    assert_probe_runs_never_overlap(probe, {})
    result = the_runner(admin, database_name, pids, timeout=15)
    rows_name(result)
    assert_one_runner_for(admin, database_name, 1.0)
    assert all(alive(pid) for pid in pids), "nobody had to die"


@pytest.fixture
def grow_env(tmp_path) -> dict[str, str]:
    return {
        "KATELLO_EVENTS_GROW_FLAG": str(tmp_path / "grown"),
        "KATELLO_EVENTS_MAX_RSS_MB": "250",  # a worker starts well below; the grow handler adds 300
        "KATELLO_EVENTS_PROBE_LOG": str(tmp_path / "probe.log"),
    }


def test_the_watchdog_recycles_a_gunicorn_worker_and_the_next_runner_carries_on(
    start_server, database_name, lock_file, tmp_path, grow_env
):
    uids = push_many(100, "w", sleep=0.01)
    server = start_server(gunicorn_args(free_port(), 2), **grow_env)
    first_workers = workers_of(server, 2)
    first = wait_for(lambda: len(h := lock_holders(lock_file)) == 1 and next(iter(h)), 60, "a runner")
    wait_for(lambda: not alive(first), 30, "the runner's worker exited after the handover")
    second = wait_for(lambda: len(h := lock_holders(lock_file) - {first}) == 1 and next(iter(h)), 15, "next runner")
    assert second in first_workers, "the standby took over"
    rows_name(second)
    replaced = wait_for(
        lambda: len(kids := children(server.pid)) == 2 and first not in kids and kids, 30, "a replacement worker"
    )
    assert len(replaced - first_workers) == 1, "gunicorn replaced the recycled worker"
    assert "recycling this worker (handed over: RSS" in server.log()
    assert f"Worker exiting (pid: {first})" in server.log(), "a graceful exit, not a kill"

    assert_handled_once_never_concurrently(uids)
    assert_probe_runs_never_overlap(tmp_path / "probe.log", {})
    row = HandlerStatus.objects.get(name="katello_events")
    assert row.counters["handovers"] == 1
    assert "above MAX_RSS_MB 250" in row.last_error
    ping = run_manage(database_name, lock_file, "ping", "--json")
    document = json.loads(ping.stdout)
    assert document["services"]["katello_events"]["counters"]["handovers"] == 1
    assert document["services"]["katello_events"]["last_error"].startswith("handed over: RSS")
    assert lock_holders(lock_file) == {second}


def test_the_watchdog_makes_run_event_daemon_exit_non_zero_and_a_standby_takes_over(
    start_server, database_name, tmp_path, grow_env
):
    first = start_server(manage_args("run_event_daemon"), **grow_env, **POSTGRES)
    wait_for(lambda: "is the runner" in first.log(), 60, "the first daemon leads")
    second = start_server(manage_args("run_event_daemon"), **grow_env, **POSTGRES)
    assert first.process.wait(30) != 0
    assert "handed over: RSS" in first.log()
    assert "exiting so that a fresh process replaces this one" in first.log()
    wait_for(lambda: "is the runner" in second.log(), 30, "the second daemon leads")
    rows_name(second.pid)
