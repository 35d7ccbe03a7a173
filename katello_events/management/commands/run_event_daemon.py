"""``manage.py run_event_daemon``: the runner as a foreground process of its own.

For deployments whose web workers must run no threads (``KATELLO_EVENTS["AUTOSTART"] = False``,
containers). It competes for the same lock as the web workers, so it can also run beside them.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from katello_events.conf import get_config
from katello_events.election import LockFileError, make_election
from katello_events.election.file_lock import open_lock_file
from katello_events.runner import Runner


class Command(BaseCommand):
    help = "Run the katello_events handlers in this process (standby until it wins the election)."
    # System checks run first: a misconfiguration exits non-zero with Django's clear message.
    requires_system_checks = "__all__"

    def handle(self, *args: Any, **options: Any) -> None:
        config = get_config()
        if config["LOCK_BACKEND"] == "file":
            self._check_lock_file(config["LOCK_FILE"])
        runner = Runner(config, make_election(config))
        self._stop_on_signals(runner)
        self.stdout.write(f"katello_events daemon (pid {runner.identity.pid}) waiting for {runner.election.describe()}")
        watcher = threading.Thread(target=self._announce_leadership, args=(runner,), daemon=True)
        watcher.start()
        runner.run()
        if runner.wedged:
            raise CommandError("handlers did not stop in time; exiting so the runner lock is released")
        if runner.retired:
            # A daemon that no longer competes has nothing left to do, whatever
            # RECYCLE_ON_HANDOVER says: exit non-zero so its supervisor starts a fresh process.
            raise CommandError(f"{runner.retired}; exiting so that a fresh process replaces this one")
        self.stdout.write("katello_events daemon stopped")

    def _check_lock_file(self, path: str) -> None:
        import os

        try:
            # Opened and closed before this process can hold the lock: harmless here.
            os.close(open_lock_file(path))
        except LockFileError as exc:
            raise CommandError(str(exc)) from exc

    def _stop_on_signals(self, runner: Runner) -> None:
        def request_stop(signum: int, frame: Any) -> None:
            # The runner's stop() only sets an event when called from its own thread.
            runner.stop()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    def _announce_leadership(self, runner: Runner) -> None:
        while not runner.finished.is_set():
            if runner.leading.wait(0.5):
                self.stdout.write("katello_events daemon is the runner")
                return
