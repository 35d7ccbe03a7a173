"""The handler contract: a long-lived service the runner keeps alive in a thread of its own."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from katello_events.conf import unknown_option_message
from katello_events.errors import describe_error
from katello_events.fencing import UNFENCED, Fence
from katello_events.redaction import redact
from katello_events.stats import HandlerStats, bind_thread

__all__ = ["Handler", "HandlerState", "HandlerStats", "describe_error", "unknown_options"]


@dataclass(frozen=True)
class HandlerState:
    """A handler's own view of itself, as returned by :meth:`Handler.status`."""

    #: The current unresolved problem ("database unreachable: ..."), or None when healthy.
    problem: str | None = None
    #: Monotonic time of the handler loop's last tick().
    last_tick: float = 0.0
    #: Free-form, JSON-serialisable details shown to operators.
    details: dict[str, Any] = field(default_factory=dict)


class Handler:
    """Base class of the services the runner runs (the ``HANDLERS`` setting names subclasses).

    Lifecycle, driven by the runner's supervisor; each step happens once per instance:

    1. ``__init__(name, options, stats)`` in the runner's control thread: validate options, no I/O.
    2. :meth:`run` in the handler's own daemon thread: work in small units (a batch, a message)
       until :attr:`stopping` is set. Wait only with :meth:`sleep`, which returns early on stop,
       and call :meth:`tick` at least once per loop so the supervisor sees the loop is alive.
       Returning ends the handler; raising is a crash: logged with its traceback, counted, and
       the slot is restarted with a fresh instance after a capped exponential backoff.
    3. :meth:`stop` from any thread, idempotent: asks :meth:`run` to return after the unit in hand.
    4. :meth:`status` from any thread, cheap: a snapshot for the status rows.

    A handler that loses a dependency (database, broker) keeps running, calls
    :meth:`report_problem` (the service then reads FAIL with that text) and retries with backoff;
    :meth:`clear_problem` once it has recovered. The thread's database connection is its own:
    close it on errors; the runner closes it when the thread ends.

    :attr:`fence` is the runner's term in the role (``katello_events.fencing``), set by the
    supervisor before :meth:`run` starts: a handler that commits work checks it inside the
    committing transaction (``self.fence.check(alias)``), so a deposed runner commits nothing.
    """

    #: Set by the supervisor before run(); handlers built outside a runner are not fenced.
    fence: Fence = UNFENCED

    def __init__(self, name: str, options: dict[str, Any], stats: HandlerStats) -> None:
        self.name = name
        self.options = options
        self.stats = stats
        self._stop_requested = threading.Event()
        self._problem: str | None = None
        self._last_tick = time.monotonic()

    @classmethod
    def option_names(cls) -> Collection[str] | None:
        """The ``OPTIONS`` keys this handler accepts, or None when it accepts any.

        The supervisor refuses any other key before building the handler, and the system checks
        report it, both with a "did you mean" suggestion (:func:`unknown_options`). The default
        reads the ``DEFAULT_OPTIONS`` dict of the module of the nearest class in the MRO that
        has one (where the built-in handlers keep their defaults); override it otherwise.
        """
        for klass in cls.__mro__:
            if klass is Handler:
                break
            defaults = getattr(sys.modules.get(klass.__module__), "DEFAULT_OPTIONS", None)
            if isinstance(defaults, Mapping):
                return tuple(defaults)
        return None

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> None:
        """The handler's loop; override. The default idles until stopped."""
        while not self.stopping:
            self.tick()
            self.sleep(1.0)

    def stop(self) -> None:
        """Ask :meth:`run` to return after the unit in hand. Safe from any thread, idempotent."""
        self._stop_requested.set()

    def status(self) -> HandlerState:
        return HandlerState(problem=self._problem, last_tick=self._last_tick, details=self.details())

    # -- helpers for subclasses --------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stop_requested.is_set()

    def sleep(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True when stop was requested meanwhile."""
        return self._stop_requested.wait(seconds)

    def tick(self) -> None:
        """Tell the supervisor the loop is alive (call once per loop iteration).

        Also binds the calling thread to this slot's counters (``stats.bind_thread``), so what the
        slot runs in it can add to them (a message handler's ``SkipMessage`` counts ``skipped``).
        """
        self._last_tick = time.monotonic()
        bind_thread(self.stats)

    def report_problem(self, problem: str | BaseException) -> None:
        """The service cannot do its work now; shown as FAIL with this (redacted) text."""
        self._problem = redact(describe_error(problem))

    def clear_problem(self) -> None:
        self._problem = None

    def details(self) -> dict[str, Any]:
        """Extra JSON-serialisable facts for operators; override to add some."""
        return {}


def unknown_options(name: str, handler_class: type[Handler], options: Mapping[str, Any]) -> list[str]:
    """One message per key of ``options`` that handler slot ``name`` does not know, each with a
    "did you mean" suggestion (empty when all are known, or the handler accepts any key)."""
    known = handler_class.option_names()
    if known is None or not isinstance(options, Mapping):
        return []
    return [unknown_option_message(name, str(key), known) for key in options if key not in known]
