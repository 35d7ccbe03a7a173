"""uWSGI hook: start the runner's standby in every worker, stop it when the worker exits.

Import this module with ``import = katello_events.contrib.uwsgi`` in the uWSGI config (or from
your WSGI file). uWSGI needs ``enable-threads = true`` for Python threads to run.

- Without ``lazy-apps`` uWSGI imports it in the master and forks: the ``postfork`` hook is what
  starts the workers' threads, never the master.
- With ``lazy-apps`` each worker imports it after its fork, so a ``postfork`` hook would never
  fire: the worker starts its standby right away instead (setting Django up first if the app is
  not loaded yet, as the app's own ``get_wsgi_application()`` would).

After a memory handover (``MAX_RSS_MB`` with ``RECYCLE_ON_HANDOVER``) the worker sends itself
SIGHUP, uWSGI's graceful reload of one worker: it finishes the request in hand and exits, and the
master spawns a fresh one.
"""

from __future__ import annotations

import os
import signal

from django.core.exceptions import ImproperlyConfigured

try:
    import uwsgi
    from uwsgidecorators import postfork
except ImportError as exc:  # pragma: no cover - only importable inside uWSGI
    raise ImproperlyConfigured("katello_events.contrib.uwsgi can only be imported under uWSGI") from exc


def recycle_worker(reason: str) -> None:
    """Ask uWSGI to replace this worker gracefully (called from the runner's thread)."""
    from katello_events.log import get_logger

    get_logger(__name__).info("recycling this uWSGI worker (%s)", reason)
    os.kill(os.getpid(), signal.SIGHUP)


@postfork
def start_after_fork() -> None:
    from katello_events.lifecycle import autostart

    autostart("uwsgi postfork", recycle=recycle_worker)


def stop_at_exit() -> None:
    from katello_events.lifecycle import stop

    stop()


def _start_in_this_worker() -> None:
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup(set_prefix=False)  # idempotent: the app's own setup() finds it done
    start_after_fork()


uwsgi.atexit = stop_at_exit
if uwsgi.worker_id() > 0:  # lazy-apps: imported in a worker, after the fork
    _start_in_this_worker()
