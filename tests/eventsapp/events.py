"""Event handlers of the tests (discovered like any installed app's events.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from katello_events import RetryLater, event_handler
from tests.eventsapp.models import Handling, Switch


def record(event) -> Handling:
    metadata = event.metadata or {}
    return Handling.objects.create(
        uid=str(metadata.get("uid", "")) if isinstance(metadata, dict) else "",
        event_type=event.event_type,
        object_id=event.object_id,
        metadata=event.metadata,
        attempts=event.attempts,
        coalesced=event.coalesced,
        pid=os.getpid(),
    )


@event_handler("test.record")
def handle_record(event) -> None:
    """Records the run; metadata may ask it to touch a file ("mark") and then "sleep" seconds."""
    record(event)
    metadata = event.metadata if isinstance(event.metadata, dict) else {}
    if metadata.get("mark"):
        Path(metadata["mark"]).touch()
    if metadata.get("sleep"):
        time.sleep(metadata["sleep"])


@event_handler("test.fail")
def handle_fail(event) -> None:
    record(event)  # rolled back with the failure: tests can check nothing leaked
    raise RuntimeError(f"cannot handle {event.object_id} (token=abc123)")


@event_handler("test.fail_until_switched")
def handle_fail_until_switched(event) -> None:
    if not Switch.objects.filter(name=event.object_id).exists():
        raise RuntimeError(f"switch {event.object_id} is off")
    record(event)


@event_handler("test.retry_later_until_switched")
def handle_retry_later_until_switched(event) -> None:
    if not Switch.objects.filter(name=event.object_id).exists():
        raise RetryLater(float(event.metadata["seconds"]), "busy")
    record(event)
