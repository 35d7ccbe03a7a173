"""Reading task results from any process: a result row as the framework's ``TaskResult``, with
the status the queue's rows say now (RUNNING while a consumer holds its event, FAILED once the
queue gave up on it)."""

from __future__ import annotations

from typing import Any

from django.db import connections, transaction
from django.db.models import CharField, Exists, OuterRef, Subquery
from django.db.models.functions import Cast, Now
from django.utils.module_loading import import_string

import katello_events.tasks.compat as compat
from katello_events.fencing import queue_alias
from katello_events.models import Event, TaskResultRecord
from katello_events.tasks.execute import TASK_EVENT, TaskDied, parse_id


def load_result(result_id: str) -> compat.TaskResult:
    """The result ``result_id`` as it stands now; ``TaskResultDoesNotExist`` if there is none."""
    key = parse_id(result_id)
    if key is None:
        raise compat.TaskResultDoesNotExist(f"no task result {result_id!r}")
    alias = queue_alias()
    events = Event.objects.using(alias).filter(
        event_type=TASK_EVENT, object_id=Cast(OuterRef("pk"), output_field=CharField())
    )
    # One statement, one snapshot: the row and its events agree (a batch commits both at once).
    record = (
        TaskResultRecord.objects.using(alias)
        .filter(pk=key)
        .annotate(
            due=Exists(events.filter(state=Event.PENDING, run_after__lte=Now())),
            pending=Exists(events.filter(state=Event.PENDING)),
            dead_error=Subquery(events.filter(state=Event.DEAD).order_by("-id").values("last_error")[:1]),
        )
        .first()
    )
    if record is None:
        raise compat.TaskResultDoesNotExist(f"no task result {result_id!r}")
    status = record.status
    errors = list(record.errors)
    if status == TaskResultRecord.READY:
        if record.dead_error is not None and not record.pending:
            status = TaskResultRecord.FAILED
            errors.append(_died(record.dead_error))
        elif record.due and _claimed(alias, str(key)):
            again = TaskResultRecord.objects.using(alias).filter(pk=key).first()
            if again is None:
                raise compat.TaskResultDoesNotExist(f"no task result {result_id!r}")
            if again.status != TaskResultRecord.READY:  # finished meanwhile
                return to_task_result(again, again.status, list(again.errors))
            status = compat.TaskResultStatus.RUNNING.value
    return to_task_result(record, status, errors)


def to_task_result(record: TaskResultRecord, status: str, errors: list[dict[str, Any]]) -> compat.TaskResult:
    """The framework's ``TaskResult`` for a row (its task imported by path)."""
    task = import_string(record.task_path)
    if (task.priority, task.queue_name, task.backend) != (record.priority, record.queue_name, record.backend):
        task = task.using(priority=record.priority, queue_name=record.queue_name, backend=record.backend)
    if record.run_after is not None:
        task = task.using(run_after=record.run_after)
    result: compat.TaskResult = compat.TaskResult(
        task=task,
        id=str(record.pk),
        status=compat.TaskResultStatus(status),
        enqueued_at=record.enqueued_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        last_attempted_at=record.last_attempted_at,
        args=record.args,
        kwargs=record.kwargs,
        backend=record.backend,
        errors=[compat.TaskError(**error) for error in errors],
        worker_ids=list(record.worker_ids),
    )
    if status == TaskResultRecord.SUCCESSFUL:
        object.__setattr__(result, "_return_value", record.return_value)
    return result


def _died(last_error: str) -> dict[str, Any]:
    return {
        "exception_class_path": f"{TaskDied.__module__}.{TaskDied.__qualname__}",
        "traceback": last_error or "the event queue gave up on it",
    }


def _claimed(alias: str, object_id: str) -> bool:
    """Whether a consumer's batch holds the result's due event now (row-locked: its transaction
    runs the task). PostgreSQL only; the probe's lock is rolled back at once, savepoint or not."""
    if connections[alias].vendor != "postgresql":
        return False
    with transaction.atomic(using=alias):
        free = list(
            Event.objects.using(alias)
            .select_for_update(skip_locked=True)
            .filter(event_type=TASK_EVENT, object_id=object_id, state=Event.PENDING, run_after__lte=Now())
            .values_list("id", flat=True)
        )
        transaction.set_rollback(True, using=alias)
    return not free
