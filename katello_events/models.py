"""Database tables of katello_events."""

from __future__ import annotations

import uuid
from typing import ClassVar

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone


class HandlerStatus(models.Model):
    """One row per handler slot: the shared status every process reads.

    Written only by the runner's control thread (a heartbeat every ``HEARTBEAT_INTERVAL``);
    read by /api/ping, /about/ and ``manage.py ping`` in any process on any host. Counters are
    cumulative across restarts and changes of runner. A row whose heartbeat is older than
    ``STALE_AFTER`` reads as not running, whatever ``running`` says.
    """

    name = models.CharField(max_length=100, primary_key=True)
    running = models.BooleanField(default=False)
    hostname = models.CharField(max_length=255, blank=True)
    pid = models.IntegerField(null=True, blank=True)
    since = models.DateTimeField(null=True, blank=True, help_text="When the current runner took the role.")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    processed_count = models.BigIntegerField(default=0)
    failed_count = models.BigIntegerField(default=0)
    queue_depth = models.BigIntegerField(null=True, blank=True, help_text="Null when unknown.")
    problem = models.TextField(blank=True, help_text="The current unresolved problem; empty when healthy.")
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    restarts = models.IntegerField(default=0, help_text="Handler crashes restarted by the supervisor.")
    counters = models.JSONField(default=dict, blank=True, help_text="Other cumulative counters.")
    details = models.JSONField(default=dict, blank=True, help_text="Gauges and details of the last heartbeat.")

    class Meta:
        verbose_name = "handler status"
        verbose_name_plural = "handler statuses"
        # A list, not a tuple: the migrations record a list, and makemigrations would take a
        # tuple for a change of options.
        ordering: ClassVar[list[str]] = ["name"]

    def __str__(self) -> str:
        return self.name


class Event(models.Model):
    """One pushed event of the durable queue (``push_event``), deleted once handled.

    Nothing is ever marked "in progress": a batch is claimed with ``SELECT ... FOR UPDATE SKIP
    LOCKED`` inside the transaction that runs its handlers and deletes its rows, so a runner
    that dies mid-batch leaves its rows untouched and unlocked (PostgreSQL rolls back), and the
    next runner takes them at once. Rows whose handler kept failing become ``dead``.
    """

    PENDING = "pending"
    DEAD = "dead"
    STATES = ((PENDING, "pending"), (DEAD, "dead"))

    id = models.BigAutoField(primary_key=True)
    event_type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=255)
    metadata = models.JSONField(null=True, blank=True)
    state = models.CharField(max_length=10, choices=STATES, default=PENDING)
    run_after = models.DateTimeField(db_default=Now(), help_text="Not handled before this time (delay, backoff).")
    attempts = models.IntegerField(default=0, help_text="Failed attempts so far.")
    last_error = models.TextField(blank=True)
    attempt_started_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Set while a careful attempt runs; still set afterwards: the runner died during it.",
    )
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        # A list, as for HandlerStatus.
        ordering: ClassVar[list[str]] = ["id"]
        indexes = (
            # The claim scans pending rows in id order.
            models.Index(fields=["id"], condition=Q(state="pending"), name="katello_events_pending_id"),
            # Coalescing looks up the twins of a (type, object) pair.
            models.Index(fields=["event_type", "object_id"], name="katello_events_type_object"),
            # Queue depth and deferred counts.
            models.Index(fields=["run_after"], condition=Q(state="pending"), name="katello_events_pending_due"),
        )

    def __str__(self) -> str:
        return f"{self.event_type}:{self.object_id} ({self.state})"


class RunnerFence(models.Model):
    """The fencing token: the epoch of the current runner's term (one row, ``name = "runner"``).

    Incremented by every runner when it takes the role; every transaction that commits handled
    work checks it first (``katello_events.fencing``), so a runner that lost the role without
    knowing it cannot commit anything after its successor started.
    """

    name = models.CharField(max_length=50, primary_key=True)
    epoch = models.BigIntegerField(default=0)
    hostname = models.CharField(max_length=255, blank=True)
    pid = models.IntegerField(null=True, blank=True)
    taken_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "katello_events_fence"
        verbose_name = "runner fence"

    def __str__(self) -> str:
        return f"{self.name} epoch {self.epoch}"


class TaskResultRecord(models.Model):
    """One task enqueued through the Django Tasks backend (``katello_events.tasks``) and its outcome.

    Written with its ``katello_events.task`` event in the enqueuing transaction, and updated by
    the runner in the transaction of the batch that ran the task (so a rolled-back batch leaves
    it as it was). Lives in the event queue's database: route it with ``Event``. ``status`` is
    READY, SUCCESSFUL or FAILED; RUNNING is never stored (a running task's batch has not
    committed), it is read from the event's row lock (``katello_events.tasks.results``).
    """

    READY = "READY"
    SUCCESSFUL = "SUCCESSFUL"
    FAILED = "FAILED"
    STATUSES = ((READY, "ready"), (SUCCESSFUL, "successful"), (FAILED, "failed"))

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    backend = models.CharField(max_length=100, help_text="The TASKS alias it was enqueued with.")
    queue_name = models.CharField(max_length=100)
    task_path = models.CharField(max_length=255, help_text="Module path of the task function.")
    priority = models.SmallIntegerField(default=0)
    takes_context = models.BooleanField(default=False)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=STATUSES, default=READY)
    run_after = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    last_attempted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    failed_attempts = models.IntegerField(default=0, help_text="Attempts that raised since enqueued or retried.")
    return_value = models.JSONField(null=True, blank=True)
    errors = models.JSONField(
        default=list, blank=True, help_text="[{exception_class_path, traceback}] of failed attempts, redacted."
    )
    worker_ids = models.JSONField(default=list, blank=True, help_text="host:pid of the runner of each attempt.")

    class Meta:
        db_table = "katello_events_taskresult"
        verbose_name = "task result"
        # A list, as for HandlerStatus.
        ordering: ClassVar[list[str]] = ["-enqueued_at"]
        indexes = (
            # Per-queue counts (status surfaces) and the admin's filters.
            models.Index(fields=["queue_name", "status"], name="katello_events_task_queue"),
            # Pruning finished results.
            models.Index(fields=["finished_at"], name="katello_events_task_finished"),
        )

    def __str__(self) -> str:
        return f"{self.task_path} {self.id} ({self.status})"
