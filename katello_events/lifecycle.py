"""This process's runner: started by triggers, stopped at exit, forgotten across fork.

At most one :class:`Runner` exists per process, keyed by pid: a child forked from a process
that had one (someone called ``start()`` in a preloading master) starts from nothing, because
the lock and the threads did not survive the fork even though the Python objects did.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from katello_events.autostart import autostart_blocker, in_test_run, reloader_parent, serving_child
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
    try:
        enabled = get_config()["AUTOSTART"]
    except ImproperlyConfigured as exc:
        # A misspelt key: the handlers do not run, the site does. Logged once at start-up
        # (apps.py), shown by every status surface as "misconfigured".
        logger.debug("katello_events not started by %s: %s", trigger, exc)
        return None
    blocker = autostart_blocker(autostart=enabled)
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


def start_in_serving_child() -> Runner | None:
    """runserver's serving process starts its standby when Django is ready (``apps.py``), so
    the runner is up before the first request; every other process waits for its trigger."""
    if not serving_child():
        return None
    return autostart("runserver start-up")


def let_the_serving_child_stop() -> bool:
    """In runserver's reloader parent: give the serving child time to stop its runner on Ctrl-C.

    A Ctrl-C reaches both processes. Django's parent then kills the child 0.25 s later
    (``subprocess.run``), often before the child's runner has stopped its handlers and marked the
    rows stopped, which then read "no heartbeat" as after a crash. With this SIGINT handler the
    parent waits for the child to exit by itself, at most the runner's own stop bound
    (``STOP_TIMEOUT + 2 x HEARTBEAT_INTERVAL``, then it raises KeyboardInterrupt as before); a
    second Ctrl-C stops at once. A signal handler only: the parent starts no thread. True when
    installed (the reloader parent of a project whose runner starts by itself).
    """
    if not reloader_parent() or threading.current_thread() is not threading.main_thread():
        return False
    try:
        config = get_config()
    except ImproperlyConfigured:
        return False
    if not config.AUTOSTART or in_test_run(sys.argv):
        return False  # the child runs nothing to stop
    patience = max(1, round(config.STOP_TIMEOUT + 2 * config.HEARTBEAT_INTERVAL + 1))

    def give_up(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def wait_for_child(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: at once
        signal.signal(signal.SIGALRM, give_up)
        signal.alarm(patience)

    signal.signal(signal.SIGINT, wait_for_child)
    return True


def start_on_first_request(sender: Any, **kwargs: Any) -> None:
    """``request_started`` receiver: the first request a worker serves starts its standby.

    Cheap after the first call (one pid comparison); see :func:`autostart`.
    """
    autostart("first request")
