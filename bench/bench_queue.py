"""Event-queue benchmark: our consumer vs a Katello-style baseline vs the raw floor, one run.

    .venv/bin/python bench/bench_queue.py [--events 20000] [--latency-samples 300]

Every contender drains the same number of events (distinct pairs, so nothing coalesces) with a
no-op handler, on the same PostgreSQL, in one run; the figures that matter are the ratios.

- katello_events: a real in-process runner with the ``katello_events`` handler (claims batches
  with FOR UPDATE SKIP LOCKED, runs handlers and deletes in one transaction, gauges, heartbeats).
- Katello-style baseline: the one-event-at-a-time algorithm the design replaces, in plain SQL
  through the driver (psycopg 3 or psycopg2, whichever Django uses: ``katello_events.pgdriver``;
  oldest runnable row, newest of its pair, mark in progress, handle, delete).
- Raw floor: a plain driver loop deleting batches with
  ``DELETE ... WHERE id = ANY(ARRAY(SELECT ... FOR UPDATE SKIP LOCKED)) RETURNING`` (no handler
  dispatch, no transaction around handlers: the fastest a batch consumer can go here).

Then the enqueue-to-start latency: single pushes, each its own transaction, to an idle runner
woken by NOTIFY.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "example_project")]
DATABASE = "katello_events_bench"
os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{DATABASE}"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from bench import database  # noqa: E402
from katello_events import pgdriver  # noqa: E402

BATCH = 100


def create_database() -> None:
    database.recreate(DATABASE)


def raw_connection():
    """An autocommit connection; psycopg 3 closes it at the end of a ``with`` block, psycopg2 does not."""
    return pgdriver.connect(host="127.0.0.1", user="postgres", dbname=DATABASE)


def fill_events(count: int) -> None:
    with raw_connection() as connection, connection.cursor() as cursor:
        cursor.execute("TRUNCATE katello_events_event")
        cursor.execute(
            "INSERT INTO katello_events_event (event_type, object_id, metadata, state, run_after, attempts, "
            "last_error, created_at, updated_at) SELECT 'bench.noop', g::text, NULL, 'pending', now(), 0, '', "
            "now(), now() FROM generate_series(1, %s) g",
            [count],
        )
        cursor.execute("ANALYZE katello_events_event")


def bench_ours(count: int) -> float:
    from katello_events.conf import get_config
    from katello_events.handlers.event_queue import DEFAULT_OPTIONS
    from katello_events.registry import event_handlers
    from katello_events.runner import Runner

    calls = {"n": 0}
    done = threading.Event()
    lock = threading.Lock()

    def noop(event) -> None:
        with lock:  # handler threads (CONCURRENCY) must not lose a count
            calls["n"] += 1
            if calls["n"] >= count:
                done.set()

    event_handlers.register("bench.noop", noop)
    fill_events(count)
    config = {
        **get_config(),
        "LOCK_FILE": os.path.join(tempfile.mkdtemp(), "bench.lock"),
        "HEARTBEAT_INTERVAL": 1.0,
        "HANDLERS": {
            "katello_events": {
                "BACKEND": "katello_events.handlers.event_queue.EventQueueHandler",
                # One consumer thread, as the raw floor's one connection (and the runs before
                # CONCURRENCY); bench/slow_handlers.py measures handler threads.
                "OPTIONS": {"BATCH_SIZE": BATCH, **({"CONCURRENCY": 1} if "CONCURRENCY" in DEFAULT_OPTIONS else {})},
            }
        },
    }
    runner = Runner(config)
    started = time.perf_counter()
    runner.start()
    if not done.wait(600):
        raise SystemExit("our consumer did not finish in 10 minutes")
    elapsed = time.perf_counter() - started
    runner.stop(30)
    return count / elapsed


KATELLO_SCHEMA = """
DROP TABLE IF EXISTS katello_style_events;
CREATE TABLE katello_style_events (
    id bigserial PRIMARY KEY,
    object_id integer NOT NULL,
    event_type varchar(255) NOT NULL,
    in_progress boolean NOT NULL DEFAULT false,
    process_after timestamptz,
    metadata text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX katello_style_events_index ON katello_style_events (object_id, event_type, in_progress, created_at);
"""


def bench_katello_style(count: int) -> float:
    with raw_connection() as connection, connection.cursor() as cursor:
        cursor.execute(KATELLO_SCHEMA)
        cursor.execute(
            "INSERT INTO katello_style_events (object_id, event_type) "
            "SELECT g, 'bench.noop' FROM generate_series(1, %s) g",
            [count],
        )
        cursor.execute("ANALYZE katello_style_events")
        handled = 0
        started = time.perf_counter()
        while True:
            cursor.execute(
                "SELECT object_id, event_type FROM katello_style_events WHERE in_progress = false "
                "AND (process_after IS NULL OR process_after < now()) ORDER BY created_at ASC LIMIT 1"
            )
            oldest = cursor.fetchone()
            if oldest is None:
                break
            cursor.execute(
                "SELECT id, metadata, created_at FROM katello_style_events WHERE object_id = %s AND event_type = %s "
                "AND in_progress = false ORDER BY created_at DESC LIMIT 1",
                oldest,
            )
            newest = cursor.fetchone()
            cursor.execute(
                "UPDATE katello_style_events SET in_progress = true WHERE object_id = %s AND event_type = %s "
                "AND created_at <= %s",
                [*oldest, newest[2]],
            )
            handled += 1  # the no-op handler
            cursor.execute(
                "DELETE FROM katello_style_events WHERE object_id = %s AND event_type = %s AND in_progress = true "
                "AND created_at <= %s",
                [*oldest, newest[2]],
            )
        elapsed = time.perf_counter() - started
        cursor.execute("DROP TABLE katello_style_events")
    assert handled == count, (handled, count)
    return count / elapsed


def bench_raw_floor(count: int) -> float:
    fill_events(count)
    handled = 0
    with raw_connection() as connection, connection.cursor() as cursor:
        started = time.perf_counter()
        while True:
            cursor.execute(
                "DELETE FROM katello_events_event WHERE id = ANY(ARRAY(SELECT id FROM katello_events_event "
                "WHERE state = 'pending' AND run_after <= now() ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)) "
                "RETURNING id, event_type, object_id, metadata",
                [BATCH],
            )
            rows = cursor.fetchall()
            if not rows:
                break
            handled += len(rows)
        elapsed = time.perf_counter() - started
    assert handled == count, (handled, count)
    return count / elapsed


def bench_latency(samples: int) -> tuple[float, float]:
    import katello_events
    from katello_events.conf import get_config
    from katello_events.registry import event_handlers
    from katello_events.runner import Runner

    latencies: list[float] = []
    arrived = threading.Semaphore(0)

    def measure(event) -> None:
        latencies.append(time.perf_counter() - event.metadata["pushed"])
        arrived.release()

    event_handlers.register("bench.latency", measure)
    config = {
        **get_config(),
        "LOCK_FILE": os.path.join(tempfile.mkdtemp(), "bench.lock"),
        "HANDLERS": {
            "katello_events": {
                "BACKEND": "katello_events.handlers.event_queue.EventQueueHandler",
                "OPTIONS": {"POLL_INTERVAL": 30.0},  # any pick-up below that is NOTIFY's doing
            }
        },
    }
    runner = Runner(config)
    runner.start()
    runner.leading.wait(30)
    time.sleep(0.5)  # let the consumer reach its first wait (LISTEN issued)
    for n in range(samples):
        katello_events.push_event("bench.latency", n, {"pushed": time.perf_counter()})
        if not arrived.acquire(timeout=30):
            raise SystemExit("an event was not picked up within 30 s")
        time.sleep(0.005)  # an idle consumer each time: measure wake-up, not backlog
    runner.stop(30)
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--latency-samples", type=int, default=300)
    args = parser.parse_args()

    create_database()
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    with raw_connection() as connection, connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        server = cursor.fetchone()[0]

    print(
        f"draining {args.events} events (distinct pairs, no-op handler), PostgreSQL {server}, batch {BATCH}, "
        f"{pgdriver.describe()}"
    )
    baseline = bench_katello_style(args.events)
    print(f"  Katello-style baseline: {baseline:,.0f} events/s", flush=True)
    ours = bench_ours(args.events)
    print(f"  katello_events:         {ours:,.0f} events/s", flush=True)
    floor = bench_raw_floor(args.events)
    print(f"  raw floor:              {floor:,.0f} events/s", flush=True)
    p50, p99 = bench_latency(args.latency_samples)

    rows = [
        ("Katello-style one-at-a-time (plain SQL)", baseline),
        ("katello_events consumer", ours),
        (f"raw floor: {pgdriver.name()} DELETE ... RETURNING batches", floor),
    ]
    print()
    print(f"| {'contender':<50} | {'events/s':>10} | {'vs baseline':>11} | {'vs raw floor':>12} |")
    print(f"|{'-' * 52}|{'-' * 12}|{'-' * 13}|{'-' * 14}|")
    for name, rate in rows:
        print(f"| {name:<50} | {rate:>10,.0f} | {rate / baseline:>10.1f}x | {rate / floor:>12.2f} |")
    print()
    print(
        f"enqueue-to-start latency (NOTIFY, idle consumer, n={args.latency_samples}): "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )
    print()
    checks = [
        (">= 10x the Katello-style baseline", ours >= 10 * baseline),
        (">= 0.5 of the raw floor", ours >= 0.5 * floor),
        ("latency p50 < 10 ms", p50 < 10),
    ]
    for target, met in checks:
        print(f"target {target}: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
