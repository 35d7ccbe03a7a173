"""Django Tasks benchmark: our backend against django-tasks-db's DatabaseBackend, side by side.

    .venv/bin/pip install django-tasks-db      # the contender (bench only; not a dependency)
    .venv/bin/python bench/bench_tasks.py [--tasks 5000] [--latency-samples 50]

Both run the same no-op task on the same PostgreSQL, each with its own worker:

- katello_events.tasks.EventQueueBackend: a real in-process runner (the ``katello_events``
  slot, default options: 4 consumer threads, batches of 100), as a web worker would hold it.
- django-tasks-db: its ``manage.py db_worker`` process (one task per claim, polling every
  ``--interval`` seconds; 1 by default, and 0.1 reported too).

Throughput: the tasks are enqueued first, then the worker starts; tasks/s = tasks / (last
``finished_at`` - first ``started_at``), from the result rows (worker start-up excluded).
Latency: single enqueues to an idle worker, ``started_at - enqueued_at`` of each result.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "example_project")]
DATABASE = "katello_events_bench_tasks"
os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{DATABASE}"
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.tasks_settings"

from bench import database  # noqa: E402


def create_database() -> None:
    database.recreate(DATABASE)


def enqueue_many(task, count: int) -> list:
    from django.db import transaction

    results = []
    for start in range(0, count, 500):
        with transaction.atomic():
            results += [task.enqueue() for _ in range(min(500, count - start))]
    return results


def span(rows: list[tuple]) -> float:
    started = min(row[0] for row in rows)
    finished = max(row[1] for row in rows)
    return (finished - started).total_seconds()


def start_runner():
    from katello_events.conf import get_config
    from katello_events.runner import Runner

    config = {
        **get_config(),
        "LOCK_FILE": os.path.join(tempfile.mkdtemp(), "bench.lock"),
        "HEARTBEAT_INTERVAL": 1.0,
        "HANDLERS": {
            "katello_events": {"BACKEND": "katello_events.handlers.event_queue.EventQueueHandler", "OPTIONS": {}}
        },
    }
    runner = Runner(config)
    runner.start()
    if not runner.leading.wait(30):
        raise SystemExit("the runner never took the lead")
    return runner


def wait_finished(model, filters: dict, count: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while model.objects.filter(**filters).count() < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"{count} tasks did not finish in {timeout:g}s")
        time.sleep(0.05)


def latencies(task, count: int, finished) -> list[float]:
    samples = []
    for _ in range(count):
        result = task.enqueue()
        deadline = time.monotonic() + 30
        while True:
            result.refresh()
            if result.is_finished:
                break
            if time.monotonic() > deadline:
                raise SystemExit("a latency sample did not finish in 30 s")
            time.sleep(0.005)
        samples.append((result.started_at - result.enqueued_at).total_seconds() * 1000)
        time.sleep(random.uniform(0.05, 0.2))  # noqa: S311 - spacing, not security
    return samples


def measure(model, task, count: int, samples: int) -> dict:
    """Once ``count`` enqueued tasks have succeeded (result rows of ``model``): their rate, then
    the latency of ``samples`` single enqueues of ``task`` to the idle worker."""
    wait_finished(model, {"status": "SUCCESSFUL"}, count)
    rows = list(model.objects.values_list("started_at", "finished_at"))
    return {"tasks_per_s": count / span(rows), "latency_ms": latencies(task, samples, None)}


def bench_ours(count: int, samples: int) -> dict:
    from bench import task_functions
    from katello_events.models import TaskResultRecord

    enqueue_many(task_functions.noop, count)
    runner = start_runner()
    try:
        return measure(TaskResultRecord, task_functions.noop, count, samples)
    finally:
        runner.stop(30)


def bench_tasks_db(count: int, samples: int, interval: float) -> dict:
    from django_tasks_db.models import DBTaskResult

    from bench import task_functions

    DBTaskResult.objects.all().delete()
    enqueue_many(task_functions.noop_db, count)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "example_project")])}
    worker = subprocess.Popen(  # noqa: S603 - our own interpreter and manage.py
        [sys.executable, "manage.py", "db_worker", "--backend", "db", "--interval", str(interval),
         "--no-startup-delay", "--no-reload", "-v", "0"],
        cwd=ROOT / "example_project", env=env,
    )  # fmt: skip
    try:
        return measure(DBTaskResult, task_functions.noop_db, count, samples)
    finally:
        worker.terminate()
        worker.wait(30)


def describe(name: str, figures: dict) -> str:
    lat = sorted(figures["latency_ms"])
    p50 = statistics.median(lat)
    p95 = lat[min(len(lat) - 1, int(len(lat) * 0.95))]
    return f"{name:<44} {figures['tasks_per_s']:>9.0f} tasks/s   latency p50 {p50:7.1f} ms  p95 {p95:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--latency-samples", type=int, default=50)
    args = parser.parse_args()
    create_database()
    import django
    from django.conf import settings
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    lines = [describe("katello_events.tasks (in-process runner)", bench_ours(args.tasks, args.latency_samples))]
    if "db" in settings.TASKS:
        for interval in (1.0, 0.1):
            figures = bench_tasks_db(args.tasks, args.latency_samples, interval)
            lines.append(describe(f"django-tasks-db (db_worker --interval {interval:g})", figures))
    else:
        lines.append("django-tasks-db: not installed (pip install django-tasks-db), not measured")
    print(f"{args.tasks} no-op tasks, {args.latency_samples} latency samples")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
