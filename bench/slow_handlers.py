"""Slow handlers: what handler threads, batch handlers and the Candlepin inbox buy (docs/performance.md).

Imported by bench/run_all.py, which prints the rows; ``run_all.py --only io,cpu,batch,inbox,web-io``
runs just these. Every measurement runs a real in-process runner on the bench database against
handlers of known cost (bench/benchapp/events.py), events pushed first and the runner started
after, and is a ratio against a baseline taken in the same run:

- ``io``: a 20 ms I/O-bound handler (``time.sleep``) at ``CONCURRENCY`` 1, 4, 16, 32: events/s
  from the first handler call's start to the last one's end, against the ideal (threads x 50/s);
- ``cpu``: a 1 ms pure-Python handler, ``CONCURRENCY`` 16 against 1 (medians of 3 alternating runs);
- ``batch``: 10,000 applicability events, a batch handler (``batch_size=500``) costing 50 ms per
  call + 0.1 ms per host, against the per-event handler of the same model (50.1 ms a call),
  whose time for 10,000 is extrapolated from a sample;
- ``inbox``: a burst of compliance.created messages for 100 hosts, 20 ms handler: messages acked
  per second and handler runs made, with ``OPTIONS["INBOX"]`` and without (sampled, extrapolated).

The web row under an I/O-bound load at ``CONCURRENCY`` 16 is run_all.py's web-overhead bench
with :func:`fill` of ``bench.io`` and ``BENCH_CONCURRENCY=16`` (bench/settings.py).

A feature missing from this tree (no ``CONCURRENCY`` option, no ``batch_size``, no ``INBOX``) is
detected and its rows say so instead of failing.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

BROKER_URL = os.environ.get("CANDLEPIN_BROKER_URL", "stomp://guest:guest@127.0.0.1:61613")
INBOX_DESTINATION = "/queue/katello_events.bench-inbox"
LOCK_DIR = tempfile.mkdtemp(prefix="katello-bench-locks-")
QUEUE_BACKEND = "katello_events.handlers.event_queue.EventQueueHandler"
LISTENER_BACKEND = "katello_events.handlers.candlepin.CandlepinHandler"

IO_CONCURRENCY = (1, 4, 16, 32)
IO_RATE_PER_THREAD = 50  # a 20 ms handler
CPU_CONCURRENCY = 16


# -- features of this tree --------------------------------------------------------------------


def has_concurrency() -> bool:
    from katello_events.handlers import event_queue

    return "CONCURRENCY" in event_queue.DEFAULT_OPTIONS


def has_batch_handlers() -> bool:
    from bench.benchapp import events

    return events.BATCH_HANDLERS


def has_inbox() -> bool:
    from katello_events.candlepin import options

    return "INBOX" in options.DEFAULT_OPTIONS


# -- helpers ------------------------------------------------------------------------------------


def raw_connection():
    from django.conf import settings

    from katello_events import pgdriver

    database = settings.DATABASES["default"]
    return pgdriver.connect(host=database["HOST"], user=database["USER"], dbname=database["NAME"])


def fill(event_type: str, count: int, tag: str = "") -> None:
    """``count`` pending events of ``event_type``, each its own object (nothing coalesces)."""
    with raw_connection() as connection, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO katello_events_event (event_type, object_id, metadata, state, run_after, attempts, "
            "last_error, created_at, updated_at) SELECT %s, %s || g::text, NULL, 'pending', now(), 0, '', now(), "
            "now() FROM generate_series(1, %s) g",
            [event_type, f"{tag or uuid.uuid4().hex[:6]}-", count],
        )
        cursor.execute("ANALYZE katello_events_event")


def events_left() -> tuple[int, int]:
    """(pending, dead) events in the queue."""
    with raw_connection() as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state <> 'pending') "
            "FROM katello_events_event"
        )
        pending, dead = cursor.fetchone()
        return pending, dead


def clear_queue() -> None:
    with raw_connection() as connection, connection.cursor() as cursor:
        cursor.execute("DELETE FROM katello_events_event")


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout}s: {what}")
        time.sleep(interval)
    return result


def start_runner(handlers: dict[str, dict[str, Any]]):
    """An in-process runner (its own lock file) with ``handlers`` (slot -> {BACKEND, OPTIONS})."""
    from katello_events.conf import get_config
    from katello_events.runner import Runner

    config = {
        **get_config(),
        "LOCK_FILE": os.path.join(LOCK_DIR, f"runner-{uuid.uuid4().hex[:8]}.lock"),
        "HEARTBEAT_INTERVAL": 1.0,
        "HANDLERS": handlers,
    }
    runner = Runner(config)
    runner.start()
    return runner


def queue_handlers(**options: Any) -> dict[str, dict[str, Any]]:
    return {"katello_events": {"BACKEND": QUEUE_BACKEND, "OPTIONS": options}}


def calls_handled() -> int:
    from bench.benchapp.events import CALLS

    return sum(call[2] for call in list(CALLS))


@dataclasses.dataclass(frozen=True)
class Drain:
    """How a runner drained a queue of events pushed before it started."""

    #: Events per second, from the first handler call's start to the last one's end.
    rate: float
    #: Events per second between the 10th and the 90th percentile of handler-call ends: the
    #: steady middle of the drain, without the start-up and the tail of the busiest thread.
    middle_rate: float
    calls: int
    #: Handler threads seen, and the events of the busiest over the mean (1.0: even partitions).
    threads: int
    imbalance: float
    #: CPU seconds this process spent per event while the runner drained (all its threads):
    #: unlike the rates, barely moved by other processes on the machine.
    cpu_per_event: float


def drain(event_type: str, count: int, timeout: float, **options: Any) -> Drain:
    """Push ``count`` events, start a runner with ``options``, wait until all are handled."""
    from bench.benchapp.events import CALLS

    clear_queue()
    fill(event_type, count)
    CALLS.clear()
    cpu_before = _cpu_seconds()
    runner = start_runner(queue_handlers(**options))
    try:
        wait_until(lambda: calls_handled() >= count, timeout, f"{count} {event_type} events handled", 0.02)
        cpu = _cpu_seconds() - cpu_before
    finally:
        runner.stop(30)
    calls = sorted(CALLS, key=lambda call: call[1])
    handled = sum(call[2] for call in calls)
    pending, dead = events_left()
    assert handled == count, (handled, count)
    assert (pending, dead) == (0, 0), (pending, dead)
    first, last = min(call[0] for call in calls), calls[-1][1]
    low, high = len(calls) // 10, len(calls) * 9 // 10
    middle = sum(call[2] for call in calls[low + 1 : high + 1]) / (calls[high][1] - calls[low][1])
    per_thread: dict[int, int] = {}
    for call in calls:
        per_thread[call[3]] = per_thread.get(call[3], 0) + call[2]
    imbalance = max(per_thread.values()) / (handled / len(per_thread))
    return Drain(count / (last - first), middle, len(calls), len(per_thread), imbalance, cpu / count)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- 1. I/O-bound ---------------------------------------------------------------------------------


def bench_io(seconds: float) -> dict[int, Drain | None]:
    """The 20 ms handler's drain per CONCURRENCY (None: not measurable in this tree).

    Each run holds about ``seconds`` of work at the ideal rate, so a run lasts that long when the
    threads are fully used."""
    concurrent = has_concurrency()
    drains: dict[int, Drain | None] = {}
    for threads in IO_CONCURRENCY:
        if threads > 1 and not concurrent:
            drains[threads] = None
            continue
        count = max(200, int(seconds * IO_RATE_PER_THREAD * threads))
        options = {"CONCURRENCY": threads} if concurrent else {}
        drains[threads] = result = drain("bench.io", count, timeout=60 + 5 * seconds, **options)
        print(
            f"  I/O-bound, CONCURRENCY {threads}: {result.rate:,.0f} events/s ({count} events; middle 80% "
            f"{result.middle_rate:,.0f}/s; {result.threads} threads, busiest {result.imbalance:.2f}x the mean)",
            flush=True,
        )
    return drains


# -- 2. CPU-bound ---------------------------------------------------------------------------------


def calibrate_cpu(target: float = 0.001) -> float:
    """Set the CPU handler's loop count so one call takes ``target`` seconds of CPU here; returns
    the CPU time of a call. Timed with this thread's CPU clock: on a busy machine the wall clock
    would count the time other processes took."""
    from bench.benchapp.events import CPU_LOOPS, spin

    loops = 20000
    for _ in range(3):
        samples = []
        for _ in range(20):
            started = time.thread_time()
            spin(loops)
            samples.append(time.thread_time() - started)
        loops = max(1, int(loops * target / statistics.median(samples)))
    CPU_LOOPS["n"] = loops
    started = time.thread_time()
    for _ in range(50):
        spin(loops)
    return (time.thread_time() - started) / 50


def bench_cpu(count: int, rounds: int = 3) -> tuple[Drain, Drain | None, float]:
    """(the median run at CONCURRENCY 1, at CPU_CONCURRENCY or None, the calibrated call in seconds).

    ``rounds`` runs of each, alternating which goes first: on a shared machine a single pair of
    runs is at the mercy of whatever else runs meanwhile. The CPU time per event says what the
    threads cost whatever the rest of the machine does."""
    call = calibrate_cpu()
    if not has_concurrency():
        one = drain("bench.cpu", count, timeout=120)
        print(f"  CPU-bound ({call * 1000:.2f} ms a call): {one.rate:,.0f} events/s", flush=True)
        return one, None, call
    runs: dict[int, list[Drain]] = {1: [], CPU_CONCURRENCY: []}
    for round_number in range(rounds):
        order = [1, CPU_CONCURRENCY] if round_number % 2 == 0 else [CPU_CONCURRENCY, 1]
        for threads in order:
            runs[threads].append(drain("bench.cpu", count, timeout=120, CONCURRENCY=threads))
        print(
            f"  CPU-bound ({call * 1000:.2f} ms a call), round {round_number + 1}: "
            + ", ".join(
                f"CONCURRENCY {threads} {runs[threads][-1].rate:,.0f} events/s "
                f"({runs[threads][-1].cpu_per_event * 1000:.2f} ms CPU/event)"
                for threads in (1, CPU_CONCURRENCY)
            ),
            flush=True,
        )

    def median(threads: int) -> Drain:
        """The median rate and, taken separately, the median CPU time per event."""
        rate = statistics.median(run.rate for run in runs[threads])
        cpu = statistics.median(run.cpu_per_event for run in runs[threads])
        return dataclasses.replace(runs[threads][0], rate=rate, cpu_per_event=cpu)

    return median(1), median(CPU_CONCURRENCY), call


# -- 3. batch handler -------------------------------------------------------------------------------


def bench_batch(count: int, sample: int) -> dict[str, float | int | None]:
    """Seconds for ``count`` applicability events: batch handler (None without the feature) and
    the per-event handler, the latter measured on ``sample`` events and extrapolated."""
    one_thread = {"CONCURRENCY": 1} if has_concurrency() else {}  # both contenders on one thread
    per_event_rate = drain("bench.applicability", sample, timeout=60 + sample * 0.2, **one_thread).rate
    result: dict[str, float | int | None] = {
        "per_event_seconds": count / per_event_rate,
        "per_event_rate": per_event_rate,
        "batch_seconds": None,
        "batch_calls": None,
    }
    print(f"  per-event handler: {per_event_rate:,.1f} events/s ({sample} events)", flush=True)
    if has_batch_handlers():
        batch = drain("bench.applicability_batch", count, timeout=600, **one_thread)
        batch_rate, calls = batch.rate, batch.calls
        result.update(batch_seconds=count / batch_rate, batch_calls=calls)
        print(f"  batch handler: {batch_rate:,.0f} events/s, {calls} calls ({count} events)", flush=True)
    return result


# -- 4. the Candlepin inbox -----------------------------------------------------------------------------


def publish_compliance(destination: str, count: int, hosts: int) -> None:
    """``count`` compliance.created messages (the simulator's shape), round-robin over ``hosts``."""
    from katello.candlepin_simulator import Publisher, compliance_created

    uuids = [str(uuid.UUID(int=n + 1)) for n in range(hosts)]
    publisher = Publisher(BROKER_URL, destination)
    try:
        for n in range(count):
            publisher.send(compliance_created(uuids[n % hosts], "invalid", ["Not supported by a valid subscription."]))
    finally:
        publisher.close()  # a receipt: every message is in the queue when this returns


def purge_queue(destination: str) -> int:
    """Take (auto-ack) whatever waits in ``destination``; the number of messages."""
    from bench.candlepin import purge
    from katello_events.candlepin.options import parse_options

    return purge(parse_options({"BROKER_URL": BROKER_URL}), destination)


class AckClock:
    """Times the listener's first burst and every ack it makes (wraps ``BrokerConnection``'s
    ``next_burst`` and ``ack`` while in use)."""

    def __init__(self) -> None:
        self.first_burst: float | None = None
        self.times: list[float] = []

    def __enter__(self) -> AckClock:
        from katello_events.candlepin.connection import BrokerConnection

        self._originals = ack, next_burst = BrokerConnection.ack, BrokerConnection.next_burst
        clock = self

        def timed_ack(connection, frame) -> None:
            ack(connection, frame)
            clock.times.append(time.perf_counter())

        def timed_next_burst(connection, *args, **kwargs):
            frames = next_burst(connection, *args, **kwargs)
            if frames and clock.first_burst is None:
                clock.first_burst = time.perf_counter()
            return frames

        BrokerConnection.ack, BrokerConnection.next_burst = timed_ack, timed_next_burst
        return self

    def __exit__(self, *exc: object) -> None:
        from katello_events.candlepin.connection import BrokerConnection

        BrokerConnection.ack, BrokerConnection.next_burst = self._originals

    def rate(self) -> float:
        """Messages acked per second, from the first burst taken to the last ack."""
        if not self.times or self.first_burst is None:
            return 0.0
        return len(self.times) / (self.times[-1] - self.first_burst)


def listen(count: int, inbox: bool, sample: int, timeout: float) -> dict[str, float | int]:
    """Run a runner (listener + event queue) on a burst of ``count`` waiting messages.

    Without the inbox the listener runs the handler itself: it is stopped after ``sample`` acks
    and the rest is purged. With it, waits for every ack and then for the queue to drain."""
    from bench.benchapp.events import CALLS, compliance, compliance_host
    from katello_events import registry

    previous = registry.message_handlers.reset({"compliance.created": compliance})
    coalescing = getattr(registry, "message_coalescing", None)  # coalesce_by=, with the inbox
    previous_keys = coalescing.reset({"compliance.created": compliance_host}) if coalescing else {}
    CALLS.clear()
    listener_options: dict[str, Any] = {"BROKER_URL": BROKER_URL, "DESTINATION": INBOX_DESTINATION}
    if has_inbox():
        listener_options["INBOX"] = inbox
    handlers = {
        **queue_handlers(),
        "candlepin_events": {"BACKEND": LISTENER_BACKEND, "OPTIONS": listener_options},
    }
    target = count if inbox else min(sample, count)
    result: dict[str, float | int] = {}
    try:
        with AckClock() as clock:
            runner = start_runner(handlers)
            try:
                wait_until(lambda: len(clock.times) >= target, timeout, f"{target} messages acked")
                acked_at = time.perf_counter()
                result["ack_rate"] = clock.rate()
                result["acked"] = len(clock.times)
                if inbox:
                    wait_until(lambda: events_left()[0] == 0, timeout, "the inbox drained", 0.1)
                    last_run = max((call[1] for call in CALLS), default=acked_at)
                    result["drain_seconds"] = last_run - (clock.first_burst or acked_at)
                    result["after_acks_seconds"] = max(0.0, last_run - acked_at)
            finally:
                runner.stop(30)
        result["acked_in_all"] = len(clock.times)  # with the burst in hand when the runner stopped
        result["runs"] = len(CALLS)
        result["dead"] = events_left()[1]
    finally:
        registry.message_handlers.reset(previous)
        if coalescing:
            coalescing.reset(previous_keys)
    return result


def bench_inbox(count: int, hosts: int, sample: int) -> dict[str, dict[str, float | int] | None]:
    """Both runs: without the inbox (sampled) and with it (None without the feature)."""
    results: dict[str, dict[str, float | int] | None] = {"direct": None, "inbox": None}
    runs = [("direct", False), ("inbox", True)] if has_inbox() else [("direct", False)]
    for name, inbox in runs:
        purge_queue(INBOX_DESTINATION)
        clear_queue()
        publish_compliance(INBOX_DESTINATION, count, hosts)
        results[name] = outcome = listen(count, inbox, sample, timeout=300)
        left = purge_queue(INBOX_DESTINATION)
        clear_queue()
        print(
            f"  {name}: {outcome['ack_rate']:,.0f} msg/s acked ({outcome['acked']} acked, {left} purged), "
            f"{outcome['runs']} handler runs",
            flush=True,
        )
    return results
