"""gunicorn server hooks. In your gunicorn config file::

    from katello_events.contrib.gunicorn import post_worker_init, worker_exit  # noqa: F401

``post_worker_init`` runs in each worker once the app (and so Django) is loaded, with or without
``--preload``; the master never starts anything. ``worker_exit`` stops the runner gracefully
when gunicorn recycles or shuts the worker down (it also runs in the master, where it is a no-op).
Keep gunicorn's ``graceful_timeout`` above ``KATELLO_EVENTS["STOP_TIMEOUT"]``.

After a memory handover (``MAX_RSS_MB``, with ``RECYCLE_ON_HANDOVER``) the worker is recycled the
way gunicorn recycles a worker after ``max_requests``: it finishes the request in hand and exits,
and the master starts a fresh one.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, NoReturn

#: gunicorn's WORKER_BOOT_ERROR and APP_LOAD_ERROR: a worker exiting with either makes the
#: arbiter halt the whole server, every worker with it.
_HALTING_STATUSES = (3, 4)
#: What a handler thread's os._exit() with one of those statuses becomes.
GUARDED_EXIT_STATUS = 70


def post_worker_init(worker: Any) -> None:
    from katello_events.lifecycle import autostart

    guard_exit_status()
    autostart("gunicorn post_worker_init", recycle=lambda reason: recycle_worker(worker, reason))


def guard_exit_status() -> None:
    """Keep a handler's ``os._exit(3)`` from halting gunicorn (idempotent, this worker only).

    A handler may end its process (that is its own event's problem: the next runner charges the
    attempt), but it must not stop every worker of the server: outside the main thread, the
    statuses gunicorn reads as a failed boot become :data:`GUARDED_EXIT_STATUS`. gunicorn's own
    exits happen in the main thread and keep their meaning.
    """
    real_exit = os._exit
    if getattr(real_exit, "katello_events_guard", False):
        return

    def guarded_exit(status: int) -> NoReturn:
        if status in _HALTING_STATUSES and threading.current_thread() is not threading.main_thread():
            status = GUARDED_EXIT_STATUS
        real_exit(status)

    # A marker on the function object, which mypy does not let a function have.
    guarded_exit.katello_events_guard = True  # type: ignore[attr-defined]
    os._exit = guarded_exit


def worker_exit(server: Any, worker: Any) -> None:
    from katello_events.lifecycle import stop

    stop()


def recycle_worker(worker: Any, reason: str) -> None:
    """Ask this gunicorn worker to exit gracefully (called from the runner's thread)."""
    worker.log.info("katello_events: recycling this worker (%s)", reason)
    # The worker loops (sync, gthread) run `while self.alive`; it is what SIGTERM's handler sets.
    worker.alive = False
    # Wake a worker waiting in select() at once rather than after its timeout; gunicorn's own
    # signal wake-up uses the same pipe. The pipe is non-blocking, so this never waits.
    pipe = getattr(worker, "PIPE", None)
    if pipe:
        with contextlib.suppress(OSError):
            os.write(pipe[1], b"1")
