"""Database tables of katello_events."""

from __future__ import annotations

from django.db import models


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
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
