"""The handler contract: a long-lived service the runner keeps alive in a thread of its own."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from katello_events.fencing import UNFENCED, Fence
from katello_events.redaction import redact

#: The category of a stalled slot's problem: what every reader of the status sees.
STALLED = "stalled"


class HandlerStats:
    """Counters and gauges of one handler slot, shared by every instance the supervisor starts.

    Counters only grow (processed, failed, and any a handler adds); gauges are the latest
    reading (queue_depth, ...). They live here rather than on the handler so a restarted handler
    keeps counting, and the status store turns them into cumulative database totals.
    Thread-safe: handlers write from their thread, the runner reads from its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {"processed": 0, "failed": 0}
        self._gauges: dict[str, Any] = {}

    def increment(self, counter: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[counter] = self._counters.get(counter, 0) + amount

    def set_gauge(self, gauge: str, value: Any) -> None:
        with self._lock:
            self._gauges[gauge] = value

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def gauges(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._gauges)


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
        """Tell the supervisor the loop is alive (call once per loop iteration)."""
        self._last_tick = time.monotonic()

    def report_problem(self, problem: str | BaseException) -> None:
        """The service cannot do its work now; shown as FAIL with this (redacted) text."""
        self._problem = redact(describe_error(problem))

    def clear_problem(self) -> None:
        self._problem = None

    def details(self) -> dict[str, Any]:
        """Extra JSON-serialisable facts for operators; override to add some."""
        return {}


def describe_error(error: str | BaseException) -> str:
    """One line for an error: ``"OperationalError: connection refused"``."""
    if isinstance(error, BaseException):
        text = str(error).strip().splitlines()
        return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    return error
