"""This process's runner: started by triggers, stopped at exit, forgotten across fork.

At most one :class:`Runner` exists per process, keyed by pid: a child forked from a process
that had one (someone called ``start()`` in a preloading master) starts from nothing, because
the lock and the threads did not survive the fork even though the Python objects did.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable
from typing import Any

from katello_events.autostart import autostart_blocker
from katello_events.conf import get_config
from katello_events.log import get_logger
from katello_events.runner import Runner

logger = get_logger(__name__)

_guard = threading.Lock()
_runner: Runner | None = None
_runner_pid: int | None = None
_autostart_checked_pid: int | None = None


def current_runner() -> Runner | None:
    """This process's runner, if one was started in this process."""
    return _runner if _runner_pid == os.getpid() else None


def start(recycle: Callable[[str], None] | None = None) -> Runner:
    """Start this process's runner (standby thread) if it has none yet; return it.

    The explicit trigger: it ignores ``AUTOSTART`` and the process checks. Call it only in a
    process that will not fork afterwards. ``recycle`` is how the server recycles this process
    after a memory handover (see ``Runner.on_handover``); without it the process only stops
    competing.
    """
    global _runner, _runner_pid
    with _guard:
        runner = current_runner()
        if runner is None:
            runner = Runner(get_config(), on_handover=recycle)
            _runner, _runner_pid = runner, os.getpid()
            atexit.register(stop)
            runner.start()
            logger.debug("katello_events runner started in standby", extra={"pid": os.getpid()})
        return runner


def autostart(trigger: str, recycle: Callable[[str], None] | None = None) -> Runner | None:
    """Start the runner when this process is eligible (see :mod:`katello_events.autostart`).

    Called by the first request, the gunicorn hook and the uWSGI hook. Decides once per process.
    """
    global _autostart_checked_pid
    pid = os.getpid()
    if _autostart_checked_pid == pid:
        return current_runner()
    _autostart_checked_pid = pid
    blocker = autostart_blocker(autostart=get_config()["AUTOSTART"])
    if blocker:
        logger.debug("katello_events not started by %s: %s", trigger, blocker)
        return None
    return start(recycle)


def stop(timeout: float | None = None) -> bool:
    """Stop this process's runner, if any: handlers finish, status says so, lock is released."""
    runner = current_runner()
    if runner is None:
        return True
    return runner.stop(timeout)


def _forget_after_fork() -> None:
    global _runner, _runner_pid, _autostart_checked_pid
    _runner = _runner_pid = _autostart_checked_pid = None


os.register_at_fork(after_in_child=_forget_after_fork)


def start_on_first_request(sender: Any, **kwargs: Any) -> None:
    """``request_started`` receiver: the first request a worker serves starts its standby.

    Cheap after the first call (one pid comparison); see :func:`autostart`.
    """
    autostart("first request")
