"""katello_events: run an application's event handlers inside a Django web server.

Public API (importable before the app registry is ready; the work happens on call):

- :func:`start`: start this process's runner standby thread explicitly.
- :func:`stop`: stop it gracefully (handlers finish, status rows say so, the lock is released).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from katello_events.runner import Runner

__all__ = ["start", "stop"]


def start() -> Runner:
    """Start this process's runner (idempotent). Ignores ``AUTOSTART``; never call it in a
    process that forks afterwards (a preloading master)."""
    from katello_events.lifecycle import start as _start

    return _start()


def stop(timeout: float | None = None) -> bool:
    """Stop this process's runner, if it has one; True once it has stopped."""
    from katello_events.lifecycle import stop as _stop

    return _stop(timeout)
