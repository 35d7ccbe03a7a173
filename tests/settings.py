"""Test settings: the example project's, on PostgreSQL, plus a probe handler when asked.

Environment: ``KATELLO_EVENTS_TEST_DATABASE_URL`` (default: PostgreSQL on 127.0.0.1 as postgres),
``KATELLO_EVENTS_PROBE_LOG`` (when set, a ``probe`` handler records its run intervals there).
Server processes started by the tests use this module too, with ``DATABASE_URL`` pointing at
the test database.
"""

import os

os.environ.setdefault(
    "DATABASE_URL",
    os.environ.get("KATELLO_EVENTS_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/katello_events"),
)

from example_project.settings import *  # noqa: E402,F403
from example_project.settings import KATELLO_EVENTS  # noqa: E402

INSTALLED_APPS = [*INSTALLED_APPS, "tests.eventsapp"]  # noqa: F405
# tests.eventsapp registers message handlers of its own for Candlepin's subjects; the example
# domain's are swapped in by the tests that drive it (tests/test_example_domain.py).
KATELLO_EXAMPLE_MESSAGE_HANDLERS = False

# A test database per test run, so runs side by side on one server do not collide.
DATABASES["default"]["TEST"] = {  # noqa: F405
    "NAME": os.environ.get("KATELLO_EVENTS_TEST_DB") or f"test_katello_events_{os.getpid()}",
}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast user creation

KATELLO_EVENTS = {
    **KATELLO_EVENTS,
    # Fast enough that process tests finish quickly; still within the checks' sane ranges.
    "HEARTBEAT_INTERVAL": float(os.environ.get("KATELLO_EVENTS_HEARTBEAT", "0.5")),
    "STALE_AFTER": 5.0,
    "STANDBY_INTERVAL": 0.1,
    "STOP_TIMEOUT": 5.0,
}
if os.environ.get("KATELLO_EVENTS_PROBE_LOG"):
    KATELLO_EVENTS["HANDLERS"] = {
        **KATELLO_EVENTS["HANDLERS"],
        "probe": {"BACKEND": "tests.probe.ProbeHandler", "OPTIONS": {"LOG": os.environ["KATELLO_EVENTS_PROBE_LOG"]}},
    }
# Multi-host and watchdog tests (tests/test_cluster_election.py) configure their servers here.
if os.environ.get("KATELLO_EVENTS_LOCK_BACKEND"):
    KATELLO_EVENTS["LOCK_BACKEND"] = os.environ["KATELLO_EVENTS_LOCK_BACKEND"]
if os.environ.get("KATELLO_EVENTS_MAX_RSS_MB"):
    KATELLO_EVENTS["MAX_RSS_MB"] = float(os.environ["KATELLO_EVENTS_MAX_RSS_MB"])
if os.environ.get("KATELLO_EVENTS_GROW_FLAG"):
    KATELLO_EVENTS["HANDLERS"] = {
        **KATELLO_EVENTS["HANDLERS"],
        "grow": {
            "BACKEND": "tests.probe.GrowingHandler",
            "OPTIONS": {"FLAG": os.environ["KATELLO_EVENTS_GROW_FLAG"], "MB": 300},
        },
    }
