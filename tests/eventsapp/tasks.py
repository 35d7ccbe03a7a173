"""Task functions of the tests (Django's Tasks framework, run by katello_events.tasks).

Decorated against the framework the environment has: ``django.tasks`` on Django 6, the
``django_tasks`` backport on 5.2 (through katello_events.tasks.compat's choice).
"""

from __future__ import annotations

import os
import threading
import time

from katello_events.tasks.compat import FRAMEWORK
from tests.eventsapp.models import Handling

if FRAMEWORK == "django.tasks":
    from django.tasks import task
else:
    from django_tasks import task

#: Set by a test to let ``wait_for_gate`` return (in-process runners only).
GATE = threading.Event()


def _record(label: str, **extra) -> None:
    Handling.objects.create(
        uid=label, event_type="task", object_id=label, metadata=extra or None, attempts=0, coalesced=1, pid=os.getpid()
    )


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def record(label: str, sleep: float = 0.0) -> str:
    """One Handling row per run (committed with the task's result, or not at all)."""
    _record(label)
    if sleep:
        time.sleep(sleep)
    return label


@task
def fail(message: str) -> None:
    """Writes a row (rolled back with the attempt), then raises."""
    _record("failed-write")
    raise ValueError(message)


@task(takes_context=True)
def with_context(context, label: str) -> dict:
    return {"id": context.task_result.id, "attempt": context.attempt, "label": label}


@task
async def async_add(a: int, b: int) -> int:
    return a + b


@task
def not_json() -> object:
    return {1, 2}


@task
def wait_for_gate(seconds: float = 10.0) -> bool:
    return GATE.wait(seconds)
