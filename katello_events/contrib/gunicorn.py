"""gunicorn server hooks. In your gunicorn config file::

    from katello_events.contrib.gunicorn import post_worker_init, worker_exit  # noqa: F401

``post_worker_init`` runs in each worker once the app (and so Django) is loaded, with or without
``--preload``; the master never starts anything. ``worker_exit`` stops the runner gracefully
when gunicorn recycles or shuts the worker down (it also runs in the master, where it is a no-op).
Keep gunicorn's ``graceful_timeout`` above ``KATELLO_EVENTS["STOP_TIMEOUT"]``.
"""

from __future__ import annotations

from typing import Any


def post_worker_init(worker: Any) -> None:
    from katello_events.lifecycle import autostart

    autostart("gunicorn post_worker_init")


def worker_exit(server: Any, worker: Any) -> None:
    from katello_events.lifecycle import stop

    stop()
