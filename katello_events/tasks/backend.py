"""``EventQueueBackend``: Django's Tasks framework on katello_events' event queue.

``enqueue()`` writes a result row and its ``katello_events.task`` event in the caller's
transaction (on the queue's database), so a task enqueued in a transaction that rolls back never
runs, and one committed is run by the elected runner's consumer (``execute.py``); results are
read from any process (``results.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from asgiref.sync import sync_to_async
from django.core import checks
from django.db import transaction
from django.utils import timezone

import katello_events.tasks.compat as compat
from katello_events.event_queue.push import json_strings, push_event
from katello_events.fencing import queue_alias
from katello_events.models import TaskResultRecord
from katello_events.tasks.execute import TASK_EVENT
from katello_events.tasks.policy import parse_options
from katello_events.tasks.results import load_result, to_task_result


class EventQueueBackend(compat.BaseTaskBackend):
    """A ``TASKS`` backend whose tasks the elected runner's event-queue consumer runs.

    ``OPTIONS``: ``MAX_ATTEMPTS``, ``RETRY_BACKOFF``, ``RETRY_BACKOFF_MAX`` (default: the
    ``katello_events`` slot's retry policy) and ``RESULT_RETENTION`` (seconds finished results
    are kept; a week). ``QUEUES``: the queue names tasks may use (the framework checks them).
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict) -> None:
        super().__init__(alias, params)
        self.task_options = parse_options(alias, self.options)

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Record the task and its event in the caller's transaction; its READY result."""
        self.validate_task(task)
        args = compat.normalize_json(list(args))
        kwargs = compat.normalize_json(dict(kwargs))
        _check_storable({"args": args, "kwargs": kwargs})
        delay = None
        if task.run_after is not None:
            delay = max((task.run_after - timezone.now()).total_seconds(), 0.0)
        record = TaskResultRecord(
            backend=self.alias,
            queue_name=task.queue_name,
            task_path=task.module_path,
            priority=task.priority,
            takes_context=task.takes_context,
            args=args,
            kwargs=kwargs,
            run_after=task.run_after,
        )
        alias = queue_alias()
        with transaction.atomic(using=alias):  # the row and its event, or neither
            record.save(using=alias, force_insert=True)
            push_event(TASK_EVENT, str(record.pk), delay=delay)
        result = to_task_result(record, TaskResultRecord.READY, [])
        compat.task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> Any:
        """The result as it stands now, from any process; ``TaskResultDoesNotExist`` if none."""
        return load_result(result_id)

    async def aget_result(self, result_id: str) -> Any:
        """See :meth:`get_result`."""
        return await sync_to_async(self.get_result, thread_sensitive=True)(result_id=result_id)

    def check(self, **kwargs: Any) -> Iterable[checks.CheckMessage]:
        """The task event type must be registered (``katello_events`` in ``INSTALLED_APPS`` does
        it), or the runner would keep tasks as dead at once."""
        from katello_events.registry import event_handlers

        if TASK_EVENT not in event_handlers:
            yield checks.Error(
                f"the task backend {self.alias!r} needs 'katello_events' in INSTALLED_APPS",
                hint="Without it the runner does not know the task event type and keeps tasks as dead.",
                obj=self.alias,
                id="katello_events.E101",
            )


def _check_storable(document: dict[str, Any]) -> None:
    """Arguments PostgreSQL's jsonb can store: JSON without NaN, NUL characters or lone surrogates
    (refused here, before anything is written, rather than breaking the caller's transaction)."""
    try:
        json.dumps(document, allow_nan=False)
    except ValueError as exc:
        raise compat.InvalidTask(f"task arguments must be JSON: {exc}") from None
    for text in json_strings(document):
        if "\x00" in text:
            raise compat.InvalidTask("task arguments must not contain NUL (\\x00) characters")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise compat.InvalidTask("task arguments must be valid Unicode text (a lone surrogate)") from None
