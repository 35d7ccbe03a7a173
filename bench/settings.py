"""Settings of the benchmarks: the test settings plus ``bench.benchapp`` (the slow handlers).

``BENCH_CONCURRENCY`` (environment), when set, becomes the event queue's ``CONCURRENCY`` option:
the servers of the web bench under I/O-bound load (bench/slow_handlers.py) set it.
"""

import os

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS, KATELLO_EVENTS

INSTALLED_APPS = [*INSTALLED_APPS, "bench.benchapp"]

if os.environ.get("BENCH_CONCURRENCY"):
    _queue = KATELLO_EVENTS["HANDLERS"]["katello_events"]
    KATELLO_EVENTS = {
        **KATELLO_EVENTS,
        "HANDLERS": {
            **KATELLO_EVENTS["HANDLERS"],
            "katello_events": {
                **_queue,
                "OPTIONS": {**(_queue.get("OPTIONS") or {}), "CONCURRENCY": int(os.environ["BENCH_CONCURRENCY"])},
            },
        },
    }
