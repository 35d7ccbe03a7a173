"""The no-op tasks bench/bench_tasks.py runs: one per backend (a task belongs to one backend)."""

from django.conf import settings

from katello_events.tasks.compat import FRAMEWORK

if FRAMEWORK == "django.tasks":
    from django.tasks import task
else:
    from django_tasks import task


@task
def noop() -> None:
    """Runs on our backend ("default")."""


if "db" in settings.TASKS:

    @task(backend="db")
    def noop_db() -> None:
        """Runs on django-tasks-db's DatabaseBackend ("db")."""
