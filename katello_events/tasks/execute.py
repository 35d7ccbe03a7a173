"""The runner's side of the Tasks backend: the ``katello_events.task`` event type, whose batch
handler runs the tasks of a batch (highest priority first) and records their outcomes.

Importing this module registers the event type (``katello_events.tasks.TasksConfig.ready()``
does, in every process). A task runs inside the batch's transaction, in a savepoint of its own:
its database writes commit with its result row and the removal of its event, or roll back with
them (a runner killed mid-batch leaves the task READY, and the next runner runs it again: at
least once). A task that raises is not an event failure: its savepoint is rolled back, its error
recorded, and it is retried by a new event after the backoff of its backend's retry policy, until
``MAX_ATTEMPTS`` failures make it FAILED. A task that kills its process is charged by the event
queue's poison rules; once its event is dead the result reads FAILED (``results.py``).
"""

from __future__ import annotations

import json
import os
import socket
import traceback
import uuid
from typing import Any

from django.db import connections, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from katello_events.errors import describe_error
from katello_events.event_queue.push import push_event
from katello_events.event_queue.types import QueuedEvent, RetryLater
from katello_events.fencing import queue_alias
from katello_events.log import get_logger
from katello_events.models import TaskResultRecord
from katello_events.redaction import redact
from katello_events.registry import event_handler
from katello_events.tasks.policy import options_of

logger = get_logger(__name__)

#: The framework's loggers log a failed task's traceback (its task_finished receiver): redacted
#: like ours, in every process that runs tasks.
FRAMEWORK_LOGGERS = ("django.tasks", "django_tasks")
for _name in FRAMEWORK_LOGGERS:
    get_logger(_name)

#: The event type that carries a task (object_id: the result's id; no metadata).
TASK_EVENT = "katello_events.task"

#: Tasks per handler call, at most (the consumer's batches are cut to this for tasks).
TASKS_PER_CALL = 100

#: Longest traceback kept per error (characters), and errors kept per result.
MAX_TRACEBACK_LENGTH = 4000
MAX_ERRORS = 10

#: Fields the runner writes on a result row.
_WRITTEN = (
    "status", "started_at", "last_attempted_at", "finished_at", "failed_attempts", "return_value", "errors",
    "worker_ids",
)  # fmt: skip


class TaskDied(Exception):
    """The error of a task the event queue gave up on: its runner died running it ``MAX_ATTEMPTS``
    times (a poison task), or a runner that did not know the task event type took it."""


def worker_id() -> str:
    """Who ran an attempt: ``host:pid`` of the runner."""
    return f"{socket.gethostname()}:{os.getpid()}"


def parse_id(result_id: object) -> uuid.UUID | None:
    """A result id as stored, or None when it cannot be one."""
    try:
        return uuid.UUID(str(result_id))
    except (TypeError, ValueError, AttributeError):
        return None


@event_handler(TASK_EVENT, batch_size=TASKS_PER_CALL)
def run_tasks(events: list[QueuedEvent]) -> None:
    """Run the tasks of ``events``, highest priority first (then in enqueue order), each in a
    savepoint, and write their result rows. Never raises for a task's own failure."""
    from katello_events.tasks.upkeep import prune_if_due  # here: upkeep imports this module

    alias = queue_alias()
    ids = [key for key in (parse_id(event.object_id) for event in events) if key is not None]
    records = {
        str(record.pk): record
        for record in TaskResultRecord.objects.using(alias).select_for_update().filter(pk__in=ids)
    }
    # A result deleted meanwhile (pruned, or by hand) or already final (a retry's second event):
    # nothing to run.
    due = [
        (records[event.object_id], event)
        for event in events
        if event.object_id in records and records[event.object_id].status == TaskResultRecord.READY
    ]
    due.sort(key=lambda pair: (-pair[0].priority, pair[1].id))
    worker = worker_id()
    for record, _event in due:
        _run(record, alias, worker)
    if due:
        _save(alias, [record for record, _ in due])
    prune_if_due(alias)


# One statement for a call's results (PostgreSQL): bulk_update() compiles a CASE per field and
# row, which cost more than the tasks themselves.
_SAVE_SQL = """
UPDATE katello_events_taskresult AS r SET
    status = v.status, started_at = v.started_at, last_attempted_at = v.last_attempted_at,
    finished_at = v.finished_at, failed_attempts = v.failed_attempts,
    return_value = v.return_value::jsonb, errors = v.errors::jsonb, worker_ids = v.worker_ids::jsonb
FROM unnest(%s::uuid[], %s::varchar[], %s::timestamptz[], %s::timestamptz[], %s::timestamptz[], %s::int[],
            %s::text[], %s::text[], %s::text[])
    AS v(id, status, started_at, last_attempted_at, finished_at, failed_attempts, return_value, errors, worker_ids)
WHERE r.id = v.id
"""


def _save(alias: str, records: list[TaskResultRecord]) -> None:
    """Write the runner's fields of ``records``."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        TaskResultRecord.objects.using(alias).bulk_update(records, _WRITTEN)
        return
    columns: list[list[Any]] = [[] for _ in range(9)]
    for record in records:
        values = (
            str(record.pk), record.status, record.started_at, record.last_attempted_at, record.finished_at,
            record.failed_attempts, None if record.return_value is None else json.dumps(record.return_value),
            json.dumps(record.errors), json.dumps(record.worker_ids),
        )  # fmt: skip
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    with connection.cursor() as cursor:
        cursor.execute(_SAVE_SQL, columns)


def _run(record: TaskResultRecord, alias: str, worker: str) -> None:
    """One attempt of one task: its outcome goes into ``record`` (saved by the caller)."""
    import katello_events.tasks.compat as compat

    now = timezone.now()
    record.worker_ids = [*record.worker_ids, worker]
    record.last_attempted_at = now
    record.started_at = record.started_at or now
    result: Any = None
    try:
        with transaction.atomic(using=alias):  # a savepoint: the task's own writes
            task = _task(record, compat)
            result = _task_result(record, task, compat)
            compat.task_started.send(type(task.get_backend()), task_result=result)
            if record.takes_context:
                value = task.call(compat.TaskContext(task_result=result), *record.args, **record.kwargs)
            else:
                value = task.call(*record.args, **record.kwargs)
            value = compat.normalize_json(value)
            json.dumps(value, allow_nan=False)  # stored as JSON, or the attempt fails
    except RetryLater as later:  # not a failure: run again then
        record.status = TaskResultRecord.READY
        push_event(TASK_EVENT, str(record.pk), delay=later.seconds)
        return
    except BaseException as exc:  # noqa: BLE001 - anything a task raises fails its attempt, nothing more
        _failed(record, exc)
        if result is not None:
            _finished_signal(record, result, compat)
        return
    record.status = TaskResultRecord.SUCCESSFUL
    record.return_value = value
    record.finished_at = timezone.now()
    if result is not None:
        _finished_signal(record, result, compat)


def _task(record: TaskResultRecord, compat: Any) -> Any:
    """The task the row names, with the row's priority, queue and backend."""
    task = import_string(record.task_path)
    if not isinstance(task, compat.Task):
        raise TypeError(f"{record.task_path} is not a task (decorate it with @task)")
    if (task.priority, task.queue_name, task.backend) == (record.priority, record.queue_name, record.backend):
        return task  # using() validates the task again: not for nothing
    return task.using(priority=record.priority, queue_name=record.queue_name, backend=record.backend)


def _task_result(record: TaskResultRecord, task: Any, compat: Any) -> Any:
    """The TaskResult a task's context (and the framework's signals) see: RUNNING, this attempt
    in ``worker_ids``."""
    return compat.TaskResult(
        task=task,
        id=str(record.pk),
        status=compat.TaskResultStatus.RUNNING,
        enqueued_at=record.enqueued_at,
        started_at=record.started_at,
        finished_at=None,
        last_attempted_at=record.last_attempted_at,
        args=record.args,
        kwargs=record.kwargs,
        backend=record.backend,
        errors=[compat.TaskError(**error) for error in record.errors],
        worker_ids=list(record.worker_ids),
    )


def _failed(record: TaskResultRecord, exc: BaseException) -> None:
    """Record a failed attempt; retry after the backoff, or make the result FAILED."""
    kind = type(exc)
    error = {
        "exception_class_path": f"{kind.__module__}.{kind.__qualname__}",
        "traceback": redact("".join(traceback.format_exception(exc)))[-MAX_TRACEBACK_LENGTH:],
    }
    record.errors = [*record.errors, error][-MAX_ERRORS:]
    record.failed_attempts += 1
    policy = options_of(record.backend).retry
    if record.failed_attempts >= policy.max_attempts:
        record.status = TaskResultRecord.FAILED
        record.finished_at = timezone.now()
        what = "FAILED"
    else:
        delay = policy.delay_after(record.failed_attempts)
        record.status = TaskResultRecord.READY
        push_event(TASK_EVENT, str(record.pk), delay=delay)
        what = f"retrying in {delay:g}s"
    logger.error(
        "task %s (%s) failed (attempt %d of %d), %s: %s",
        record.task_path, record.pk, record.failed_attempts, policy.max_attempts, what, describe_error(exc),
        extra={"task_id": str(record.pk), "task_path": record.task_path},
    )  # fmt: skip


def _finished_signal(record: TaskResultRecord, result: Any, compat: Any) -> None:
    """The framework's ``task_finished`` (or nothing while a retry is due), with the outcome."""
    if record.status == TaskResultRecord.READY:
        return
    object.__setattr__(result, "status", compat.TaskResultStatus(record.status))
    object.__setattr__(result, "finished_at", record.finished_at)
    object.__setattr__(result, "errors", [compat.TaskError(**error) for error in record.errors])
    if record.status == TaskResultRecord.SUCCESSFUL:
        object.__setattr__(result, "_return_value", record.return_value)
    try:
        compat.task_finished.send(type(result.task.get_backend()), task_result=result)
    except Exception as exc:  # noqa: BLE001 - a receiver's error must not undo the task's outcome
        logger.warning("a task_finished receiver failed: %s", describe_error(exc))
