"""Settings of the Tasks backend's process tests: the test settings plus ``TASKS`` and the app
config that registers the task event type (``DJANGO_SETTINGS_MODULE`` of their servers)."""

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "katello_events.tasks.TasksConfig"]

TASKS = {
    "default": {
        "BACKEND": "katello_events.tasks.EventQueueBackend",
        "QUEUES": ["default", "reports"],
        # A failing task is FAILED after two attempts, a second apart.
        "OPTIONS": {"MAX_ATTEMPTS": 2, "RETRY_BACKOFF": 1.0},
    }
}
