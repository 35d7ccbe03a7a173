"""Handlers of the slow-handler benchmarks, each with a fixed cost (discovered like any app's events.py).

Each call appends ``(started, ended, events, thread)`` (``time.perf_counter()``, the handler
thread's ident) to :data:`CALLS`, which the benchmark reads in its own process (in a server
process the list is just never read).

- ``bench.io``: I/O-bound, waits 20 ms (``time.sleep`` releases the GIL, as a socket read does);
- ``bench.cpu``: CPU-bound, :data:`CPU_LOOPS` iterations of pure Python (calibrated to 1 ms by
  the benchmark);
- ``bench.applicability``: the per-event cost model of applicability, 50 ms + 0.1 ms per host,
  one host per call;
- ``bench.applicability_batch``: the same model as a batch handler (``batch_size=500``), when
  this tree's ``event_handler`` takes ``batch_size``: 50 ms + 0.1 ms per host of the batch;
- :func:`compliance`: a 20 ms Candlepin message handler, coalescing by :func:`compliance_host`
  in the inbox; not registered here (the test settings' app has ``compliance.created``): the
  inbox bench swaps it in.
"""

from __future__ import annotations

import inspect
import threading
import time

from katello_events import event_handler

#: (started, ended, events handled by the call, thread ident), one entry per handler call, in this process.
CALLS: list[tuple[float, float, int, int]] = []
#: Guards nothing the GIL does not already, but keeps the count right on free-threaded builds.
_LOCK = threading.Lock()

IO_SECONDS = 0.02
CPU_LOOPS = {"n": 20000}  # set by the benchmark's calibration to about 1 ms
APPLICABILITY_CALL_SECONDS = 0.05
APPLICABILITY_HOST_SECONDS = 0.0001
BATCH_SIZE = 500

#: Whether this tree's event_handler registers batch handlers (``batch_size=``).
BATCH_HANDLERS = "batch_size" in inspect.signature(event_handler).parameters


def _record(started: float, events: int = 1) -> None:
    ended = time.perf_counter()
    with _LOCK:
        CALLS.append((started, ended, events, threading.get_ident()))


def spin(loops: int) -> int:
    total = 0
    for n in range(loops):
        total += n * n % 7
    return total


@event_handler("bench.io")
def io_bound(event) -> None:
    started = time.perf_counter()
    time.sleep(IO_SECONDS)
    _record(started)


@event_handler("bench.cpu")
def cpu_bound(event) -> None:
    started = time.perf_counter()
    spin(CPU_LOOPS["n"])
    _record(started)


@event_handler("bench.applicability")
def applicability(event) -> None:
    started = time.perf_counter()
    time.sleep(APPLICABILITY_CALL_SECONDS + APPLICABILITY_HOST_SECONDS)
    _record(started)


def applicability_batch(events) -> None:
    started = time.perf_counter()
    time.sleep(APPLICABILITY_CALL_SECONDS + APPLICABILITY_HOST_SECONDS * len(events))
    _record(started, len(events))


if BATCH_HANDLERS:
    event_handler("bench.applicability_batch", batch_size=BATCH_SIZE)(applicability_batch)


def compliance_host(message) -> object:
    """What compliance.created messages coalesce by in the inbox: the host (the example's key)."""
    return message.body.get("consumerUuid")


def compliance(message) -> None:
    """A 20 ms handler of ``compliance.created`` (swapped into the registry by the inbox bench)."""
    started = time.perf_counter()
    time.sleep(IO_SECONDS)
    _record(started)
