"""Settings of bench/bench_tasks.py: the test settings, our Tasks backend ("default") and
django-tasks-db's DatabaseBackend ("db") side by side, when it is installed."""

import importlib.util

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

HAVE_TASKS_DB = importlib.util.find_spec("django_tasks_db") is not None

INSTALLED_APPS = [*INSTALLED_APPS, "katello_events.tasks.TasksConfig"]
TASKS = {"default": {"BACKEND": "katello_events.tasks.EventQueueBackend", "OPTIONS": {"MAX_ATTEMPTS": 1}}}
if HAVE_TASKS_DB:
    INSTALLED_APPS += ["django_tasks", "django_tasks_db"]
    TASKS["db"] = {"BACKEND": "django_tasks_db.DatabaseBackend"}
