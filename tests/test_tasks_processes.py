"""The Django Tasks backend in real processes, through the framework's public API only: gunicorn
(two workers, one the elected runner) runs what a separate client process enqueues, and a runner
killed with SIGKILL mid-drain loses no task and runs none twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from django.db import transaction

import katello_events.tasks.compat as compat
import katello_events.tasks.execute  # noqa: F401  (registers the task event type, as TasksConfig does)
from katello_events.models import TaskResultRecord
from tests.eventsapp import tasks
from tests.eventsapp.models import Handling
from tests.support import EXAMPLE, free_port, gunicorn_args, lock_holders, server_env, wait_for

pytestmark = [pytest.mark.process, pytest.mark.timeout(240), pytest.mark.django_db(transaction=True)]

SETTINGS = "tests.eventsapp.task_settings"

#: The client: enqueues through the framework's API, then reads every result back by id.
CLIENT = textwrap.dedent(
    """
    import json, sys, time
    from datetime import timedelta

    import django

    django.setup()
    from django.utils import timezone

    from tests.eventsapp import tasks

    count = int(sys.argv[1])
    results = {f"t{n}": tasks.record.enqueue(f"t{n}") for n in range(count)}
    failing = tasks.fail.enqueue("no luck")
    later_at = timezone.now() + timedelta(seconds=2)
    later = tasks.add.using(run_after=later_at).enqueue(20, 22)
    context = tasks.with_context.using(queue_name="reports").enqueue("ctx")
    ids = {label: result.id for label, result in results.items()}
    deadline = time.monotonic() + 120
    pending = [*results.values(), failing, later, context]
    while pending and time.monotonic() < deadline:
        for result in pending:
            result.refresh()
        pending = [result for result in pending if not result.is_finished]
        time.sleep(0.2)
    fetched = {label: tasks.record.get_result(result_id) for label, result_id in ids.items()}
    print(json.dumps({
        "unfinished": len(pending),
        "statuses": sorted({str(result.status) for result in fetched.values()}),
        "values_match": all(fetched[label].return_value == label for label in fetched),
        "attempts": sorted({result.attempts for result in fetched.values()}),
        "workers": sorted({worker for result in fetched.values() for worker in result.worker_ids}),
        "failing": [str(failing.status), failing.attempts, [e.exception_class_path for e in failing.errors]],
        "later": [str(later.status), later.return_value, later.started_at >= later_at - timedelta(seconds=0.1)],
        "context": [str(context.status), context.return_value == {"id": context.id, "attempt": 1, "label": "ctx"}],
    }))
    """
)


@pytest.fixture
def tasks_settings(settings):
    settings.TASKS = {"default": {"BACKEND": "katello_events.tasks.EventQueueBackend"}}


def runner_pid(lock_file) -> int:
    return wait_for(lambda: next(iter(lock_holders(lock_file)), None), 60, "a worker is the runner")


def test_gunicorn_runs_what_another_process_enqueues(start_server, database_name, lock_file):
    start_server(gunicorn_args(free_port(), 2), DJANGO_SETTINGS_MODULE=SETTINGS)
    runner = runner_pid(lock_file)
    client = subprocess.run(
        [sys.executable, "-c", CLIENT, "200"],
        cwd=EXAMPLE,
        env=server_env(database_name, lock_file, DJANGO_SETTINGS_MODULE=SETTINGS),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert client.returncode == 0, client.stderr[-4000:]
    report = json.loads(client.stdout.strip().splitlines()[-1])
    assert report["unfinished"] == 0
    assert report["statuses"] == ["SUCCESSFUL"]
    assert report["values_match"]
    assert report["attempts"] == [1]
    assert [worker.rsplit(":", 1)[1] for worker in report["workers"]] == [str(runner)], "the runner ran them all"
    assert report["failing"] == ["FAILED", 2, ["builtins.ValueError", "builtins.ValueError"]]
    assert report["later"] == ["SUCCESSFUL", 42, True]
    assert report["context"] == ["SUCCESSFUL", True]
    labels = list(Handling.objects.exclude(uid="failed-write").values_list("uid", flat=True))
    assert sorted(labels) == sorted(f"t{n}" for n in range(200)), "each task ran once"
    assert not Handling.objects.filter(uid="failed-write").exists()


def test_kill_9_of_the_runner_mid_drain_loses_no_task_and_runs_none_twice(start_server, lock_file, tasks_settings):
    count = 300
    with transaction.atomic():
        results = [tasks.record.enqueue(f"k{n}", 0.01) for n in range(count)]
    start_server(gunicorn_args(free_port(), 2), DJANGO_SETTINGS_MODULE=SETTINGS)
    first = runner_pid(lock_file)
    wait_for(lambda: Handling.objects.count() >= 40, 60, "the first runner is running tasks")
    os.kill(first, signal.SIGKILL)
    killed_at = Handling.objects.count()
    assert killed_at < count, "killed mid-drain"

    wait_for(
        lambda: not TaskResultRecord.objects.filter(status=TaskResultRecord.READY).exists(),
        120,
        "every task finished under the next runner",
    )
    second = runner_pid(lock_file)
    assert second != first
    for result in results[:: count // 10]:
        result.refresh()
        assert result.status == compat.TaskResultStatus.SUCCESSFUL
    labels = list(Handling.objects.values_list("uid", flat=True))
    assert set(labels) == {f"k{n}" for n in range(count)}, "at least once: none lost"
    # A task's writes commit with its result in its batch's transaction, so the batch the kill
    # interrupted rolled back whole: database-only tasks ran exactly once.
    assert len(labels) == count
    assert TaskResultRecord.objects.filter(status=TaskResultRecord.SUCCESSFUL).count() == count
    pids = set(Handling.objects.values_list("pid", flat=True))
    assert first in pids
    assert second in pids
