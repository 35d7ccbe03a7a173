"""The runner: wins the election, then runs and supervises the handlers and heartbeats their status."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from django import db
from django.db import connections

from katello_events.conf import Config, get_config, handler_specs
from katello_events.election import Election, LockFileError, make_election
from katello_events.election.lock_path import UNUSABLE
from katello_events.errors import NOT_MIGRATED, describe_error, is_missing_table
from katello_events.fencing import Deposed, Fence, take_epoch
from katello_events.log import get_logger
from katello_events.memory import current_rss_mb
from katello_events.redaction import redact
from katello_events.status.depth_warnings import QueueDepthMonitor
from katello_events.status.store import HELD_UNTIL_EXIT, RunnerIdentity, StatusStore, report_standby_problem
from katello_events.supervisor import Supervisor

logger = get_logger(__name__)


class Runner:
    """Competes for the runner role and, while it holds it, runs the configured handlers.

    Lifecycle:

    - :meth:`start` runs the control loop in a daemon thread (web workers);
      :meth:`run` runs it in the calling thread (``run_event_daemon``).
    - The control loop is a standby until the election is won: one non-blocking attempt every
      ``STANDBY_INTERVAL``, no database connection. Once won it leads: claims the status rows,
      starts every handler under a :class:`Supervisor`, then every ``HEARTBEAT_INTERVAL`` checks
      it still holds the lock (fencing), restarts crashed handlers and writes the heartbeat.
    - :meth:`stop` (any thread, idempotent) ends the loop: handlers finish the unit in hand
      (bounded by ``STOP_TIMEOUT``), the rows say "not running", and only then is the lock
      released, so a standby of this host never starts beside them (and the fencing token keeps
      a runner that lost the role without knowing it from committing anything).
    - Winning the lock but failing to start (tables not migrated, a bad handler path) releases
      the lock at once and competes again after ``START_RETRY_DELAY``: a broken process never
      blocks failover.
    - Fencing token: on winning, the runner takes a new epoch (``katello_events.fencing``)
      before it claims the rows; its handlers and heartbeats check it in every committing
      transaction. A heartbeat that finds it superseded (deposed) steps down without writing.
    - Memory watchdog (``MAX_RSS_MB``) and stalls (a handler with no progress for
      ``STALL_TIMEOUT``): the runner steps down like a stop, records the reason in the status
      rows, retires (this process never competes again: its memory, or a thread that cannot be
      killed, is the problem) and, with ``RECYCLE_ON_HANDOVER``, calls ``on_handover`` with the
      reason so the server can recycle the process. A stuck thread keeps the lock until then.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        election: Election | None = None,
        on_handover: Callable[[str], None] | None = None,
    ) -> None:
        # A plain dict (tests, older callers) is checked and typed like the setting itself.
        self.config: Config = config if isinstance(config, Config) else Config.from_mapping(config or get_config())
        self.election = election or make_election(self.config)
        #: Called (from the control thread) with the reason after a memory handover, when
        #: RECYCLE_ON_HANDOVER is set: the server's way to recycle this process.
        self.on_handover = on_handover
        self.identity = RunnerIdentity(hostname=socket.gethostname(), pid=os.getpid())
        self.leading = threading.Event()  #: set while this process is the runner
        self.finished = threading.Event()  #: set once the control loop has exited
        self._stop_requested = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_complaint: str | None = None
        self._election_problem_reported: tuple[str, float] | None = None
        self._heartbeat_failing = False
        self._depth_monitor = QueueDepthMonitor(self.config)
        #: The supervisor while this process leads (for introspection), else None.
        self.supervisor: Supervisor | None = None
        #: True when handlers did not stop in time: the lock is kept until the process exits.
        self.wedged = False
        #: The reason of a memory handover: the control loop ended and never competes again.
        self.retired: str | None = None
        self._handover: str | None = None
        self._deposed = False
        self._last_snapshots: list = []

    # -- public lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Run the control loop in a daemon thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="katello-events:runner", daemon=True)
            self._thread.start()

    def run(self) -> None:
        """The control loop, in the calling thread, until :meth:`stop`."""
        config = self.config
        try:
            while not self._stop_requested.is_set() and not self.wedged and not self.retired:
                if not self._won_election():
                    self._stop_requested.wait(config["STANDBY_INTERVAL"])
                elif not self._lead():
                    self._stop_requested.wait(config["START_RETRY_DELAY"])
        finally:
            connections.close_all()
            self.finished.set()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop leading or waiting; True once the control loop has exited within ``timeout``."""
        self._stop_requested.set()
        if timeout is None:
            timeout = self.config["STOP_TIMEOUT"] + 2 * self.config["HEARTBEAT_INTERVAL"]
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return self.finished.is_set() or self._thread is None

    # -- standby ---------------------------------------------------------------------------------

    def _won_election(self) -> bool:
        try:
            won = self.election.try_acquire()
        except Exception as exc:  # noqa: BLE001 - LockFileError, OSError, a database error: never die
            text = str(exc) if isinstance(exc, LockFileError) else f"{UNUSABLE}: {redact(describe_error(exc))}"
            self._complain(text)
            self._report_election_problem(text)
            self._stop_requested.wait(self.config["START_RETRY_DELAY"])
            return False
        self._election_problem_reported = None
        return won

    def _complain(self, message: str) -> None:
        """Log a standby problem once, not once per attempt."""
        if message != self._last_complaint:
            logger.error(message, extra={"pid": self.identity.pid})
            self._last_complaint = message

    def _report_election_problem(self, problem: str) -> None:
        """Say why this candidate cannot compete in the status rows no live runner holds.

        Written when the problem changes and again every ``STALE_AFTER``, so a runner that
        stopped meanwhile does not leave its clean "not running" as the last word. Best effort:
        with the database away the rows cannot be written, and the readers say so anyway.
        """
        now = time.monotonic()
        last = self._election_problem_reported
        if last and last[0] == problem and now - last[1] < self.config["STALE_AFTER"]:
            return
        self._election_problem_reported = (problem, now)
        try:
            report_standby_problem(list(self.config["HANDLERS"]), problem, self.config["STALE_AFTER"])
        except Exception as exc:  # noqa: BLE001 - the log already says it; the rows are a courtesy
            logger.debug("could not write the election problem to the status rows: %s", describe_error(exc))
        finally:
            connections.close_all()  # a standby holds no database connection

    # -- leading ---------------------------------------------------------------------------------

    def _lead(self) -> bool:
        """Lead until stopped or fenced; False when starting failed (the lock is released then)."""
        try:
            specs = handler_specs(self.config)
            store = StatusStore(self.identity, list(specs))
            supervisor = Supervisor(specs, self.config)
            fence = self._new_term(store)
            supervisor.use_fence(fence)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the lock is released and the standby retries
            why = f"the database is {NOT_MIGRATED}" if is_missing_table(exc) else describe_error(exc)
            self._complain(f"won the election but could not start the handlers: {why}")
            self.election.release()
            connections.close_all()
            return False
        self._last_complaint = None
        self._deposed = False
        self.supervisor = supervisor
        self.leading.set()
        logger.info(
            "this process is now the katello_events runner (%s, epoch %s%s)",
            self.election.describe(),
            fence.epoch,
            ", after an unclean end of the previous runner" if fence.after_unclean_end else "",
            extra={"pid": self.identity.pid, "handlers": list(specs), "epoch": fence.epoch},
        )
        try:
            self._supervise_until_stopped(supervisor, store)
        except Exception:
            # Nothing may kill the control thread while it holds the lock: step down instead.
            logger.exception("the runner's control loop failed; stepping down")
        finally:
            self._step_down(supervisor, store)
        return True

    def _new_term(self, store: StatusStore) -> Fence:
        """Take a new epoch, then claim the rows: from here on a deposed runner commits nothing.

        The epoch waits (up to ``STOP_TIMEOUT``) for a deposed runner's batch in flight to end.
        """
        epoch = take_epoch(self.identity.hostname, self.identity.pid, lock_timeout=self.config["STOP_TIMEOUT"])
        store.fence = Fence(epoch, after_unclean_end=store.claim())
        return store.fence

    def _supervise_until_stopped(self, supervisor: Supervisor, store: StatusStore) -> None:
        supervisor.supervise()
        self._heartbeat(supervisor, store)
        while not self._deposed and not self._stop_requested.wait(self.config["HEARTBEAT_INTERVAL"]):
            if not self.election.still_held():
                logger.error("the election lock was lost (%s); stepping down", self.election.describe())
                return
            self._handover = self._memory_exceeded()
            if self._handover:
                logger.warning("%s; stepping down", self._handover, extra={"pid": self.identity.pid})
                return
            supervisor.supervise()
            self._heartbeat(supervisor, store)
            self._handover = supervisor.stall(self._last_snapshots)
            if self._handover:
                # The status already says so (the heartbeat above); the stuck thread cannot be
                # killed, so the process must go: hand over and ask to be recycled.
                logger.error("%s; stepping down to be recycled", self._handover, extra={"pid": self.identity.pid})
                return

    def _memory_exceeded(self) -> str | None:
        """The handover reason when this process's RSS is above ``MAX_RSS_MB``, else None."""
        limit = self.config.get("MAX_RSS_MB")
        if not limit:
            return None
        rss = current_rss_mb()
        return f"handed over: RSS {rss:.0f} MB above MAX_RSS_MB {limit:g}" if rss > limit else None

    def _heartbeat(self, supervisor: Supervisor, store: StatusStore) -> None:
        snapshots = self._last_snapshots = supervisor.snapshots()
        self._depth_monitor.observe(snapshots)
        try:
            store.heartbeat(snapshots)
        except Deposed as exc:
            logger.error("another runner has taken the role (%s); stepping down", exc, extra={"pid": self.identity.pid})
            self._deposed = True
        except Exception as exc:  # noqa: BLE001 - a failed heartbeat is retried at the next one, never fatal
            # The handlers report their own database trouble; the counters stay pending here
            # and are flushed by the first heartbeat that gets through. Logged once per outage.
            if not self._heartbeat_failing:
                logger.warning("status heartbeat failed: %s", describe_error(exc))
            self._heartbeat_failing = True
            if isinstance(exc, db.Error):
                connections["default"].close()
        else:
            if self._heartbeat_failing:
                logger.info("status heartbeat recovered")
            self._heartbeat_failing = False

    def _step_down(self, supervisor: Supervisor, store: StatusStore) -> None:
        stopped = supervisor.stop(self.config["STOP_TIMEOUT"])
        self.wedged = not stopped
        # A Python thread cannot be killed. Releasing the lock beside a handler still running
        # here could let a second runner start, so a wedged runner keeps the lock until this
        # process exits, and says so in the status rows and the log.
        problem = None if stopped else self._wedged_problem()
        try:
            if not self._deposed:  # the rows are the successor's now
                store.release(supervisor.snapshots(), problem=problem, handover=self._handover)
        except Exception as exc:  # noqa: BLE001 - the lock must be handled below whatever happened here
            logger.warning("could not mark the handlers stopped: %s", describe_error(exc))
        finally:
            connections.close_all()  # a standby holds no database connection
        self.leading.clear()
        self.supervisor = None
        if stopped:
            self.election.release()
            logger.info("this process is no longer the katello_events runner", extra={"pid": self.identity.pid})
        else:
            logger.critical(problem)
        if self._handover or (self.wedged and not self._stop_requested.is_set()):
            # Stepped down on its own (memory, a stall, a lost lock with a stuck handler):
            # this process is of no more use as a candidate and should be replaced.
            self._retire(self._handover or problem or "")

    def _wedged_problem(self) -> str:
        reason = f"{self._handover}; " if self._handover else ""
        return f"{reason}handlers did not stop; {HELD_UNTIL_EXIT}"

    def _retire(self, reason: str) -> None:
        """After a handover: never compete again here, and ask for a recycle if configured."""
        self.retired = reason
        if not (self.config.get("RECYCLE_ON_HANDOVER", True) and self.on_handover):
            logger.warning(
                "this process no longer competes for the runner role (%s); recycle it",
                reason,
                extra={"pid": self.identity.pid},
            )
            return
        try:
            self.on_handover(reason)
        except Exception:
            logger.exception("could not ask the server to recycle this process")
