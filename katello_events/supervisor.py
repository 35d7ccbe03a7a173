"""Keeps the runner's handlers alive: one daemon thread per handler slot, restarted on crash."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from django.db import connections
from django.utils.module_loading import import_string

from katello_events.errors import describe_error
from katello_events.fencing import UNFENCED, Fence
from katello_events.handlers.base import Handler, HandlerState, unknown_options
from katello_events.log import get_logger
from katello_events.redaction import redact
from katello_events.stats import HandlerStats
from katello_events.status.snapshot import STALLED, SlotSnapshot

logger = get_logger(__name__)

#: A handler that ran this long (seconds) without crashing earns a fresh backoff.
HEALTHY_RUN_RESETS_BACKOFF = 60.0


class HandlerSlot:
    """One configured handler: its current instance and thread, its crash history and backoff."""

    def __init__(self, name: str, backend: str, options: dict[str, Any], config: Mapping[str, Any]) -> None:
        self.name = name
        self.handler_class: type[Handler] = import_string(backend)
        self.options = options
        self.stats = HandlerStats()
        self.handler: Handler | None = None
        self.thread: threading.Thread | None = None
        self.crashes = 0
        self.last_error: str | None = None
        self.started_at = 0.0
        self.restart_at = 0.0  # monotonic time of the next allowed start
        self._backoff_initial = float(config["RESTART_BACKOFF"])
        self._backoff_max = float(config["RESTART_BACKOFF_MAX"])
        self._stall_timeout = float(config["STALL_TIMEOUT"])
        self._backoff = self._backoff_initial
        #: The runner's term, handed to every instance before it runs (see katello_events.fencing).
        self.fence: Fence = UNFENCED

    # -- thread management (runner's control thread only) ----------------------------------

    def start(self) -> None:
        """A fresh handler instance in a new thread; a constructor that raises counts as a crash."""
        self.started_at = time.monotonic()
        misspelt = unknown_options(self.name, self.handler_class, self.options)
        if misspelt:
            # Said before the handler's own constructor refuses it, with what was meant.
            self.last_error = redact("; ".join(misspelt))
            logger.error(
                "handler %s could not be created: %s", self.name, self.last_error, extra={"handler": self.name}
            )
            self._schedule_restart(time.monotonic())
            return
        try:
            self.handler = self.handler_class(self.name, self.options, self.stats)
        except Exception as exc:
            self.last_error = redact(describe_error(exc))
            logger.exception("handler %s could not be created", self.name, extra={"handler": self.name})
            self._schedule_restart(time.monotonic())
            return
        self.handler.fence = self.fence
        self.thread = threading.Thread(
            target=self._thread_main, args=(self.handler,), name=f"katello-events:{self.name}", daemon=True
        )
        self.thread.start()

    def is_alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def supervise(self, stopping: bool) -> None:
        """Start the slot when due, or schedule a restart when its thread has ended."""
        now = time.monotonic()
        if self.thread is not None and not self.thread.is_alive():
            self._on_thread_ended(now)
        if self.thread is None and not stopping and now >= self.restart_at:
            self.start()

    def _on_thread_ended(self, now: float) -> None:
        self.thread = None
        self.handler = None
        self._schedule_restart(now)

    def _schedule_restart(self, now: float) -> None:
        if now - self.started_at >= HEALTHY_RUN_RESETS_BACKOFF:
            self._backoff = self._backoff_initial
        self.crashes += 1
        self.restart_at = now + self._backoff
        logger.error(
            "handler %s stopped unexpectedly; restarting in %.1fs (crash #%d)",
            self.name,
            self._backoff,
            self.crashes,
            extra={"handler": self.name, "crashes": self.crashes, "restart_in": self._backoff},
        )
        self._backoff = min(self._backoff * 2, self._backoff_max)

    def request_stop(self) -> None:
        if self.handler is not None:
            self.handler.stop()

    def join(self, deadline: float) -> bool:
        """Wait for the thread until the monotonic ``deadline``; True when it has ended."""
        if self.thread is not None:
            self.thread.join(max(0.0, deadline - time.monotonic()))
        return not self.is_alive()

    # -- inside the handler's thread -------------------------------------------------------

    def _thread_main(self, handler: Handler) -> None:
        try:
            handler.run()
            if not handler.stopping:
                self.last_error = "run() returned without being asked to stop"
        except BaseException as exc:  # a crash of any kind is recorded, then restarted
            self.last_error = redact(describe_error(exc))
            logger.exception("handler %s crashed", self.name, extra={"handler": self.name})
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        finally:
            # Django connections are per thread and nothing else would ever close this one.
            connections.close_all()

    # -- status ------------------------------------------------------------------------------

    def snapshot(self, stopping: bool = False) -> SlotSnapshot:
        running = self.is_alive()
        state, problem = self._handler_state()
        if not running and not stopping:
            wait = max(0.0, self.restart_at - time.monotonic())
            problem = f"restarting in {wait:.0f}s after: {self.last_error or 'thread ended'}"
        elif running and state and time.monotonic() - state.last_tick > self._stall_timeout:
            # A Python thread cannot be killed; starting a second one would run the handler
            # twice. Say so loudly instead; the runner then hands over (see Runner).
            running = False
            problem = self._stall_problem(state)
        return SlotSnapshot(
            name=self.name,
            running=running,
            problem=problem,
            counters=self.stats.counters(),
            gauges=self.stats.gauges(),
            details=state.details if state else {},
            crashes=self.crashes,
            last_error=self.last_error,
        )

    def _stall_problem(self, state: HandlerState) -> str:
        age = time.monotonic() - state.last_tick
        what = describe_handling(state.details.get("handling"))
        during = f" while handling {what}" if what else ""
        return f"{STALLED}: no progress for {age:.1f}s{during} (STALL_TIMEOUT {self._stall_timeout:g}s)"

    def _handler_state(self) -> tuple[HandlerState | None, str | None]:
        handler = self.handler
        if handler is None:
            return None, None
        try:
            state = handler.status()
        except Exception as exc:  # noqa: BLE001 - a broken status() must not take the control thread down
            return None, redact(f"status() failed: {describe_error(exc)}")
        return state, state.problem


class Supervisor:
    """Runs every configured handler slot and restarts crashed ones with capped exponential backoff."""

    def __init__(self, specs: dict[str, dict[str, Any]], config: Mapping[str, Any]) -> None:
        self.slots = [HandlerSlot(name, s["BACKEND"], s["OPTIONS"], config) for name, s in specs.items()]
        self._stopping = False

    def use_fence(self, fence: Fence) -> None:
        """Hand the runner's term to every handler instance started from now on."""
        for slot in self.slots:
            slot.fence = fence

    def stall(self, snapshots: list[SlotSnapshot]) -> str | None:
        """The first stalled slot of ``snapshots``, as a reason to hand over; None if none is."""
        for snap in snapshots:
            if snap.problem and snap.problem.startswith(STALLED):
                return f"{STALLED}: handler {snap.name} made {snap.problem.removeprefix(STALLED + ': ')}"
        return None

    def supervise(self) -> None:
        for slot in self.slots:
            slot.supervise(self._stopping)

    def snapshots(self) -> list[SlotSnapshot]:
        return [slot.snapshot(self._stopping) for slot in self.slots]

    def stop(self, timeout: float) -> bool:
        """Ask every handler to stop and wait up to ``timeout`` seconds; True when all ended."""
        self._stopping = True
        for slot in self.slots:
            slot.request_stop()
        deadline = time.monotonic() + timeout
        stopped = all([slot.join(deadline) for slot in self.slots])
        if not stopped:
            alive = [slot.name for slot in self.slots if slot.is_alive()]
            logger.error("handlers %s did not stop within %.1fs", alive, timeout, extra={"handlers": alive})
        return stopped


def describe_handling(handling: Any) -> str | None:
    """What a handler says it is working on (its ``details()["handling"]``), in a few words."""
    if not isinstance(handling, dict):
        return None
    if handling.get("event_type"):
        return f"event {handling['event_type']}:{handling.get('object_id')} since {handling.get('since')}"
    if handling.get("subject"):
        return f"message {handling['subject']} ({handling.get('message_id')}) since {handling.get('since')}"
    return None
