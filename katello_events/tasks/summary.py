"""Per-queue counts of task results, for the status surfaces: how many wait, succeeded and failed
(within the results' retention), read from the result rows in one grouped query."""

from __future__ import annotations

from typing import TypedDict

from django.db.models import Count

from katello_events.fencing import queue_alias
from katello_events.models import TaskResultRecord


class QueueCounts(TypedDict):
    """One task queue of one backend: results READY (waiting, or running now), SUCCESSFUL and
    FAILED among those kept."""

    backend: str
    queue_name: str
    waiting: int
    successful: int
    failed: int


def task_queues(using: str | None = None) -> list[QueueCounts]:
    """The counts of every (backend, queue) that has results, sorted by backend and queue.

    A FAILED count here includes only results already settled as FAILED; a READY result whose
    event died reads FAILED through ``get_result()`` at once, and here after the runner's next
    prune pass.
    """
    rows = (
        TaskResultRecord.objects.using(using or queue_alias())
        .order_by()
        .values_list("backend", "queue_name", "status")
        .annotate(count=Count("pk"))
    )
    queues: dict[tuple[str, str], QueueCounts] = {}
    for backend, queue_name, status, count in rows:
        entry = queues.setdefault(
            (backend, queue_name),
            QueueCounts(backend=backend, queue_name=queue_name, waiting=0, successful=0, failed=0),
        )
        if status == TaskResultRecord.READY:
            entry["waiting"] += count
        elif status == TaskResultRecord.SUCCESSFUL:
            entry["successful"] += count
        elif status == TaskResultRecord.FAILED:
            entry["failed"] += count
    return [queues[key] for key in sorted(queues)]
