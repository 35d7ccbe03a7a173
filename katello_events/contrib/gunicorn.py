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
from typing import Any


def post_worker_init(worker: Any) -> None:
    from katello_events.lifecycle import autostart

    autostart("gunicorn post_worker_init", recycle=lambda reason: recycle_worker(worker, reason))


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
