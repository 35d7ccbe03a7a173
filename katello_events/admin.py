"""Django admin: the event queue, the handler status rows and task results, read-only, plus
"requeue dead events" and "retry failed tasks".

Nothing here writes except two actions: requeue, which does what ``manage.py requeue_events`` does
(:func:`katello_events.event_queue.maintenance.requeue_dead`) and needs the ``change_event``
permission, and retry, which enqueues failed tasks again
(:func:`katello_events.tasks.upkeep.retry_failed`, the ``change_taskresultrecord`` permission).
Events and results are never added, edited or deleted by hand: the queue owns its rows.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import Case, CharField, Q, QuerySet, Value, When
from django.db.models.functions import Now
from django.http import HttpRequest

from katello_events.conf import get_config, queue_depth_threshold
from katello_events.event_queue.maintenance import requeue_dead
from katello_events.models import Event, HandlerStatus, TaskResultRecord
from katello_events.status.report import handover_grace, service_entry
from katello_events.tasks.upkeep import retry_failed

READY, DEFERRED, DEAD = "ready", "deferred", "dead"

#: Where an event stands, by the database's clock (the consumer's notion of "due").
_READINESS_FILTERS = {
    READY: Q(state=Event.PENDING, run_after__lte=Now()),
    DEFERRED: Q(state=Event.PENDING, run_after__gt=Now()),
    DEAD: Q(state=Event.DEAD),
}


class ReadOnlyAdmin(admin.ModelAdmin):
    """Viewable by users with the view (or change) permission; never added, edited or deleted here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadinessFilter(admin.SimpleListFilter):
    title = "readiness"
    parameter_name = "readiness"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(READY, "ready now"), (DEFERRED, "deferred (run_after in the future)"), (DEAD, "dead")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Event]) -> QuerySet[Event]:
        # Filtered on the columns rather than the annotation, so the partial indexes can serve it.
        condition = _READINESS_FILTERS.get(self.value() or "")
        return queryset.filter(condition) if condition is not None else queryset


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("id", "event_type", "object_id", "state", "readiness", "attempts", "run_after", "created_at")
    list_filter = (ReadinessFilter, "state", "event_type")
    # Exact match: object ids are keys ("12" must not find "123"), and icontains scans the table.
    search_fields = ("=object_id",)
    search_help_text = "Exact object id."
    actions = ("requeue_selected",)
    # A deep queue makes COUNT(*) of the whole table slow; the page count of the filter is enough.
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Event]:
        readiness = Case(
            When(state=Event.DEAD, then=Value(DEAD)),
            When(run_after__gt=Now(), then=Value(DEFERRED)),
            default=Value(READY),
            output_field=CharField(),
        )
        return super().get_queryset(request).annotate(readiness=readiness)

    @admin.display(description="readiness", ordering="readiness")
    def readiness(self, event: Event) -> str:
        return getattr(event, "readiness", "")

    def has_requeue_permission(self, request: HttpRequest) -> bool:
        # Requeueing changes rows, so it takes the model's change permission, which the
        # read-only admin otherwise never grants in its forms.
        return request.user.has_perm(f"{Event._meta.app_label}.change_event")

    @admin.action(description="Requeue selected dead events", permissions=["requeue"])
    def requeue_selected(self, request: HttpRequest, queryset: QuerySet[Event]) -> None:
        selected = queryset.count()
        count = requeue_dead(queryset)
        self.message_user(request, f"{count} dead event(s) requeued.", messages.SUCCESS)
        if selected > count:
            self.message_user(request, f"{selected - count} selected event(s) were not dead; left as they were.")


@admin.register(HandlerStatus)
class HandlerStatusAdmin(ReadOnlyAdmin):
    list_display = (
        "name",
        "status",
        "running",
        "hostname",
        "pid",
        "since",
        "heartbeat_at",
        "processed_count",
        "failed_count",
        "queue_depth",
        "restarts",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[HandlerStatus]:
        # The database's clock, as /api/ping judges staleness by it.
        return super().get_queryset(request).annotate(db_now=Now())

    @admin.display(description="status")
    def status(self, row: HandlerStatus) -> str:
        """The verdict /api/ping gives for this row (a row can say running and still be stale)."""
        config = get_config()
        threshold = queue_depth_threshold(row.name, config)
        entry = service_entry(
            row, getattr(row, "db_now", None), config["STALE_AFTER"], "0", threshold, handover_grace(config)
        )
        return f"{entry['status']}: {entry['message']}"


@admin.register(TaskResultRecord)
class TaskResultAdmin(ReadOnlyAdmin):
    """Results of tasks run by the Django Tasks backend (``katello_events.tasks``), with "retry"."""

    list_display = (
        "id", "task_path", "backend", "queue_name", "status", "priority", "attempts", "enqueued_at", "finished_at",
    )  # fmt: skip
    list_filter = ("status", "backend", "queue_name")
    search_fields = ("=id", "task_path")
    search_help_text = "Exact result id, or part of the task's path."
    actions = ("retry_selected",)
    show_full_result_count = False

    @admin.display(description="attempts")
    def attempts(self, record: TaskResultRecord) -> int:
        return len(record.worker_ids)

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{TaskResultRecord._meta.app_label}.change_taskresultrecord")

    @admin.action(description="Retry selected failed tasks", permissions=["retry"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[TaskResultRecord]) -> None:
        selected = queryset.count()
        count = retry_failed(queryset)
        self.message_user(request, f"{count} failed task(s) enqueued again.", messages.SUCCESS)
        if selected > count:
            self.message_user(request, f"{selected - count} selected task(s) had not failed; left as they were.")
