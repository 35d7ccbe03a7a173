"""The PostgreSQL advisory-lock election and the memory watchdog, in this process."""

from __future__ import annotations

import gc
import os
import warnings

import pytest
from django.db import connection

from katello_events.election import FileLockElection, PostgresLockElection, make_election
from katello_events.election.postgres_lock import client_params, derive_key, server_keepalives
from katello_events.memory import current_rss_mb
from katello_events.models import HandlerStatus
from tests.cluster_support import admin_connection, holders, terminate
from tests.conftest import make_runner, start
from tests.support import lock_holders, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin():
    db = admin_connection(connection.settings_dict["NAME"])
    yield db
    db.close()


@pytest.fixture
def elections():
    made: list[PostgresLockElection] = []

    def make(key: int = 4242) -> PostgresLockElection:
        election = PostgresLockElection(connection.settings_dict, key, heartbeat_interval=0.1, stop_timeout=1.0)
        made.append(election)
        return election

    yield make
    for election in made:
        election.release()


def test_keys_are_stable_signed_64_bit_and_per_database():
    assert derive_key(None, "a") == derive_key(None, "a") != derive_key(None, "b")
    assert -(2**63) <= derive_key("site", "ignored") < 2**63
    assert derive_key("site", "a") == derive_key("site", "b")
    assert derive_key(7, "a") == 7


def test_one_holder_and_release_frees_it_at_once(elections, admin):
    first, second = elections(), elections()
    assert first.try_acquire()
    assert first.still_held()
    assert not second.try_acquire()
    assert set(holders(admin, 4242)) == {os.getpid()}
    first.release()
    assert not first.still_held()
    assert second.try_acquire()


def test_terminating_the_lock_session_fails_fencing_and_the_fence_waits_for_the_old_runner(elections, admin):
    old, new = elections(), elections()
    assert old.try_acquire()
    assert terminate(admin, holders(admin, 4242)[os.getpid()])
    assert not old.still_held()
    # The new candidate wins the election lock, but not the fence the old one still holds.
    assert not new.try_acquire()
    old.release()  # what the old runner does once its handlers have stopped
    assert new.try_acquire()
    assert new.still_held()


def test_a_forked_child_leaves_the_parents_lock_sessions_alone(elections):
    election = elections()
    assert election.try_acquire()
    with warnings.catch_warnings():  # Python >= 3.12 warns when other threads exist; none is used here
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: whatever it does with the election, the parent's sessions stay
        status = 1
        try:
            election.release()
            gc.collect()
            status = 0 if not election.still_held() else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert election.still_held(), "the child closed an inherited session"


def test_the_lock_connection_is_named_tuned_and_logs_no_password():
    params = client_params({"NAME": "db", "PASSWORD": "hunter2", "OPTIONS": {"application_name": "app"}})
    assert params["application_name"] == f"katello_events lock {os.getpid()}"
    assert params["keepalives_idle"] <= 5
    assert params["connect_timeout"] == 5
    election = PostgresLockElection({"NAME": "db", "HOST": "h", "PASSWORD": "hunter2"}, 1)
    assert "hunter2" not in election.describe()
    assert "h:5432/db" in election.describe()


def test_the_server_keeps_the_lock_longer_than_a_cut_off_runner_takes_to_fence_itself():
    tcp = server_keepalives(heartbeat_interval=2.0, stop_timeout=10.0)
    release_after = tcp["tcp_keepalives_idle"] + tcp["tcp_keepalives_interval"] * tcp["tcp_keepalives_count"]
    assert release_after >= 2.0 + 5 + 10.0
    assert tcp["tcp_user_timeout"] == release_after * 1000
    assert release_after <= 25, "a dead host frees the lock within seconds"


def test_make_election_picks_the_backend(tmp_path):
    config = {"LOCK_FILE": str(tmp_path / "x.lock"), "HEARTBEAT_INTERVAL": 1.0, "STOP_TIMEOUT": 1.0}
    assert isinstance(make_election(config), FileLockElection)
    pg = make_election({**config, "LOCK_BACKEND": "postgres", "LOCK_KEY": "k"})
    assert isinstance(pg, PostgresLockElection)
    assert pg.key == derive_key("k", "")
    with pytest.raises(ValueError, match="LOCK_BACKEND"):
        make_election({**config, "LOCK_BACKEND": "zookeeper"})


def test_a_runner_on_the_postgres_backend_leads_and_steps_down_when_its_session_is_killed(runners, lock_file, admin):
    runner = start(
        runners, make_runner(lock_file, {"count": ("CountingHandler", {})}, LOCK_BACKEND="postgres", LOCK_KEY=99)
    )
    assert lock_holders(lock_file) == set(), "no lock file is used"
    wait_for(lambda: HandlerStatus.objects.filter(name="count", running=True).exists(), 5, "rows claimed")
    terminate(admin, holders(admin, 99)[os.getpid()])
    wait_for(lambda: not runner.leading.is_set() or holders(admin, 99) == {}, 5, "stepped down")
    wait_for(lambda: runner.leading.is_set() and os.getpid() in holders(admin, 99), 10, "leads again")


def test_rss_is_read():
    assert 5 < current_rss_mb() < 100_000


def test_the_watchdog_hands_over_records_why_and_retires(runners, lock_file):
    reasons = []
    runner = make_runner(lock_file, {"count": ("CountingHandler", {})}, MAX_RSS_MB=1)
    runner.on_handover = reasons.append
    start(runners, runner)
    wait_for(runner.finished.is_set, 10, "the control loop ended after the handover")
    assert runner.retired
    assert runner.retired.startswith("handed over: RSS ")
    assert reasons == [runner.retired]
    assert lock_holders(lock_file) == set(), "the lock is released for a standby"
    row = HandlerStatus.objects.get(name="count")
    assert not row.running
    assert row.counters["handovers"] == 1
    assert row.problem.startswith("handed over: RSS")
    assert "above MAX_RSS_MB 1" in row.last_error


def test_without_recycling_the_runner_only_retires(runners, lock_file, caplog):
    reasons = []
    runner = make_runner(lock_file, {"count": ("CountingHandler", {})}, MAX_RSS_MB=1, RECYCLE_ON_HANDOVER=False)
    runner.on_handover = reasons.append
    start(runners, runner)
    wait_for(runner.finished.is_set, 10, "the control loop ended after the handover")
    assert reasons == []
    assert "no longer competes" in caplog.text
    first = HandlerStatus.objects.get(name="count").counters["handovers"]
    second = start(runners, make_runner(lock_file, {"count": ("CountingHandler", {})}, MAX_RSS_MB=1))
    wait_for(second.finished.is_set, 10, "second handover")
    assert HandlerStatus.objects.get(name="count").counters["handovers"] == first + 1, "cumulative"
