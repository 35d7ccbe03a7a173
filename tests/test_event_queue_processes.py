"""The event queue with real processes: kill -9 mid-batch, a PostgreSQL restart, SQLite."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
from django.db import connection, connections, transaction

import katello_events
from katello_events.models import Event
from tests.conftest import make_runner, start
from tests.eventsapp.models import Handling
from tests.support import EXAMPLE, manage_args, server_env, wait_for

pytestmark = [pytest.mark.process, pytest.mark.timeout(240), pytest.mark.django_db(transaction=True)]

QUEUE = "katello_events.handlers.event_queue.EventQueueHandler"


def push_many(count: int, **metadata) -> None:
    with transaction.atomic():
        for n in range(count):
            katello_events.push_event("test.record", f"obj-{n}", {"uid": f"u{n}", **metadata})


def test_kill_9_mid_batch_loses_nothing_and_leaves_nothing_stuck(start_server, lock_file):
    push_many(300, sleep=0.01)
    first = start_server(manage_args("run_event_daemon"))
    wait_for(lambda: Handling.objects.count() >= 40, 60, "the first runner is handling events")
    os.kill(first.pid, signal.SIGKILL)
    first.process.wait(10)
    killed_at = Handling.objects.count()
    assert killed_at < 300, "killed mid-stream"

    start_server(manage_args("run_event_daemon"))
    wait_for(lambda: not Event.objects.exists(), 120, "every event handled by the next runner")
    uids = list(Handling.objects.values_list("uid", flat=True))
    assert set(uids) == {f"u{n}" for n in range(300)}, "at least once: nothing lost"
    # A batch's handlers and its delete commit together, so the killed batch rolled back
    # whole: database-only handlers see no duplicate at all.
    assert len(uids) == 300
    assert len({pid for pid in Handling.objects.values_list("pid", flat=True)}) == 2


def pg_ctl(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        [
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            version,
            "main",
            action,
            *(["-m", "fast"] if action != "start" else []),
        ],
        check=True,
        timeout=120,
    )


@pytest.mark.serial
@pytest.mark.skipif(not shutil.which("pg_ctlcluster") or os.geteuid() != 0, reason="needs root and pg_ctlcluster")
def test_a_postgresql_restart_is_reported_then_survived_without_loss(runners, lock_file):
    push_many(200, sleep=0.02)
    runner = start(runners, make_runner(lock_file, {"katello_events": (QUEUE, {"POLL_INTERVAL": 0.2})}))
    wait_for(lambda: Handling.objects.count() >= 20, 60, "handling has begun")
    connections.close_all()
    pg_ctl("stop")
    try:

        def reported():
            supervisor = runner.supervisor
            snapshots = supervisor.snapshots() if supervisor else []
            return any((s.problem or "").startswith("database unreachable") for s in snapshots)

        wait_for(reported, 30, "the handler reports the outage")
    finally:
        pg_ctl("start")
    connection.close()

    def recovered():
        try:
            return not Event.objects.exists() and not runner.supervisor.snapshots()[0].problem
        except Exception:  # noqa: BLE001 - the database may still be starting: any error means "not yet"
            connection.close()
            return False

    wait_for(recovered, 120, "the handler reconnects and drains the queue")
    uids = set(Handling.objects.values_list("uid", flat=True))
    assert uids == {f"u{n}" for n in range(200)}
    assert runner.leading.is_set()


def test_the_sqlite_path_polls_coalesces_and_drains(tmp_path, lock_file):
    database = tmp_path / "example.sqlite3"
    env = server_env("unused", lock_file, DATABASE_URL=f"sqlite:///{database}")
    run = {"cwd": EXAMPLE, "env": env, "capture_output": True, "text": True, "timeout": 120}
    assert subprocess.run(manage_args("migrate", "--noinput"), **run).returncode == 0
    push = (
        "import katello_events; from django.db import transaction\n"
        "with transaction.atomic():\n"
        "    [katello_events.push_event('test.record', 'cv', {'n': n}) for n in range(5)]\n"
        "    [katello_events.push_event('test.record', f'h{n}') for n in range(20)]\n"
    )
    result = subprocess.run(manage_args("shell", "-c", push), **run)
    assert result.returncode == 0, result.stderr

    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen(manage_args("run_event_daemon"), cwd=EXAMPLE, env=env, stdout=out, stderr=out)
    try:

        def drained():
            with sqlite3.connect(database) as db:
                pending = db.execute("SELECT count(*) FROM katello_events_event").fetchone()[0]
                runs = db.execute("SELECT object_id, coalesced, metadata FROM eventsapp_handling").fetchall()
            return pending == 0 and len(runs) == 21 and runs

        runs = wait_for(drained, 60, "the SQLite queue drained by polling")
        assert ("cv", 5, '{"n": 4}') in runs
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, Path(log).read_text()
