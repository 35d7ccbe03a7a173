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

from example_project.settings import *  # noqa: F403
from example_project.settings import KATELLO_EVENTS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.eventsapp"]  # noqa: F405
# tests.eventsapp registers message handlers of its own for Candlepin's subjects; the example
# domain's are swapped in by the tests that drive it (tests/test_example_domain.py).
KATELLO_EXAMPLE_MESSAGE_HANDLERS = False

# A test database per test run, so runs side by side on one server do not collide.
DATABASES["default"]["TEST"] = {  # noqa: F405
    "NAME": os.environ.get("KATELLO_EVENTS_TEST_DB") or f"test_katello_events_{os.getpid()}",
}

# A second alias on the same test database, for the test of a router that moves the event queue
# (tests/test_careful_tries.py); only tests that ask for it may use it.
DATABASES["queue"] = {**DATABASES["default"], "TEST": {"MIRROR": "default"}}  # noqa: F405

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast user creation

KATELLO_EVENTS = {
    **KATELLO_EVENTS,
    # Fast enough that process tests finish quickly; still within the checks' sane ranges.
    "HEARTBEAT_INTERVAL": float(os.environ.get("KATELLO_EVENTS_HEARTBEAT", "0.5")),
    "STALE_AFTER": 5.0,
    "STANDBY_INTERVAL": 0.1,
    "STOP_TIMEOUT": 5.0,
}
# Poison tests (tests/test_poison.py) shorten the stall timeout and the retry policy.
if os.environ.get("KATELLO_EVENTS_STALL_TIMEOUT"):
    KATELLO_EVENTS["STALL_TIMEOUT"] = float(os.environ["KATELLO_EVENTS_STALL_TIMEOUT"])
if os.environ.get("KATELLO_EVENTS_MAX_ATTEMPTS"):
    KATELLO_EVENTS["HANDLERS"] = {
        **KATELLO_EVENTS["HANDLERS"],
        "katello_events": {
            **KATELLO_EVENTS["HANDLERS"]["katello_events"],
            "OPTIONS": {
                **KATELLO_EVENTS["HANDLERS"]["katello_events"].get("OPTIONS", {}),
                "MAX_ATTEMPTS": int(os.environ["KATELLO_EVENTS_MAX_ATTEMPTS"]),
                "RETRY_BACKOFF": float(os.environ.get("KATELLO_EVENTS_RETRY_BACKOFF", "1")),
            },
        },
    }
if os.environ.get("KATELLO_EVENTS_PROBE_LOG"):
    KATELLO_EVENTS["HANDLERS"] = {
        **KATELLO_EVENTS["HANDLERS"],
        "probe": {"BACKEND": "tests.probe.ProbeHandler", "OPTIONS": {"LOG": os.environ["KATELLO_EVENTS_PROBE_LOG"]}},
    }
# Process tests of the Candlepin listener's direct path pin its INBOX ("false"; docs/candlepin.md).
if os.environ.get("KATELLO_EVENTS_CANDLEPIN_INBOX"):
    _listener = KATELLO_EVENTS["HANDLERS"]["candlepin_events"]
    KATELLO_EVENTS["HANDLERS"] = {
        **KATELLO_EVENTS["HANDLERS"],
        "candlepin_events": {
            **_listener,
            "OPTIONS": {**_listener["OPTIONS"], "INBOX": os.environ["KATELLO_EVENTS_CANDLEPIN_INBOX"] == "true"},
        },
    }
# Scenarios written around one consumer thread (a single slow batch in flight) pin CONCURRENCY.
if os.environ.get("KATELLO_EVENTS_CONCURRENCY"):
    KATELLO_EVENTS["HANDLERS"] = {
        **KATELLO_EVENTS["HANDLERS"],
        "katello_events": {
            **KATELLO_EVENTS["HANDLERS"]["katello_events"],
            "OPTIONS": {
                **KATELLO_EVENTS["HANDLERS"]["katello_events"].get("OPTIONS", {}),
                "CONCURRENCY": int(os.environ["KATELLO_EVENTS_CONCURRENCY"]),
            },
        },
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
