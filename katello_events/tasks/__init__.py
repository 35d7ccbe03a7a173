"""A backend for Django's Tasks framework on the event queue (``docs/tasks.md``).

``TASKS = {"default": {"BACKEND": "katello_events.tasks.EventQueueBackend"}}``; the task event
type is registered by ``katello_events/events.py`` in every process, the runner's included
(``TasksConfig`` does the same, for settings that name it). Importing this package needs no
Tasks framework; the backend does (Django 6's ``django.tasks``, or the ``django-tasks``
backport on Django 5.2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.apps import AppConfig

if TYPE_CHECKING:
    from katello_events.tasks.backend import EventQueueBackend

__all__ = ["EventQueueBackend", "TasksConfig"]


class TasksConfig(AppConfig):
    """Registers the ``katello_events.task`` event type when Django starts, in every process."""

    name = "katello_events.tasks"
    label = "katello_events_tasks"
    verbose_name = "Katello events: tasks"

    def ready(self) -> None:
        from katello_events.tasks import execute  # noqa: F401  (registers the event type)


def __getattr__(name: str) -> Any:
    # Lazily, so the app config loads without the Tasks framework being imported yet.
    if name == "EventQueueBackend":
        from katello_events.tasks.backend import EventQueueBackend

        return EventQueueBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
