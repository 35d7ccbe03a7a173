"""The Django Tasks backend through the framework's public API, against real PostgreSQL and a real
in-process runner (``tests/test_tasks_processes.py`` runs it in real server processes)."""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

import katello_events.tasks.compat as compat
import katello_events.tasks.execute  # noqa: F401  (registers the task event type, as TasksConfig does)
from katello_events.models import Event, TaskResultRecord
from katello_events.tasks.execute import TASK_EVENT
from katello_events.tasks.summary import task_queues
from katello_events.tasks.upkeep import fail_dead, prune_results, retry_failed
from tests.conftest import make_runner, start
from tests.eventsapp import tasks
from tests.eventsapp.models import Handling
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "katello_events.handlers.event_queue.EventQueueHandler"
FAST = {"POLL_INTERVAL": 0.2, "RETRY_BACKOFF": 0.2, "RETRY_BACKOFF_MAX": 1.0, "STATS_INTERVAL": 0.1}
BACKEND = "katello_events.tasks.EventQueueBackend"
Status = compat.TaskResultStatus


@pytest.fixture(autouse=True)
def tasks_backend(settings):
    settings.TASKS = {
        "default": {
            "BACKEND": BACKEND,
            "QUEUES": ["default", "reports"],
            "OPTIONS": {"MAX_ATTEMPTS": 2, "RETRY_BACKOFF": 0.2, "RETRY_BACKOFF_MAX": 1.0},
        }
    }
    tasks.GATE.clear()
    yield
    tasks.GATE.set()  # a task still waiting must not hold a runner's stop


def run_queue(runners, lock_file, **options):
    return start(runners, make_runner(lock_file, {"katello_events": (QUEUE, {**FAST, **options})}))


def finished(result, timeout: float = 20.0):
    def done():
        result.refresh()
        return result.is_finished

    wait_for(done, timeout, f"task {result.id} finished")
    return result


# -- enqueue and results ---------------------------------------------------------------------


def test_the_backend_declares_its_capabilities():
    backend = compat.task_backends["default"]
    assert type(backend).__module__ == "katello_events.tasks.backend"
    assert backend.supports_defer
    assert backend.supports_get_result
    assert backend.supports_priority
    assert backend.supports_async_task


def test_an_enqueued_task_is_run_by_the_runner_and_its_result_read_back(runners, lock_file):
    before = timezone.now()
    result = tasks.add.enqueue(2, 3)
    assert result.status == Status.READY
    assert result.enqueued_at >= before
    assert result.attempts == 0
    assert result.args == [2, 3]
    assert not result.is_finished
    with pytest.raises(ValueError, match="not finished"):
        _ = result.return_value
    assert tasks.add.get_result(result.id).status == Status.READY

    run_queue(runners, lock_file)
    finished(result)
    assert result.status == Status.SUCCESSFUL
    assert result.return_value == 5
    assert result.errors == []
    assert result.attempts == 1
    assert result.worker_ids == [f"{socket.gethostname()}:{os.getpid()}"]
    assert result.enqueued_at <= result.started_at <= result.last_attempted_at <= result.finished_at
    # From the backend as from the task, with the same outcome.
    again = compat.task_backends["default"].get_result(result.id)
    assert (again.status, again.return_value, again.task.func) == (Status.SUCCESSFUL, 5, tasks.add.func)
    assert not Event.objects.exists(), "the task's event is gone with its run"


def test_an_unknown_result_id_raises_the_frameworks_error():
    with pytest.raises(compat.TaskResultDoesNotExist):
        tasks.add.get_result("00000000-0000-0000-0000-000000000000")
    with pytest.raises(compat.TaskResultDoesNotExist):
        compat.task_backends["default"].get_result("not-a-result-id")


def test_a_failing_task_is_retried_then_failed_with_its_errors_redacted(runners, lock_file):
    result = tasks.fail.enqueue("could not connect: password=hunter2")
    run_queue(runners, lock_file)
    finished(result)
    assert result.status == Status.FAILED
    with pytest.raises(ValueError, match="failed"):
        _ = result.return_value
    assert result.attempts == 2, "MAX_ATTEMPTS of the backend's OPTIONS"
    assert len(result.errors) == 2
    error = result.errors[-1]
    assert error.exception_class_path == "builtins.ValueError"
    assert error.exception_class is ValueError
    assert "Traceback" in error.traceback
    assert "password=********" in error.traceback
    assert "hunter2" not in error.traceback
    assert result.finished_at is not None
    assert not Handling.objects.filter(uid="failed-write").exists(), "a failed attempt's writes roll back"
    assert not Event.objects.exists()


def test_a_failed_task_between_attempts_reads_ready_with_its_error(runners, lock_file, settings):
    settings.TASKS = {"default": {"BACKEND": BACKEND, "OPTIONS": {"MAX_ATTEMPTS": 3, "RETRY_BACKOFF": 30}}}
    result = tasks.fail.enqueue("first")
    run_queue(runners, lock_file)
    wait_for(lambda: tasks.fail.get_result(result.id).errors, 20, "the first attempt failed")
    result.refresh()
    assert result.status == Status.READY, "ready to be executed again"
    assert result.attempts == 1
    assert result.errors[0].exception_class_path == "builtins.ValueError"
    event = Event.objects.get()
    assert event.run_after > timezone.now() + timedelta(seconds=20), "retried after the backoff"


def test_a_failing_task_costs_the_others_of_its_batch_nothing(runners, lock_file):
    with transaction.atomic():
        good = [tasks.record.enqueue(f"good-{n}") for n in range(5)]
        bad = tasks.fail.enqueue("boom")
    run_queue(runners, lock_file, CONCURRENCY=1)
    for result in good:
        assert finished(result).status == Status.SUCCESSFUL
    assert finished(bad).status == Status.FAILED
    assert sorted(Handling.objects.values_list("uid", flat=True)) == [f"good-{n}" for n in range(5)]


def test_a_non_json_return_value_fails_the_task(runners, lock_file):
    result = tasks.not_json.enqueue()
    run_queue(runners, lock_file)
    finished(result)
    assert result.status == Status.FAILED
    assert result.errors[0].exception_class_path == "builtins.TypeError"


def test_an_async_task_runs(runners, lock_file):
    result = tasks.async_add.enqueue(4, 5)
    run_queue(runners, lock_file)
    assert finished(result).return_value == 9


def test_aenqueue_and_aget_result(runners, lock_file):
    result = async_to_sync(tasks.add.aenqueue)(1, 1)
    run_queue(runners, lock_file)
    finished(result)
    fetched = async_to_sync(tasks.add.aget_result)(result.id)
    assert (fetched.status, fetched.return_value) == (Status.SUCCESSFUL, 2)
    async_to_sync(fetched.arefresh)()
    assert fetched.return_value == 2


def test_a_task_that_takes_context_gets_its_result_and_attempt(runners, lock_file):
    result = tasks.with_context.enqueue("ctx")
    run_queue(runners, lock_file)
    finished(result)
    assert result.return_value == {"id": result.id, "attempt": 1, "label": "ctx"}


def test_a_running_task_reads_running(runners, lock_file):
    result = tasks.wait_for_gate.enqueue(20)
    run_queue(runners, lock_file)
    wait_for(lambda: tasks.wait_for_gate.get_result(result.id).status == Status.RUNNING, 20, "RUNNING")
    tasks.GATE.set()
    assert finished(result).return_value is True


# -- run_after, priority, queues ---------------------------------------------------------------


def test_run_after_defers_the_task(runners, lock_file):
    run_after = timezone.now() + timedelta(seconds=1.5)
    result = tasks.record.using(run_after=run_after).enqueue("later")
    assert result.task.run_after == run_after
    run_queue(runners, lock_file)
    time.sleep(0.8)
    result.refresh()
    assert result.status == Status.READY
    finished(result)
    assert result.started_at >= run_after - timedelta(milliseconds=50)  # the database's clock decides
    assert tasks.record.get_result(result.id).task.run_after == run_after


def test_priorities_are_honoured_within_a_batch(runners, lock_file):
    order = [(-50, "low"), (0, "normal-1"), (100, "highest"), (0, "normal-2"), (10, "high")]
    with transaction.atomic():  # all due in one batch
        results = [tasks.record.using(priority=priority).enqueue(label) for priority, label in order]
    run_queue(runners, lock_file, CONCURRENCY=1)
    for result in results:
        finished(result)
    ran = list(Handling.objects.order_by("id").values_list("uid", flat=True))
    assert ran == ["highest", "high", "normal-1", "normal-2", "low"]
    assert tasks.record.get_result(results[0].id).task.priority == -50


def test_a_queue_name_not_in_queues_is_refused():
    with pytest.raises(compat.InvalidTask):
        tasks.add.using(queue_name="nope")
    result = tasks.add.using(queue_name="reports").enqueue(1, 2)
    assert tasks.add.get_result(result.id).task.queue_name == "reports"


def test_arguments_must_be_json():
    with pytest.raises(TypeError):
        tasks.add.enqueue({1}, 2)
    with pytest.raises(compat.InvalidTask, match="NUL"):
        tasks.record.enqueue("a\x00b")
    assert not TaskResultRecord.objects.exists()
    assert not Event.objects.exists()


def test_unknown_options_are_refused(settings):
    settings.TASKS = {"default": {"BACKEND": BACKEND, "OPTIONS": {"MAX_ATTEMPT": 3}}}
    with pytest.raises(ImproperlyConfigured, match="MAX_ATTEMPT"):
        compat.task_backends["default"]


# -- transactions -----------------------------------------------------------------------------


def test_a_task_enqueued_in_a_rolled_back_transaction_never_runs(runners, lock_file):
    with transaction.atomic():
        result = tasks.record.enqueue("rolled-back")
        transaction.set_rollback(True)
    with pytest.raises(compat.TaskResultDoesNotExist):
        tasks.record.get_result(result.id)
    committed = tasks.record.enqueue("committed")
    run_queue(runners, lock_file)
    finished(committed)
    assert list(Handling.objects.values_list("uid", flat=True)) == ["committed"]


def test_a_task_enqueued_in_a_transaction_runs_once_it_commits(runners, lock_file):
    run_queue(runners, lock_file)
    with transaction.atomic():
        result = tasks.record.enqueue("after-commit")
        time.sleep(0.5)
        assert not Handling.objects.exists()
    assert finished(result).status == Status.SUCCESSFUL


# -- the queue's rules: poison, retry, prune --------------------------------------------------


def test_a_task_whose_event_died_reads_failed_and_can_be_retried(runners, lock_file):
    result = tasks.record.enqueue("poison")
    # What the queue's poison rules leave after the runner died running it MAX_ATTEMPTS times.
    Event.objects.filter(event_type=TASK_EVENT).update(
        state=Event.DEAD, attempts=5, last_error="the runner died while handling it (attempt 5 of 5)"
    )
    result.refresh()
    assert result.status == Status.FAILED
    assert result.errors[-1].exception_class_path == "katello_events.tasks.execute.TaskDied"
    assert "runner died" in result.errors[-1].traceback
    assert fail_dead() == 1
    assert TaskResultRecord.objects.get().status == TaskResultRecord.FAILED
    assert not Event.objects.exists()
    assert tasks.record.get_result(result.id).status == Status.FAILED

    assert retry_failed(TaskResultRecord.objects.all()) == 1
    run_queue(runners, lock_file)
    finished(result)
    assert result.status == Status.SUCCESSFUL
    assert len(result.errors) == 1, "earlier errors are kept"


def test_finished_results_are_pruned_after_their_retention(settings):
    result = tasks.add.enqueue(1, 2)
    TaskResultRecord.objects.update(status=TaskResultRecord.SUCCESSFUL, finished_at=timezone.now() - timedelta(hours=2))
    assert prune_results() == 0, "a week by default"
    settings.TASKS = {"default": {"BACKEND": BACKEND, "OPTIONS": {"RESULT_RETENTION": 3600}}}
    assert prune_results() == 1
    with pytest.raises(compat.TaskResultDoesNotExist):
        tasks.add.get_result(result.id)


def test_per_queue_counts(runners, lock_file):
    with transaction.atomic():
        tasks.add.enqueue(1, 2)
        tasks.add.using(queue_name="reports").enqueue(1, 2)
        tasks.fail.using(queue_name="reports").enqueue("x")
        deferred = tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 1)
    run_queue(runners, lock_file)
    wait_for(lambda: TaskResultRecord.objects.filter(status=TaskResultRecord.READY).count() == 1, 20, "drained")
    assert tasks.add.get_result(deferred.id).status == Status.READY
    assert task_queues() == [
        {"backend": "default", "queue_name": "default", "waiting": 1, "successful": 1, "failed": 0},
        {"backend": "default", "queue_name": "reports", "waiting": 0, "successful": 1, "failed": 1},
    ]


def test_task_queue_counts_reach_ping_about_and_metrics(runners, lock_file, client):
    from katello_events.models import HandlerStatus

    with transaction.atomic():
        tasks.add.enqueue(1, 2)
        tasks.fail.using(queue_name="reports").enqueue("x")
    run_queue(runners, lock_file)

    def counted():
        row = HandlerStatus.objects.filter(name="katello_events").first()
        queues = (row.details or {}).get("task_queues") if row else None
        return queues if queues and sum(q["successful"] + q["failed"] for q in queues) == 2 else None

    wait_for(counted, 30, "the task queues' counts in the status row")
    with override_settings(KATELLO_EVENTS={"HANDLERS": {"katello_events": {"BACKEND": QUEUE}}}):
        ping = client.get("/api/ping").json()  # anonymous: counts are public, like processed_count
        about = client.get("/about/").content.decode()
        metrics = client.get("/metrics").content.decode()
    assert {
        (q["queue_name"], q["successful"], q["failed"]) for q in ping["services"]["katello_events"]["task_queues"]
    } == {
        ("default", 1, 0),
        ("reports", 0, 1),
    }
    assert "Tasks default/reports: 0 waiting, 0 successful, 1 failed" in about
    assert 'katello_events_task_results{backend="default",queue="reports",status="failed"} 1.0' in metrics


def test_the_frameworks_signals_are_sent(runners, lock_file):
    seen = []

    def receiver(sender, task_result, **kwargs):
        seen.append((task_result.id, task_result.status))

    for signal in (compat.task_enqueued, compat.task_started, compat.task_finished):
        signal.connect(receiver, weak=False)
    try:
        result = tasks.add.enqueue(1, 2)
        run_queue(runners, lock_file)
        finished(result)
        wait_for(lambda: len(seen) == 3, 5, "three signals")
    finally:
        for signal in (compat.task_enqueued, compat.task_started, compat.task_finished):
            signal.disconnect(receiver)
    assert seen == [(result.id, Status.READY), (result.id, Status.RUNNING), (result.id, Status.SUCCESSFUL)]


# -- the admin --------------------------------------------------------------------------------

RESULTS = "/admin/katello_events/taskresultrecord/"


def test_the_admin_lists_results_and_retries_failed_ones(admin_client):
    ok = tasks.add.enqueue(1, 2)
    failed = tasks.fail.enqueue("x")
    TaskResultRecord.objects.filter(pk=ok.id).update(status=TaskResultRecord.SUCCESSFUL)
    TaskResultRecord.objects.filter(pk=failed.id).update(status=TaskResultRecord.FAILED, failed_attempts=2)
    Event.objects.all().delete()
    response = admin_client.get(RESULTS)
    assert response.status_code == 200
    assert {str(record.pk) for record in response.context["cl"].result_list} == {ok.id, failed.id}
    response = admin_client.post(
        RESULTS, {"action": "retry_selected", "_selected_action": [ok.id, failed.id]}, follow=True
    )
    assert response.status_code == 200
    text = " ".join(str(message) for message in response.context["messages"])
    assert "1 failed task(s) enqueued again" in text
    assert "1 selected task(s) had not failed" in text
    assert tasks.fail.get_result(failed.id).status == Status.READY
    assert list(Event.objects.values_list("object_id", flat=True)) == [failed.id]
    assert TaskResultRecord.objects.get(pk=failed.id).failed_attempts == 0
