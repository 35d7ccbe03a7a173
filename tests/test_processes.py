"""Real processes: gunicorn workers, runserver, management commands, run_event_daemon.

"Who is the runner" is read from the kernel (/proc/locks: who holds the election lock) and
checked against the status rows; nothing here trusts the code under test to report on itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest

from katello_events import pgdriver
from katello_events.election import FileLockElection
from katello_events.models import HandlerStatus
from tests.support import (
    ROOT,
    alive,
    children,
    free_port,
    gunicorn_args,
    http_get,
    lock_holders,
    manage_args,
    server_env,
    thread_count,
    wait_for,
)

pytestmark = [pytest.mark.process, pytest.mark.timeout(180)]


def the_runner(lock_file, timeout: float = 30.0, among: set[int] | None = None) -> int:
    """Wait until exactly one process holds the lock (optionally one of ``among``); its pid."""

    def single():
        holders = lock_holders(lock_file)
        if len(holders) == 1 and (among is None or holders <= among):
            return next(iter(holders))
        return None

    return wait_for(single, timeout, f"exactly one runner holding {lock_file}")


def rows_name(pid: int, timeout: float = 15.0) -> None:
    """Wait until every status row names ``pid`` as its running runner."""

    def named():
        rows = list(HandlerStatus.objects.all())
        return len(rows) >= 2 and all(r.pid == pid and r.running for r in rows)

    wait_for(named, timeout, f"status rows name runner {pid}")


def workers_of(server, count: int) -> set[int]:
    return wait_for(lambda: len(kids := children(server.pid)) == count and kids, 60, f"{count} workers booted")


def assert_one_runner_for(lock_file, seconds: float) -> None:
    """Sample the lock for a while: never two holders, never a gap of more than a moment."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert len(lock_holders(lock_file)) <= 1
        time.sleep(0.02)


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_gunicorn_elects_exactly_one_worker_and_never_the_master(start_server, lock_file, preload):
    extra = ["--preload"] if preload else []
    server = start_server(gunicorn_args(free_port(), 4, *extra))
    workers = workers_of(server, 4)
    runner = the_runner(lock_file, among=workers)  # started by the hook: no HTTP request made
    rows_name(runner)
    assert_one_runner_for(lock_file, 1.0)
    assert server.pid not in lock_holders(lock_file)
    assert thread_count(server.pid) == 1, "the master must run no thread of ours"
    standbys = workers - {runner}
    assert all(thread_count(pid) == 2 for pid in standbys), "a standby runs one light thread"


def test_killing_the_runner_moves_the_role_within_two_seconds_without_traffic(start_server, lock_file):
    server = start_server(gunicorn_args(free_port(), 4))
    workers = workers_of(server, 4)
    old = the_runner(lock_file, among=workers)
    rows_name(old)

    os.kill(old, signal.SIGKILL)
    killed_at = time.monotonic()
    new = the_runner(lock_file, timeout=10, among=workers - {old})
    took = time.monotonic() - killed_at
    assert took < 2.0, f"failover took {took:.2f}s"
    rows_name(new)
    assert_one_runner_for(lock_file, 1.0)


def probe_runs(log_path) -> list[tuple[str, int, float]]:
    lines = log_path.read_text().split() if log_path.exists() else []
    return [(lines[i], int(lines[i + 1]), float(lines[i + 2])) for i in range(0, len(lines), 3)]


def assert_runs_never_overlap(runs: list[tuple[str, int, float]]) -> None:
    active: int | None = None
    for what, pid, _ in sorted(runs, key=lambda run: run[2]):
        if what == "start":
            assert active is None, f"{pid} started while {active} was still running"
            active = pid
        else:
            assert active == pid, f"{pid} stopped but {active} was the one running"
            active = None


def test_max_requests_recycling_moves_the_role_and_nothing_runs_twice(start_server, lock_file, tmp_path):
    probe_log = tmp_path / "probe.log"
    port = free_port()
    server = start_server(gunicorn_args(port, 2, "--max-requests", "4"), KATELLO_EVENTS_PROBE_LOG=str(probe_log))
    first = the_runner(lock_file, among=workers_of(server, 2))
    wait_for(lambda: probe_runs(probe_log), 10, "probe handler started")

    # Traffic until the runner's worker is recycled by max_requests.
    def role_moved():
        http_get(port, "/about/")
        holders = lock_holders(lock_file)
        return holders and holders != {first}

    wait_for(role_moved, 60, "the runner's worker was recycled", interval=0.05)
    second = the_runner(lock_file)
    assert second != first
    rows_name(second)
    wait_for(lambda: not alive(first), 30, "the recycled worker exited")
    runs = probe_runs(probe_log)
    assert ("stop", first) in [(what, pid) for what, pid, _ in runs], "the old runner stopped gracefully"
    assert_runs_never_overlap(runs)


def test_runserver_runs_the_runner_in_the_serving_child_only_and_survives_a_reload(start_server, lock_file):
    port = free_port()
    server = start_server(manage_args("runserver", f"127.0.0.1:{port}"))
    child = wait_for(lambda: len(kids := children(server.pid)) == 1 and next(iter(kids)), 60, "reloader child")
    wait_for(lambda: http_get(port) in (200, 503), 60, "runserver answers")
    assert the_runner(lock_file) == child
    assert server.pid not in lock_holders(lock_file)
    rows_name(child)

    def touched_and_reloaded():
        # A code change: the reloader replaces the child. Touch until seen, since a change made
        # before the reloader's first snapshot of mtimes is not one to it.
        os.utime(ROOT / "tests" / "settings.py")
        return (kids := children(server.pid)) and kids != {child} and next(iter(kids))

    new_child = wait_for(touched_and_reloaded, 60, "a new child after the reload", interval=0.5)
    wait_for(lambda: not alive(child), 30, "the old child exited (no deadlock on reload)")
    wait_for(lambda: http_get(port) in (200, 503), 60, "the new child answers")
    assert the_runner(lock_file) == new_child
    assert server.pid not in lock_holders(lock_file)


def run_manage(database_name, lock_file, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        manage_args(*command),
        cwd=ROOT / "example_project",
        env=server_env(database_name, lock_file),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_migrate_and_shell_start_nothing(database_name, lock_file):
    result = run_manage(database_name, lock_file, "migrate", "--noinput")
    assert result.returncode == 0, result.stderr
    script = (
        "from django.test import Client; import threading, time;"
        "print(Client().get('/api/ping').status_code); time.sleep(0.5);"
        "print(sorted(t.name for t in threading.enumerate()))"
    )
    result = run_manage(database_name, lock_file, "shell", "-c", script)
    assert result.returncode == 0, result.stderr
    assert "katello-events" not in result.stdout
    assert result.stdout.splitlines()[-1] == "['MainThread']"
    assert not lock_file.exists(), "nothing even opened the lock file"
    assert not HandlerStatus.objects.exists()


def test_run_event_daemon_beside_gunicorn_keeps_one_runner(start_server, lock_file):
    daemon = start_server(manage_args("run_event_daemon"))
    wait_for(lambda: "is the runner" in daemon.log(), 60, "the daemon leads")
    assert lock_holders(lock_file) == {daemon.pid}
    server = start_server(gunicorn_args(free_port(), 2))
    workers = workers_of(server, 2)
    assert_one_runner_for(lock_file, 2.0)
    assert lock_holders(lock_file) == {daemon.pid}

    assert daemon.stop(signal.SIGTERM) == 0
    assert "daemon stopped" in daemon.log()
    rows_name(the_runner(lock_file, among=workers))


def test_two_daemons_one_runs_the_other_takes_over_when_it_is_killed(start_server, lock_file):
    first = start_server(manage_args("run_event_daemon"))
    wait_for(lambda: "is the runner" in first.log(), 60, "the first daemon leads")
    second = start_server(manage_args("run_event_daemon"))
    wait_for(lambda: "waiting for" in second.log(), 60, "the second daemon is up")
    assert_one_runner_for(lock_file, 1.0)
    assert lock_holders(lock_file) == {first.pid}
    assert "is the runner" not in second.log()

    os.kill(first.pid, signal.SIGKILL)
    assert the_runner(lock_file, timeout=10, among={second.pid}) == second.pid
    wait_for(lambda: "is the runner" in second.log(), 10, "the second daemon says it leads")
    rows_name(second.pid)


def test_run_event_daemon_stops_gracefully_on_sigterm(start_server, lock_file):
    daemon = start_server(manage_args("run_event_daemon"))
    rows_name(daemon.pid, timeout=60)
    assert daemon.stop(signal.SIGTERM) == 0
    assert not any(row.running for row in HandlerStatus.objects.all())
    assert lock_holders(lock_file) == set()


def test_run_event_daemon_refuses_a_symlinked_lock_file(database_name, tmp_path):
    link = tmp_path / "runner.lock"
    link.symlink_to(tmp_path / "target")
    result = run_manage(database_name, link, "run_event_daemon")
    assert result.returncode != 0
    assert "katello_events.E003" in result.stderr
    assert "symlink" in result.stderr


@pytest.fixture
def empty_database():
    name = f"katello_events_empty_{uuid.uuid4().hex[:8]}"
    admin = pgdriver.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    yield name
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def test_a_runner_that_cannot_start_does_not_block_the_role(empty_database, lock_file, tmp_path):
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen(
            manage_args("run_event_daemon"),
            cwd=ROOT / "example_project",
            stdout=out,
            stderr=subprocess.STDOUT,
            env=server_env(empty_database, lock_file),
        )
    try:
        wait_for(lambda: "could not start the handlers" in log.read_text(), 60, "the unmigrated start is reported")
        # What to do, not a ProgrammingError about a missing relation.
        assert "could not start the handlers: the database is not migrated: run manage.py migrate" in log.read_text()
        election = FileLockElection(str(lock_file))
        assert wait_for(election.try_acquire, 10, "the lock is free for another process")
        election.release()
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
