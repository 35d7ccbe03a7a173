"""Poison events and fencing in the consumer itself, in this process against the real database.

The process-level scenarios (a handler that SIGKILLs its runner, one that never returns) are in
tests/test_poison.py; here each rule of docs/event-queue.md ("Poison events", "Fencing") is
checked on its own, with the rows it leaves.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connections
from django.test import override_settings
from django.utils import timezone

import katello_events
from katello_events.event_queue.batch import RetryPolicy
from katello_events.event_queue.consumer import CAREFUL_BATCHES_AFTER_UNCLEAN_END, DIED, BatchConsumer
from katello_events.fencing import UNFENCED, Deposed, Fence, take_epoch
from katello_events.handlers.base import HandlerStats
from katello_events.models import Event, HandlerStatus
from tests.conftest import make_runner, start
from tests.eventsapp.models import Handling
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def consumer(fence: Fence = UNFENCED, max_attempts: int = 3) -> BatchConsumer:
    return BatchConsumer(HandlerStats(), retry=RetryPolicy(max_attempts=max_attempts, backoff=30), fence=fence)


def died_in_a_careful_try(attempts: int, event_type: str = "test.record") -> Event:
    """An event as a runner that died during its careful try left it."""
    return Event.objects.create(
        event_type=event_type, object_id="poison", attempts=attempts, attempt_started_at=timezone.now()
    )


# -- careful tries ----------------------------------------------------------------------------


def test_after_an_unclean_end_each_group_commits_its_attempt_before_its_handler_runs():
    for n in range(3):
        katello_events.push_event("test.inspect", f"obj-{n}")
    batch = consumer(Fence(after_unclean_end=True))
    assert batch.careful_batches == CAREFUL_BATCHES_AFTER_UNCLEAN_END

    assert batch.process_batch() == 3
    runs = list(Handling.objects.order_by("id"))
    assert [run.metadata["committed"] for run in runs] == [[1, True]] * 3, "charged and marked, committed"
    assert [run.attempts for run in runs] == [0, 0, 0], "the handler sees the attempts made before it"
    assert not Event.objects.exists(), "a try that ended cleared its charge with its rows"
    assert batch.stats.counters() == {"processed": 3, "failed": 0}
    assert batch.careful_batches == CAREFUL_BATCHES_AFTER_UNCLEAN_END - 1


def test_the_normal_path_writes_nothing_before_its_handlers():
    katello_events.push_event("test.inspect", "obj")
    consumer().process_batch()
    assert Handling.objects.get().metadata["committed"] == [0, False]


def test_a_try_that_never_ended_is_charged_and_rescheduled_without_running():
    event = died_in_a_careful_try(attempts=2)
    batch = consumer(max_attempts=5)
    assert batch.process_batch() == 1
    event.refresh_from_db()
    assert not Handling.objects.exists(), "not run again at once: the events behind it go first"
    assert (event.state, event.attempts, event.attempt_started_at) == (Event.PENDING, 2, None)
    assert event.last_error == f"{DIED} (attempt 2 of 5)"
    assert event.run_after > timezone.now() + timedelta(seconds=30), "backed off like any failure"
    assert batch.stats.counters() == {"processed": 0, "failed": 1, "deaths": 1}


def test_a_death_in_the_first_careful_try_is_presumed_to_have_caused_the_one_before():
    # Nothing is written before a normal batch's handlers, so the death of that batch is
    # charged to the event that then dies in its first careful try as well.
    event = died_in_a_careful_try(attempts=1)
    consumer(max_attempts=3).process_batch()
    event.refresh_from_db()
    assert event.attempts == 2
    assert event.last_error == f"{DIED} (attempt 2 of 3)"


def test_an_event_that_keeps_killing_its_runner_ends_dead():
    event = died_in_a_careful_try(attempts=3)
    batch = consumer(max_attempts=3)
    batch.process_batch()
    event.refresh_from_db()
    assert (event.state, event.attempts, event.last_error) == (Event.DEAD, 3, f"{DIED} (attempt 3 of 3)")
    assert batch.stats.counters() == {"processed": 0, "failed": 1, "deaths": 1, "dead": 1}


def test_a_retried_event_always_gets_a_careful_try():
    event = Event.objects.create(event_type="test.inspect", object_id="retried", attempts=1)
    katello_events.push_event("test.inspect", "fresh")
    consumer().process_batch()
    runs = {run.object_id: run.metadata["committed"] for run in Handling.objects.all()}
    assert runs == {"retried": [2, True], "fresh": [0, False]}
    assert not Event.objects.filter(id=event.id).exists()


def test_a_careful_try_that_fails_settles_as_one_failure():
    event = Event.objects.create(event_type="test.fail", object_id="again", attempts=1)
    consumer(max_attempts=5).process_batch()
    event.refresh_from_db()
    assert (event.attempts, event.attempt_started_at, event.state) == (2, None, Event.PENDING)
    assert "cannot handle again" in event.last_error


def test_a_careful_try_that_asks_to_retry_later_is_not_charged():
    event = Event.objects.create(
        event_type="test.retry_later_until_switched", object_id="busy", attempts=1, metadata={"seconds": 60}
    )
    consumer(max_attempts=5).process_batch()
    event.refresh_from_db()
    assert (event.attempts, event.attempt_started_at) == (1, None)


def test_twins_of_a_charged_event_fold_into_it():
    died_in_a_careful_try(attempts=2)
    newer = Event.objects.create(event_type="test.record", object_id="poison", metadata={"uid": "newest"})
    consumer(max_attempts=5).process_batch()
    (left,) = Event.objects.all()
    assert (left.id, left.attempts, left.metadata) == (newer.id, 2, {"uid": "newest"})


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt", "GeneratorExit"])
def test_base_exceptions_from_a_handler_fail_only_their_event(kind):
    katello_events.push_event("test.base_exception", "bad", {"raise": kind})
    katello_events.push_event("test.record", "good")
    batch = consumer()
    batch.process_batch()  # nothing escapes
    bad = Event.objects.get(object_id="bad")
    assert bad.attempts == 1
    assert kind in bad.last_error
    assert Handling.objects.filter(object_id="good").count() == 1
    assert batch.stats.counters() == {"processed": 1, "failed": 1}


# -- fencing ------------------------------------------------------------------------------------


def test_a_deposed_consumer_claims_nothing_and_says_so():
    old = take_epoch("host", 1, lock_timeout=5)
    take_epoch("host", 2, lock_timeout=5)
    katello_events.push_event("test.record", "x")
    with pytest.raises(Deposed):
        consumer(Fence(old)).process_batch()
    assert Event.objects.filter(object_id="x", state=Event.PENDING, attempts=0).exists()
    assert not Handling.objects.exists()


def test_a_deposed_consumer_with_an_empty_queue_finds_out_too():
    old = take_epoch("host", 1, lock_timeout=5)
    take_epoch("host", 2, lock_timeout=5)
    with pytest.raises(Deposed):
        consumer(Fence(old)).process_batch()


def test_a_new_term_waits_for_the_batch_in_flight_then_the_old_runner_commits_nothing(tmp_path: Path):
    mine = take_epoch("host", 1, lock_timeout=5)
    started = tmp_path / "started"
    katello_events.push_event("test.record", "slow", {"uid": "slow", "mark": str(started), "sleep": 1.0})
    old = consumer(Fence(mine))
    outcome: dict[str, object] = {}

    def drain() -> None:
        try:
            outcome["first"] = old.process_batch()
            katello_events.push_event("test.record", "late", {"uid": "late"})
            outcome["second"] = old.process_batch()
        except Deposed as exc:
            outcome["deposed"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=drain)
    thread.start()
    wait_for(started.exists, 10, "the old runner's batch is in flight")
    newer = take_epoch("host", 2, lock_timeout=10)  # waits for the batch holding the fence
    assert Handling.objects.filter(uid="slow").exists(), "the batch in flight committed before the new term"
    thread.join(10)
    assert newer == mine + 1
    assert outcome["first"] == 1
    assert isinstance(outcome["deposed"], Deposed)
    assert not Handling.objects.filter(uid="late").exists()
    assert Event.objects.filter(object_id="late", state=Event.PENDING).exists()


def test_a_runner_whose_term_was_taken_steps_down_without_writing_then_competes_again(runners, lock_file, caplog):
    runner = start(runners, make_runner(lock_file, {"count": ("CountingHandler", {})}))
    wait_for(lambda: HandlerStatus.objects.filter(name="count", running=True).exists(), 5, "leading")
    take_epoch("elsewhere", 99999, lock_timeout=5)
    HandlerStatus.objects.filter(name="count").update(hostname="elsewhere", pid=99999)
    wait_for(lambda: "another runner has taken the role" in caplog.text, 10, "the heartbeat found out")
    # The file lock is still free for it here, so it leads again, under a new term.
    wait_for(lambda: HandlerStatus.objects.filter(name="count", pid=runner.identity.pid).exists(), 10, "re-elected")
    assert runner.leading.is_set()


# -- a router that puts the queue in another database alias ---------------------------------------


class QueueRouter:
    """Sends the event queue (and so its fence) to the "queue" alias."""

    def db_for_read(self, model, **hints):
        return "queue" if model._meta.model_name in ("event", "runnerfence") else None

    db_for_write = db_for_read


@pytest.mark.django_db(transaction=True, databases=["default", "queue"])
def test_a_router_that_moves_the_queue_is_followed_by_push_claim_and_fence():
    with override_settings(DATABASE_ROUTERS=[QueueRouter()]):
        mine = take_epoch("host", 1, lock_timeout=5)
        katello_events.push_event("test.inspect", "routed")
        batch = consumer(Fence(mine, after_unclean_end=True))
        assert batch.alias == "queue"
        batch.process_batch()
        run = Handling.objects.get()
        assert run.metadata["in_atomic"]["queue"] is True, "the handler runs inside the queue's transaction"
        assert run.metadata["in_atomic"]["default"] is False
        assert run.metadata["committed"] == [1, True]
        assert not Event.objects.exists()


def test_clean_stop_marks_the_next_start_clean_and_a_kill_marks_it_unclean(runners, lock_file):
    runner = start(runners, make_runner(lock_file, {"count": ("CountingHandler", {})}))
    runner.stop(10)
    from katello_events.status.store import RunnerIdentity, StatusStore

    store = StatusStore(RunnerIdentity("h", 1), ["count"])
    assert store.claim() is False, "a clean stop"
    assert store.claim() is True, "rows still running: the previous runner was killed"
    HandlerStatus.objects.update(running=False, problem="x; the runner lock is held until this process exits")
    assert store.claim() is True, "a wedged runner"


def test_a_handler_that_raises_in_a_batch_is_called_once_per_attempt(tmp_path: Path):
    tries = tmp_path / "tries"
    katello_events.push_event("test.base_exception", "x", {"tries_log": str(tries), "raise": "SystemExit"})
    katello_events.push_event("test.record", "neighbour")
    batch = consumer(max_attempts=3)
    for _ in range(5):
        Event.objects.update(run_after=timezone.now())
        batch.process_batch()
    event = Event.objects.get(object_id="x")
    assert (event.state, event.attempts) == (Event.DEAD, 3)
    assert len(tries.read_text().splitlines()) == 3, "the batch's call was the first attempt, not a free one"
    assert Handling.objects.filter(object_id="neighbour").count() == 1


def test_a_database_error_in_a_batch_is_run_again_alone_and_charged_once(tmp_path: Path):
    # The batch's transaction may be what failed (an earlier handler left it aborted): rerun first.
    tries = tmp_path / "tries"
    katello_events.push_event("test.db_error", "db", {"tries_log": str(tries)})
    consumer(max_attempts=3).process_batch()
    event = Event.objects.get(object_id="db")
    assert event.attempts == 1
    assert "no_such_table" in event.last_error
    assert len(tries.read_text().splitlines()) == 2
