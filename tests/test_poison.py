"""Poison events under real servers: handlers that take their process down, never return, or raise.

Each scenario queues a poison event ahead of ordinary ones and lets real servers work through
the queue: gunicorn with three workers (its master replaces a worker that dies), or
``run_event_daemon`` processes kept up the way a process supervisor keeps them (one that exits is
replaced). Everything is counted from outside the code under test:

- handler calls: the poison handlers (tests/eventsapp/events.py) append "<object_id> <pid>" to a
  tries log *before* they misbehave, so calls made by processes that then died still count;
- handled events: ``chaos.record`` writes one Handling row per run in the batch's transaction,
  so a uid without a row was lost and a uid with two rows was handled twice;
- deaths: the processes of the tries log that are gone.

The PostgreSQL scenario terminates the runner's fence session while it handles a slow batch, and
checks from commit times (recorded by a trigger at COMMIT) that two runners never commit at once.

Settings are the issue's: STALL_TIMEOUT 5 s, MAX_ATTEMPTS 3, RETRY_BACKOFF 1 s (environment knobs
read by tests/settings.py). Each scenario's counts go to artifacts/chaos.json and the terminal
summary (tests/chaos_results.py).
"""

from __future__ import annotations

import http.client
import json
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import Max, Min
from django.test import Client

import katello_events
from katello_events.models import Event, HandlerStatus, RunnerFence
from katello_events.status.report import collect_status
from tests.candlepin_support import new_destination
from tests.chaos_results import record
from tests.cluster_support import admin_connection
from tests.eventsapp.models import Handling
from tests.support import (
    DaemonFleet,
    alive,
    children,
    free_port,
    gunicorn_args,
    lock_holders,
    manage_args,
    wait_for,
)
from tests.test_chaos import all_handled, push_events, tally
from tests.test_cluster_election import the_runner

pytestmark = [pytest.mark.process, pytest.mark.django_db(transaction=True)]

MAX_ATTEMPTS = 3
STALL_TIMEOUT = 5
SETTINGS = {
    "KATELLO_EVENTS_STALL_TIMEOUT": str(STALL_TIMEOUT),
    "KATELLO_EVENTS_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    "KATELLO_EVENTS_RETRY_BACKOFF": "1",
}
#: What the last error of an event says when its runner died in a careful try.
DIED = "the runner died while handling it"
WORKERS = 3


# -- the servers -----------------------------------------------------------------------------------


class Gunicorn:
    """gunicorn with three workers; a master that halts fails the test at the next look."""

    def __init__(self, start_server, **env: str) -> None:
        self.port = free_port()
        self.server = start_server(gunicorn_args(self.port, WORKERS), CANDLEPIN_QUEUE=new_destination(), **env)

    def keep_up(self) -> bool:
        assert self.server.process.poll() is None, f"gunicorn halted:\n{self.server.log()[-4000:]}"
        return True

    def log(self) -> str:
        return self.server.log()

    def assert_still_serving(self) -> None:
        """The master is up, gunicorn has its three workers again, and nothing halted it."""
        wait_for(lambda: self.keep_up() and len(children(self.server.pid)) == WORKERS, 60, "three workers again")
        assert "Shutting down: Master" not in self.log()
        assert "Worker failed to boot" not in self.log()


class Daemons(DaemonFleet):
    """Two daemons on a Candlepin destination of their own."""

    def __init__(self, start_server, count: int = 2, **env: str) -> None:
        super().__init__(start_server, count, **{"CANDLEPIN_QUEUE": new_destination(), **env})

    def assert_still_serving(self) -> None:
        self.keep_up()


def start_servers(kind: str, start_server, **env: str) -> Gunicorn | Daemons:
    return Gunicorn(start_server, **env) if kind == "gunicorn" else Daemons(start_server, **env)


# -- the queue and what became of it -----------------------------------------------------------


def push_poison(event_type: str, object_id: str, tries_log: Path, **metadata) -> None:
    """Pushed before the ordinary events: the lowest id, so it is in the first batch taken."""
    katello_events.push_event(event_type, object_id, {"tries_log": str(tries_log), **metadata})


def ordinary(prefix: str, count: int) -> list[str]:
    uids = [f"{prefix}{n}" for n in range(count)]
    push_events(uids)
    return uids


def calls(tries_log: Path, object_id: str) -> list[int]:
    """The pid of each call of the poison handler for ``object_id``, in order."""
    lines = tries_log.read_text().splitlines() if tries_log.exists() else []
    return [int(pid) for label, pid in (line.rsplit(" ", 1) for line in lines) if label == object_id]


def dead(object_id: str) -> Event | None:
    return Event.objects.filter(object_id=object_id, state=Event.DEAD).first()


def only_dead_left() -> bool:
    return not Event.objects.exclude(state=Event.DEAD).exists()


def queue_service() -> dict:
    """The event queue's entry of the full status document: what ``manage.py ping --json`` prints."""
    return collect_status()["services"]["katello_events"]


def dead_reported(count: int) -> dict | None:
    entry = queue_service()
    return entry if (entry.get("details") or {}).get("dead") == count else None


def assert_kept_dead_after_deaths(event: Event, tries: list[int]) -> None:
    assert event.state == Event.DEAD
    assert event.attempts == MAX_ATTEMPTS, event.attempts
    assert f"{DIED} (attempt {MAX_ATTEMPTS} of {MAX_ATTEMPTS})" in event.last_error, event.last_error
    assert event.attempt_started_at is None
    assert 1 <= len(tries) <= MAX_ATTEMPTS, f"the poison handler was called {len(tries)} times"


# -- 1. handlers that take their process down --------------------------------------------------------


def run_killer(scenario: str, kind: str, start_server, tmp_path: Path, event_type: str, count: int):
    """A poison that kills its process, ahead of ``count`` ordinary events: recorded, checked.

    Returns the servers and the counts, for the checks particular to each way of dying.
    """
    tries_log = tmp_path / "tries.log"
    push_poison(event_type, "poison", tries_log)
    uids = ordinary("k", count)
    started = time.monotonic()
    servers = start_servers(kind, start_server, **SETTINGS)

    def settled() -> bool:
        return servers.keep_up() and dead("poison") is not None and all_handled(uids)

    wait_for(settled, 150, "the poison is dead and every ordinary event handled", interval=0.1)
    seconds = time.monotonic() - started
    wait_for(only_dead_left, 30, "nothing but the poison left")
    reported = wait_for(lambda: dead_reported(1), 30, "the status reports the dead event")
    servers.assert_still_serving()
    event, tries = dead("poison"), calls(tries_log, "poison")
    counts = tally(uids)
    result = {
        "server": kind,
        "attempts": event.attempts,
        "tries": len(tries),
        "deaths": sum(not alive(pid) for pid in set(tries)),
        "deaths_reported": reported["counters"].get("deaths", 0),
        "handled": counts["handled"],
        "lost": counts["lost"],
        "duplicates": counts["duplicates"],
        "seconds": round(seconds, 1),
    }
    record(scenario, **result)

    assert_kept_dead_after_deaths(event, tries)
    assert (counts["lost"], counts["duplicates"]) == (0, 0), counts
    assert len(set(tries)) == len(tries) == result["deaths"], f"each call took its own process down: {tries}"
    # A death in a normal batch cannot be blamed on one event when it happens (it is charged
    # later, with the first careful try's): the status counts every death after it.
    assert result["deaths_reported"] == result["deaths"] - 1, result
    return servers, result


@pytest.mark.timeout(200)
@pytest.mark.parametrize("kind", ["gunicorn", "daemon"])
def test_a_sigkill_poison_ahead_of_300_events_is_dead_after_at_most_max_attempts(start_server, tmp_path, kind):
    servers, result = run_killer(f"poison_sigkill_{kind}", kind, start_server, tmp_path, "test.sigkill", 300)
    if isinstance(servers, Gunicorn):
        assert servers.log().count("was sent SIGKILL") == result["deaths"]
    else:
        assert sorted(servers.exits.values()) == [-9] * result["deaths"], servers.exits


@pytest.mark.timeout(200)
def test_os_exit_3_from_a_handler_does_not_halt_gunicorn(start_server, tmp_path):
    servers, result = run_killer("poison_os_exit_3_gunicorn", "gunicorn", start_server, tmp_path, "test.os_exit", 100)
    log = servers.log()
    # Status 3 is gunicorn's "worker failed to boot": the arbiter would halt every worker.
    assert log.count("exited with code 70") == result["deaths"], log[-4000:]
    assert "exited with code 3" not in log


# -- 2. a handler that never returns --------------------------------------------------------------


def staff_cookie() -> str:
    """A signed-in staff user's session: a reader allowed to see details (DETAILS_VISIBLE_TO)."""
    user = get_user_model().objects.create_user("operator", password="x", is_staff=True)
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def get_ping(port: int, cookie: str | None = None) -> tuple[int, dict | None]:
    """Status and JSON document of GET /api/ping (0, None when the connection fails).

    A short timeout: a worker on its way out must not hold the watch past a stall's window.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    headers = {"Connection": "close"}
    if cookie:
        headers["Cookie"] = f"{settings.SESSION_COOKIE_NAME}={cookie}"
    try:
        conn.request("GET", "/api/ping", headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    except (OSError, ValueError):
        return 0, None
    finally:
        conn.close()


class StallWatch:
    """Reads the status surfaces while the stalls play out and keeps what they said about them.

    Detailed: the status document read in-process (what ``manage.py ping --json`` prints) and,
    under gunicorn, /api/ping for a signed-in staff user. Public: /api/ping for anyone.
    """

    def __init__(self, port: int | None, cookie: str | None) -> None:
        self.port = port
        self.cookie = cookie
        self.detailed: dict[int, str] = {}  # runner pid -> first stalled message seen
        self.staff: list[str] = []  # stalled messages /api/ping showed a staff reader
        self.public: list[tuple[int, str]] = []  # (HTTP status, body) of anonymous stalled pings

    def sample(self) -> bool:
        entry = queue_service()
        if entry["status"] == "FAIL" and entry["message"].startswith("stalled"):
            self.detailed.setdefault(entry["runner"]["pid"], entry["message"])
        if self.port:
            self._sample_http()
        return True

    def _sample_http(self) -> None:
        status, document = get_ping(self.port, self.cookie)
        entry = (document or {}).get("services", {}).get("katello_events", {})
        if entry.get("message", "").startswith("stalled"):
            self.staff.append(entry["message"])
        status, document = get_ping(self.port)
        entry = (document or {}).get("services", {}).get("katello_events", {})
        if entry.get("message", "").startswith("stalled"):
            self.public.append((status, json.dumps(document)))


@pytest.mark.timeout(200)
@pytest.mark.parametrize("kind", ["gunicorn", "daemon"])
def test_a_handler_that_never_returns_is_reported_stalled_recycled_and_kept_dead(start_server, tmp_path, kind):
    tries_log = tmp_path / "tries.log"
    push_poison("test.block", "poison-block", tries_log)
    uids = ordinary("s", 100)
    started = time.monotonic()
    servers = start_servers(kind, start_server, **SETTINGS)
    port = servers.port if isinstance(servers, Gunicorn) else None
    watch = StallWatch(port, staff_cookie() if port else None)

    def settled() -> bool:
        return servers.keep_up() and watch.sample() and dead("poison-block") is not None and all_handled(uids)

    wait_for(settled, 170, "the blocking poison is dead and every ordinary event handled", interval=0.25)
    seconds = time.monotonic() - started
    wait_for(only_dead_left, 30, "nothing but the poison left")
    servers.assert_still_serving()
    event, tries = dead("poison-block"), calls(tries_log, "poison-block")
    counts = tally(uids)
    log = servers.log()
    result = {
        "server": kind,
        "attempts": event.attempts,
        "tries": len(tries),
        "stalls_reported": len(watch.detailed),
        "deaths": sum(not alive(pid) for pid in set(tries)),
        "handled": counts["handled"],
        "lost": counts["lost"],
        "duplicates": counts["duplicates"],
        "seconds": round(seconds, 1),
    }
    record(f"poison_stall_{kind}", **result)

    assert_kept_dead_after_deaths(event, tries)
    assert (counts["lost"], counts["duplicates"]) == (0, 0), counts
    # Every runner that got stuck said so, naming the event, for at least one reading.
    assert set(watch.detailed) == set(tries), f"stalls seen for {watch.detailed}, tries by {tries}"
    for message in watch.detailed.values():
        assert message.startswith("stalled: no progress for "), message
        assert "while handling event test.block:poison-block since " in message, message
        assert message.endswith(f"(STALL_TIMEOUT {STALL_TIMEOUT}s)"), message
    # Each stuck process was replaced: recycled gracefully by gunicorn, or exited non-zero.
    assert result["deaths"] == len(tries), f"stuck processes still alive: {tries}"
    if isinstance(servers, Gunicorn):
        assert watch.staff
        assert all("test.block:poison-block" in message for message in watch.staff)
        assert watch.public, "an anonymous /api/ping never showed the stall"
        assert all(status == 503 and "test.block" not in body for status, body in watch.public)
        assert all(json.loads(body)["services"]["katello_events"]["message"] == "stalled" for _, body in watch.public)
        for pid in tries:
            assert f"Worker exiting (pid: {pid})" in log, f"worker {pid} was not recycled gracefully"
        assert log.count("recycling this worker (stalled: handler katello_events made no progress") == len(tries)
        assert "WORKER TIMEOUT" not in log
    else:
        assert {pid: servers.exits.get(pid) for pid in tries} == dict.fromkeys(tries, 1), servers.exits
        assert log.count("handlers did not stop in time") == len(tries)


# -- 3. PostgreSQL election: the fence session terminated while a slow batch runs ------------------------

#: Commit times of handled events. A deferred constraint trigger fires at COMMIT, and its rows
#: roll back with the batch, so only committed handling is recorded (Handling.handled_at is the
#: handler's own clock, taken before the commit).
COMMIT_CLOCK = """
CREATE TABLE poison_commit_clock (uid text, pid integer, committed_at timestamptz);
CREATE FUNCTION poison_commit_clock() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO poison_commit_clock VALUES (NEW.uid, NEW.pid, clock_timestamp());
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER poison_commit_clock AFTER INSERT ON eventsapp_handling
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION poison_commit_clock();
"""
NO_COMMIT_CLOCK = """
DROP TRIGGER IF EXISTS poison_commit_clock ON eventsapp_handling;
DROP FUNCTION IF EXISTS poison_commit_clock();
DROP TABLE IF EXISTS poison_commit_clock;
"""


@pytest.fixture
def commit_clock(database_name):
    """Request it before ``start_server``, so it is removed only after the servers stopped."""
    with connection.cursor() as cursor:
        cursor.execute(COMMIT_CLOCK)
    yield
    with connection.cursor() as cursor:
        cursor.execute(NO_COMMIT_CLOCK)


def commit_intervals() -> dict[int, tuple]:
    """pid -> (first, last) commit time of its handled events."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid, min(committed_at), max(committed_at) FROM poison_commit_clock GROUP BY pid")
        return {pid: (first, last) for pid, first, last in cursor.fetchall()}


def handling_intervals(uids: list[str]) -> dict[int, tuple]:
    """pid -> (first, last) Handling.handled_at of its committed runs (the handler's clock)."""
    rows = Handling.objects.filter(uid__in=uids).values("pid").annotate(first=Min("handled_at"), last=Max("handled_at"))
    return {row["pid"]: (row["first"], row["last"]) for row in rows}


def assert_apart(intervals: dict[int, tuple], what: str) -> None:
    """The (first, last) intervals of different pids do not overlap."""
    ordered = sorted(intervals.items(), key=lambda item: item[1][0])
    for (pid, (_, last)), (next_pid, (next_first, _)) in pairwise(ordered):
        assert last < next_first, f"{what}: {pid} until {last}, {next_pid} from {next_first}"


def terminate_fence_sessions(admin) -> int:
    """End the runner's fence session, as the issue does (this test database's sessions only)."""
    with admin.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name LIKE 'katello_events fence %' AND datname = current_database()"
        )
        return sum(1 for (done,) in cursor.fetchall() if done)


def push_slow_batches(mark: Path) -> list[str]:
    """One slow batch (100 events of 30 ms: 3 s), then a quicker one for whoever leads after it.

    One transaction, so the first batch taken is the whole slow one; its first event touches
    ``mark`` when its handler runs (before the batch commits).
    """
    uids = [f"f{n}" for n in range(200)]
    with transaction.atomic():
        for n, uid in enumerate(uids):
            metadata = {"uid": uid, "sleep": 0.03 if n < 100 else 0.005, **({"mark": str(mark)} if n == 0 else {})}
            katello_events.push_event("test.record", uid, metadata)
    return uids


@pytest.mark.timeout(150)
def test_postgres_fence_session_terminated_mid_batch_two_runners_never_commit_at_once(
    commit_clock, start_server, database_name, tmp_path
):
    # One consumer thread: the scenario is one slow batch in flight when the fence session ends
    # (with several, every batch could be in flight at once and the successor find none left).
    env = {**SETTINGS, "KATELLO_EVENTS_LOCK_BACKEND": "postgres", "KATELLO_EVENTS_CONCURRENCY": "1"}
    daemons = [start_server(manage_args("run_event_daemon"), CANDLEPIN_QUEUE=new_destination(), **env) for _ in "ab"]
    pids = {daemon.pid for daemon in daemons}
    admin = admin_connection(database_name)
    try:
        old = the_runner(admin, database_name, pids)
        wait_for(lambda: all("waiting for PostgreSQL advisory lock" in d.log() for d in daemons), 60, "both up")
        mark = tmp_path / "slow-batch-started"
        uids = push_slow_batches(mark)
        started = time.monotonic()
        wait_for(mark.exists, 60, "the slow batch is being handled")
        assert terminate_fence_sessions(admin) == 1
        old_daemon = next(d for d in daemons if d.pid == old)
        wait_for(lambda: "election lock was lost" in old_daemon.log(), 15, "the old runner noticed")
        new = the_runner(admin, database_name, pids - {old})
        wait_for(lambda: all_handled(uids) and not Event.objects.exists(), 60, "every event handled")
        seconds = time.monotonic() - started
    finally:
        admin.close()

    counts = tally(uids)
    intervals = commit_intervals()
    fence = RunnerFence.objects.get()
    waited = (intervals[old][1] - fence.taken_at).total_seconds() if old in intervals else None
    handled_by = Counter(Handling.objects.filter(uid__in=uids).values_list("pid", flat=True))
    record(
        "poison_postgres_fence_terminated",
        runners=len(intervals),
        epoch=fence.epoch,
        handled_by={str(pid): handled_by[pid] for pid in sorted(handled_by)},
        successor_waited_for_batch_s=round(waited, 3) if waited is not None else None,
        handled=counts["handled"],
        lost=counts["lost"],
        duplicates=counts["duplicates"],
        seconds=round(seconds, 1),
    )
    assert (counts["lost"], counts["duplicates"]) == (0, 0), counts
    assert set(intervals) == {old, new}, f"both runners committed handled events: {intervals}"
    assert_apart(intervals, "commits")
    assert_apart(handling_intervals(uids), "handler runs")
    assert fence.pid == new
    assert fence.epoch >= 2
    assert all(alive(pid) for pid in pids), "nobody had to die"


# -- 4. BaseException from a handler -------------------------------------------------------------

BASE_EXCEPTIONS = ("SystemExit", "KeyboardInterrupt", "GeneratorExit")


@pytest.mark.timeout(120)
def test_system_exit_and_other_base_exceptions_from_a_handler_are_ordinary_failures(start_server, lock_file, tmp_path):
    tries_log = tmp_path / "tries.log"
    for kind in BASE_EXCEPTIONS:
        push_poison("test.base_exception", kind, tries_log, **{"raise": kind})
    uids = ordinary("b", 100)
    started = time.monotonic()
    servers = Gunicorn(start_server, **SETTINGS)
    workers = wait_for(lambda: len(kids := children(servers.server.pid)) == WORKERS and kids, 60, "workers")
    runner = wait_for(lambda: len(held := lock_holders(lock_file)) == 1 and next(iter(held)), 60, "a runner")

    def settled() -> bool:
        return servers.keep_up() and all(dead(kind) for kind in BASE_EXCEPTIONS) and all_handled(uids)

    wait_for(settled, 90, "every poison dead and every ordinary event handled", interval=0.1)
    seconds = time.monotonic() - started
    wait_for(only_dead_left, 30, "nothing but the poisons left")
    reported = wait_for(lambda: dead_reported(len(BASE_EXCEPTIONS)), 30, "the status reports the dead events")
    counts = tally(uids)
    tries = {kind: calls(tries_log, kind) for kind in BASE_EXCEPTIONS}
    events = {kind: dead(kind) for kind in BASE_EXCEPTIONS}
    record(
        "poison_base_exception_gunicorn",
        attempts={kind: event.attempts for kind, event in events.items()},
        tries={kind: len(pids) for kind, pids in tries.items()},
        deaths=sum(not alive(pid) for pids in tries.values() for pid in set(pids)),
        failed_reported=reported["failed_count"],
        handled=counts["handled"],
        lost=counts["lost"],
        duplicates=counts["duplicates"],
        seconds=round(seconds, 1),
    )

    assert (counts["lost"], counts["duplicates"]) == (0, 0), counts
    for kind, event in events.items():
        assert event.attempts == MAX_ATTEMPTS, (kind, event.attempts)
        assert kind in event.last_error, event.last_error
        assert DIED not in event.last_error, event.last_error
        assert set(tries[kind]) == {runner}, f"{kind}: every call in the one runner, which lived: {tries[kind]}"
    # Nothing died and nothing was restarted: the same runner, the same workers, no handler crash.
    assert lock_holders(lock_file) == {runner}
    assert children(servers.server.pid) == workers
    assert HandlerStatus.objects.get(name="katello_events").restarts == 0
    assert reported["failed_count"] == len(BASE_EXCEPTIONS) * MAX_ATTEMPTS
    # Dead after at most MAX_ATTEMPTS calls of its handler, like a poison that kills its process.
    called = {kind: len(pids) for kind, pids in tries.items()}
    assert all(count <= MAX_ATTEMPTS for count in called.values()), f"handler calls per event: {called}"
