"""Chaos: break things on purpose while events and messages flow, and count what became of each.

Every event and message carries a unique id; the ``chaos.record`` handlers (tests/eventsapp)
write one Handling row per run, so loss (an id with no row) and duplication (an id with several)
are counted exactly, never estimated. Each scenario's counts go to artifacts/chaos.json and to the
terminal summary (tests/chaos_results.py, conftest.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter

import pytest
from django.db import connection, connections, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import katello_events
from katello_events.candlepin.connection import ACK_BATCH
from katello_events.candlepin.options import DEFAULT_OPTIONS as LISTENER_DEFAULTS
from katello_events.models import Event
from tests.candlepin_support import (
    BROKER_URL,
    DIRECT,
    can_control_broker,
    messages_in_queue,
    new_destination,
    port_open,
    rabbitmqctl,
    run_listener,
    send,
    snapshot,
    subject_message,
)
from tests.chaos_results import record
from tests.eventsapp.models import Handling
from tests.support import children, free_port, gunicorn_args, http_get, lock_holders, manage_args, wait_for

# serial: the broker and PostgreSQL are restarted, and the runner killed while both are loaded.
pytestmark = [pytest.mark.process, pytest.mark.serial, pytest.mark.django_db(transaction=True)]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to restart services")


# -- sending and counting ----------------------------------------------------------------------


def push_events(uids: list[str], **metadata) -> None:
    """One transaction, one distinct pair per uid (nothing coalesces)."""
    with transaction.atomic():
        for uid in uids:
            katello_events.push_event("chaos.record", uid, {"uid": uid, **metadata})


def chaos_messages(uids: list[str]) -> list[tuple[dict[str, str], bytes]]:
    return [subject_message("chaos.record", id=uid) for uid in uids]


def tally(sent: list[str]) -> dict[str, int]:
    """sent/handled/lost/duplicates of ``sent`` (uids), from the Handling rows."""
    runs = Counter(Handling.objects.filter(uid__in=sent).values_list("uid", flat=True))
    return {
        "sent": len(sent),
        "handled": len(runs),
        "lost": len(set(sent) - set(runs)),
        "duplicates": sum(count - 1 for count in runs.values()),
    }


def all_handled(sent: list[str]) -> bool:
    return Handling.objects.filter(uid__in=sent).values("uid").distinct().count() == len(sent)


def nothing_left() -> bool:
    """No event pending, deferred or dead: the queue table is empty."""
    return not Event.objects.exists()


def single_holder(lock_file, among: set[int] | None = None, exclude: int | None = None) -> int | None:
    holders = lock_holders(lock_file)
    if len(holders) == 1 and (pid := next(iter(holders))) != exclude and (among is None or pid in among):
        return pid
    return None


# -- 1. the runner killed with SIGKILL, ten times --------------------------------------------------

KILLS = 10
EVENTS_PER_ROUND, MESSAGES_PER_ROUND = 1000, 500


@pytest.mark.timeout(240)
def test_sigkill_the_runner_ten_times_while_events_and_messages_flow(start_server, lock_file):
    destination = new_destination()
    env = {"CANDLEPIN_QUEUE": destination, "CANDLEPIN_BROKER_URL": BROKER_URL}
    daemons = {}

    def add_daemon() -> None:
        server = start_server(manage_args("run_event_daemon"), **env)
        daemons[server.pid] = server

    for _ in range(3):  # a runner and two standbys, so a standby is always ready at the next kill
        add_daemon()
    leader = wait_for(lambda: single_holder(lock_file, set(daemons)), 60, "one daemon leads")
    wait_for(lambda: "is the runner" in daemons[leader].log(), 60, "the runner started its handlers")

    events, messages, takeovers, next_handled = [], [], [], []
    for kill in range(KILLS):
        round_events = [f"e{kill}-{n}" for n in range(EVENTS_PER_ROUND)]
        round_messages = [f"m{kill}-{n}" for n in range(MESSAGES_PER_ROUND)]
        before = Handling.objects.count()
        push_events(round_events)
        send(destination, chaos_messages(round_messages))
        events += round_events
        messages += round_messages
        # Kill mid-stream: some of this round handled, most of it still pending or in flight.
        wait_for(lambda before=before: Handling.objects.count() >= before + 200, 60, "the runner is handling the round")
        standbys = {pid for pid, server in daemons.items() if pid != leader and "waiting for" in server.log()}
        assert standbys, "a standby is ready"
        os.kill(leader, signal.SIGKILL)
        killed_at = time.monotonic()
        new = wait_for(
            lambda old=leader: single_holder(lock_file, set(daemons), exclude=old), 20, "a standby takes over"
        )
        takeovers.append(time.monotonic() - killed_at)
        wait_for(lambda new=new: Handling.objects.filter(pid=new).exists(), 30, "the new runner handles something")
        next_handled.append(time.monotonic() - killed_at)
        daemons.pop(leader).process.wait(10)
        leader = new
        add_daemon()

    wait_for(lambda: all_handled(events) and all_handled(messages), 120, "every event and message handled")
    wait_for(nothing_left, 30, "nothing pending, deferred or dead")
    wait_for(lambda: messages_in_queue(destination) == 0, 30, "every message acked", interval=0.3)
    event_counts, message_counts = tally(events), tally(messages)
    record(
        "sigkill",
        kills=KILLS,
        events=event_counts,
        messages=message_counts,
        max_takeover_s=round(max(takeovers), 3),
        max_kill_to_next_handled_s=round(max(next_handled), 3),
    )
    assert event_counts["lost"] == 0
    assert message_counts["lost"] == 0
    # A batch's handlers and its delete commit together: a killed batch rolls back whole.
    assert event_counts["duplicates"] == 0
    # A message is handled again only if its ack had not left: at most one ack batch per kill.
    assert message_counts["duplicates"] <= KILLS * (ACK_BATCH + 1)
    assert max(takeovers) < 2.0


# -- 2. the broker restarted three times ------------------------------------------------------------

RESTARTS = 3


@needs_root
@pytest.mark.skipif(not can_control_broker(), reason="needs rabbitmqctl")
@pytest.mark.timeout(180)
def test_three_broker_restarts_mid_stream_lose_nothing_and_the_listener_reconnects_quickly(runners, lock_file):
    destination = new_destination()
    # The shipped reconnection backoff, not the suite's fast one: this is what a deployment gets.
    backoff = {key: LISTENER_DEFAULTS[key] for key in ("RECONNECT_BACKOFF", "RECONNECT_BACKOFF_MAX")}
    runner = run_listener(runners, lock_file, destination, **backoff)
    sent, reconnect_times = [], []
    for restart in range(RESTARTS):
        uids = [f"b{restart}-{n}" for n in range(1000)]
        before = Handling.objects.count()
        send(destination, chaos_messages(uids))
        sent += uids
        wait_for(lambda before=before: Handling.objects.count() >= before + 100, 30, "handling has begun")
        reconnects = snapshot(runner).counters.get("reconnects", 0)
        rabbitmqctl("stop_app")
        try:
            wait_for(lambda: (snapshot(runner).problem or "").startswith("broker unreachable"), 30, "reported")
        finally:
            rabbitmqctl("start_app")
            wait_for(port_open, 60, "the STOMP port is back", interval=0.05)
        port_back = time.monotonic()
        wait_for(lambda seen=reconnects: snapshot(runner).counters.get("reconnects", 0) > seen, 60, "reconnected")
        reconnect_times.append(time.monotonic() - port_back)

    wait_for(lambda: all_handled(sent), 60, "every message handled")
    wait_for(lambda: messages_in_queue(destination) == 0, 30, "every message acked", interval=0.3)
    counts = tally(sent)
    record(
        "broker_restart",
        restarts=RESTARTS,
        messages=counts,
        reconnect_after_port_back_s=[round(t, 2) for t in reconnect_times],
    )
    assert counts["lost"] == 0
    assert snapshot(runner).crashes == 0
    assert snapshot(runner).problem is None
    assert max(reconnect_times) < 5.0, f"reconnections took {reconnect_times}s after the port came back"


# -- 3. PostgreSQL restarted ------------------------------------------------------------------------


def pg_ctl(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    fast = ["-m", "fast"] if action != "start" else []
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action, *fast]
    subprocess.run(command, check=True, timeout=120)


@needs_root
@pytest.mark.skipif(not shutil.which("pg_ctlcluster"), reason="needs pg_ctlcluster")
@pytest.mark.timeout(180)
def test_a_postgresql_restart_is_reported_as_fail_and_survived_without_loss(runners, lock_file):
    destination = new_destination()
    events = [f"p-e{n}" for n in range(300)]
    messages = [f"p-m{n}" for n in range(300)]
    # Slow handlers (test.record / testing.record sleep after recording) keep both streams busy.
    with transaction.atomic():
        for uid in events:
            katello_events.push_event("test.record", uid, {"uid": uid, "sleep": 0.01})
    send(destination, [subject_message("testing.record", id=uid, sleep=0.01) for uid in messages])
    # The direct path: with the inbox the listener would have stored every message before the
    # outage, and have nothing left to find the database gone with.
    runner = run_listener(runners, lock_file, destination, event_queue={}, **DIRECT)
    wait_for(lambda: Handling.objects.count() >= 40, 60, "both handlers are busy")
    connections.close_all()

    def problems() -> dict[str, str | None]:
        return {s.name: s.problem for s in runner.supervisor.snapshots()}

    def outage_reported() -> dict[str, str | None] | None:
        now = problems()
        return now if all("database unreachable" in (problem or "") for problem in now.values()) else None

    pg_ctl("stop")
    stopped_at = time.monotonic()
    try:
        seen = wait_for(outage_reported, 30, "both handlers report the outage")
        reported_after = time.monotonic() - stopped_at
    finally:
        pg_ctl("start")
    started_at = time.monotonic()
    connection.close()

    def recovered() -> bool:
        try:
            return not any(problems().values()) and all_handled(events) and all_handled(messages)
        except Exception:  # noqa: BLE001 - the database may still be starting: any error means "not yet"
            connection.close()
            return False

    wait_for(recovered, 120, "both handlers recover by themselves and drain")
    recovery = time.monotonic() - started_at
    wait_for(nothing_left, 30, "nothing pending or dead")
    event_counts, message_counts = tally(events), tally(messages)
    record(
        "postgresql_restart",
        events=event_counts,
        messages=message_counts,
        reported_fail_after_s=round(reported_after, 2),
        drained_after_restart_s=round(recovery, 2),
    )
    assert set(seen) == {"katello_events", "candlepin_events"}
    assert event_counts["lost"] == 0
    assert message_counts["lost"] == 0
    assert all(s.crashes == 0 for s in runner.supervisor.snapshots()), "recovered without a crash"
    assert runner.leading.is_set()


# -- 4. gunicorn's max_requests recycles the runner's worker ------------------------------------------


class LockSampler(threading.Thread):
    """Reads /proc/locks every few milliseconds: the most holders at once, the role's moves, the gaps."""

    def __init__(self, lock_file) -> None:
        super().__init__(daemon=True)
        self.lock_file = lock_file
        self.stopping = threading.Event()
        self.max_holders = 0
        self.holders_seen: list[int] = []
        self.longest_gap = 0.0

    def run(self) -> None:
        gap_since = None
        while not self.stopping.is_set():
            holders = lock_holders(self.lock_file)
            now = time.monotonic()
            self.max_holders = max(self.max_holders, len(holders))
            if holders:
                if gap_since is not None and self.holders_seen:
                    self.longest_gap = max(self.longest_gap, now - gap_since)
                gap_since = None
                for pid in holders:
                    if not self.holders_seen or self.holders_seen[-1] != pid:
                        self.holders_seen.append(pid)
            elif gap_since is None:
                gap_since = now
            time.sleep(0.003)


class SteadyLoad(threading.Thread):
    """GET /api/ping about every 40 ms, one request at a time; counts what it got."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stopping = threading.Event()
        self.statuses: Counter = Counter()

    def run(self) -> None:
        while not self.stopping.wait(0.04):
            self.statuses[http_get(self.port, "/api/ping")] += 1


MOVES = 3


@pytest.mark.timeout(180)
def test_max_requests_recycling_moves_the_role_without_loss_and_never_two_runners(start_server, lock_file):
    port = free_port()
    server = start_server(
        gunicorn_args(port, 2, "--max-requests", "40"), CANDLEPIN_QUEUE=new_destination(), GUNICORN_PRELOAD=""
    )
    wait_for(lambda: len(children(server.pid)) == 2, 60, "two workers booted")
    wait_for(lambda: single_holder(lock_file), 60, "a worker leads")
    sampler, load = LockSampler(lock_file), SteadyLoad(port)
    sampler.start()
    load.start()
    sent: list[str] = []
    try:
        chunk = 0
        deadline = time.monotonic() + 120
        while len(sampler.holders_seen) <= MOVES:
            assert time.monotonic() < deadline, f"the role moved only {len(sampler.holders_seen) - 1} times"
            uids = [f"r{chunk}-{n}" for n in range(300)]
            push_events(uids)
            sent += uids
            chunk += 1
            time.sleep(0.3)  # a steady producer, not a flood: the workers must keep serving
        wait_for(lambda: all_handled(sent), 60, "every event handled")
    finally:
        load.stopping.set()
        sampler.stopping.set()
        load.join(10)
        sampler.join(10)
    wait_for(nothing_left, 30, "nothing pending or dead")
    counts = tally(sent)
    runners_in_order = [pid for pid in Handling.objects.order_by("handled_at", "id").values_list("pid", flat=True)]
    segments = [pid for n, pid in enumerate(runners_in_order) if n == 0 or runners_in_order[n - 1] != pid]
    record(
        "max_requests_recycle",
        events=counts,
        role_moves=len(sampler.holders_seen) - 1,
        max_simultaneous_runners=sampler.max_holders,
        max_takeover_s=round(sampler.longest_gap, 3),
        http=dict(sorted(load.statuses.items())),
    )
    assert counts["lost"] == 0
    assert counts["duplicates"] == 0
    assert sampler.max_holders == 1, "two processes held the runner lock at once"
    # Handling rows by time: each runner's runs form one stretch, never interleaved with another's.
    assert len(segments) == len(set(segments)), f"runs of two runners interleaved: {segments}"


# -- 5. bad input ------------------------------------------------------------------------------------

OUTCOMES = ("processed", "ignored", "deferred", "retried_later", "dead", "dropped")

header_values = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
subjects = st.sampled_from(
    [("CHAOS", "RECORD"), ("TESTING", "FAIL"), ("POOL", "CREATED"), ("COMPLIANCE", "CREATED"), ("NO", "HANDLER")]
)


@st.composite
def candlepin_like(draw) -> bytes:
    """A body that looks like Candlepin's with fields replaced by anything (eventData too)."""
    body = {"id": draw(st.text(max_size=20)), "target": "POOL", "type": "CREATED", "eventData": "{}"}
    body.update(draw(st.dictionaries(st.sampled_from([*sorted(body), "entityId", "consumerUuid"]), json_values)))
    return draw(st.sampled_from([json_dumps(body), json_dumps(body).replace('"', "", 1)])).encode()


def json_dumps(value) -> str:
    import json

    return json.dumps(value)


bodies = st.one_of(
    candlepin_like(),  # twice: a body that parses reaches the handlers (processed, deferred)
    candlepin_like(),
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")),
    json_values.map(lambda value: json_dumps(value).encode()),
    candlepin_like(),
    st.integers(5000, 6000).map(lambda size: b'{"id": "big", "x": "' + b"x" * size + b'"}'),  # over MAX_BODY_BYTES
)


@st.composite
def stomp_frames(draw) -> tuple[dict[str, str], bytes]:
    headers = {f"x-fuzz-{n}": value for n, value in enumerate(draw(st.lists(header_values, max_size=3)))}
    target_type = draw(st.one_of(st.none(), subjects, st.tuples(header_values, header_values)))
    if target_type is not None:
        headers.update(EVENT_TARGET=target_type[0], EVENT_TYPE=target_type[1])
    return headers, draw(bodies)


def outcome_total(runner) -> int:
    counters = snapshot(runner).counters
    return sum(counters.get(name, 0) for name in OUTCOMES)


@pytest.mark.skipif(not port_open(), reason="needs the STOMP broker")
@pytest.mark.timeout(180)
def test_fuzzed_stomp_frames_get_an_outcome_each_and_the_listener_stays_up(runners, lock_file):
    destination = new_destination()
    fast_dead = {"MAX_ATTEMPTS": 2}
    runner = run_listener(runners, lock_file, destination, event_queue=fast_dead, MAX_BODY_BYTES=4096)
    totals = Counter()

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.lists(stomp_frames(), min_size=1, max_size=12))
    def run(frames: list[tuple[dict[str, str], bytes]]) -> None:
        before = outcome_total(runner)
        good = f"good-{time.monotonic_ns()}"
        send(destination, [*frames, *chaos_messages([good])])
        # A good message after the bad ones: the listener is still up and handling.
        wait_for(lambda: Handling.objects.filter(uid=good).exists(), 30, "the good message after the fuzz")
        wait_for(lambda: outcome_total(runner) == before + len(frames) + 1, 10, "one outcome per frame")
        totals["frames"] += len(frames)

    run()
    counters = snapshot(runner).counters
    wait_for(lambda: not Event.objects.filter(state=Event.PENDING).exists(), 30, "retries end (handled or dead)")
    dead = list(Event.objects.filter(state=Event.DEAD))
    record(
        "fuzz_stomp",
        frames=totals["frames"],
        **{name: counters.get(name, 0) for name in OUTCOMES},
        dead_records=len(dead),
        reconnects=counters.get("reconnects", 0),
        crashes=snapshot(runner).crashes,
    )
    assert counters.get("dropped", 0) == 0, "a message was dropped"
    assert all(event.last_error.strip() for event in dead), "every dead record says why"
    assert snapshot(runner).crashes == 0
    assert counters.get("reconnects", 0) == 0


class Opaque:
    """Not JSON, not an id."""


# About half of each argument's draws are plausible, so that many calls reach the database.
def half(plausible: st.SearchStrategy, other: st.SearchStrategy) -> st.SearchStrategy:
    return st.booleans().flatmap(lambda pick: plausible if pick else other)


event_types = half(st.just("chaos.record"), st.one_of(st.text(max_size=20), st.none(), st.integers()))
object_ids = half(
    st.one_of(st.integers(min_value=-(10**300), max_value=10**300), st.text(st.characters(codec=None), max_size=300)),
    st.one_of(st.none(), st.floats(), st.booleans(), st.binary(max_size=10)),
)
# Text with every code point, lone surrogates and NUL included: what a caller might pass through.
any_text = st.text(st.characters(codec=None), max_size=20)
metadata_values = st.one_of(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | any_text,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
        max_leaves=8,
    ),
    st.sets(st.integers(), max_size=2),
    st.binary(max_size=5),
    st.builds(Opaque),
)
delays = st.one_of(
    st.none(),
    st.floats(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.timedeltas(),
    st.text(max_size=5),
)


@pytest.mark.timeout(180)
def test_fuzzed_push_event_arguments_are_refused_clearly_or_handled(runners, lock_file):
    from katello_events import UnknownEventType

    outcomes = Counter()

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(event_types, object_ids, metadata_values, delays)
    def run(event_type, object_id, metadata, delay) -> None:
        rows = Event.objects.count()
        try:
            with transaction.atomic():
                katello_events.push_event(event_type, object_id, metadata, delay=delay)
        except (TypeError, ValueError, UnknownEventType) as exc:
            # PT017: only some generated pushes are refused, which pytest.raises() cannot express.
            assert str(exc), "the error says what is wrong"  # noqa: PT017
            assert Event.objects.count() == rows, "nothing written for a refused push"
            outcomes[type(exc).__name__] += 1
        else:
            outcomes["accepted"] += 1

    run()
    # The consumer starts after the fuzz (so the row counts above are its own): it takes every
    # accepted event, fuzzed metadata and all, and still handles a good one afterwards.
    runner = run_listener_less(runners, lock_file)
    good = f"good-{time.monotonic_ns()}"
    push_events([good])
    wait_for(lambda: Handling.objects.filter(uid=good).exists(), 30, "a good event after the fuzz is handled")
    queue = next(s for s in runner.supervisor.snapshots() if s.name == "katello_events")
    record("fuzz_push_event", **dict(sorted(outcomes.items())), consumer_crashes=queue.crashes)
    assert queue.crashes == 0
    assert queue.running


def run_listener_less(runners, lock_file):
    """A runner with only the event queue (fast retries)."""
    from tests.candlepin_support import FAST_QUEUE, QUEUE
    from tests.conftest import make_runner, start

    return start(runners, make_runner(lock_file, {"katello_events": (QUEUE, FAST_QUEUE)}))
