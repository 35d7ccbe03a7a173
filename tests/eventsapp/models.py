"""Tables the test handlers write to, so tests count every handling exactly."""

from django.db import models


class Handling(models.Model):
    """One handler run, written in the handler's transaction (it rolls back with the batch)."""

    uid = models.CharField(max_length=100, blank=True)
    event_type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=255)
    metadata = models.JSONField(null=True)
    attempts = models.IntegerField()
    coalesced = models.IntegerField()
    pid = models.IntegerField()
    handled_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.event_type}:{self.object_id} by {self.pid}"


class Switch(models.Model):
    """A flag a test flips to make a failing handler succeed."""

    name = models.CharField(max_length=100, primary_key=True)

    def __str__(self) -> str:
        return self.name
