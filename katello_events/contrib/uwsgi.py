"""uWSGI hook: start the runner's standby in every worker after fork.

Import this module from your WSGI file (or ``import = katello_events.contrib.uwsgi`` in the
uWSGI config). uWSGI needs ``enable-threads = true`` for Python threads to run. Without
``lazy-apps`` uWSGI loads the app in the master and forks: the postfork hook is what starts
the workers' threads, never the master.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

try:
    import uwsgi
    from uwsgidecorators import postfork
except ImportError as exc:  # pragma: no cover - only importable inside uWSGI
    raise ImproperlyConfigured("katello_events.contrib.uwsgi can only be imported under uWSGI") from exc


@postfork
def start_after_fork() -> None:
    from katello_events.lifecycle import autostart

    autostart("uwsgi postfork")


def stop_at_exit() -> None:
    from katello_events.lifecycle import stop

    stop()


uwsgi.atexit = stop_at_exit
