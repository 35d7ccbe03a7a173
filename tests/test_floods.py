"""Floods cannot fill the disk or the log: dead events are bounded, dead messages summarised.

Real PostgreSQL and RabbitMQ, an in-process runner; the bounds are KATELLO_EVENTS'
DEAD_EVENT_LIMIT and DEAD_EVENT_RETENTION, applied by the event queue's slot.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from katello_events.candlepin.dispatch import MESSAGE_EVENT
from katello_events.event_queue.maintenance import prune_dead
from katello_events.log import LogBudget
from katello_events.models import Event, HandlerStatus
from tests.candlepin_support import messages_in_queue, run_listener, send
from tests.conftest import make_runner, start
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "katello_events.handlers.event_queue.EventQueueHandler"


def dead_events(count: int, **fields) -> None:
    Event.objects.bulk_create(
        [Event(event_type="test.record", object_id=f"d{n}", state=Event.DEAD, **fields) for n in range(count)]
    )


def test_prune_keeps_the_newest_dead_within_the_limit_and_never_touches_pending():
    dead_events(30)
    Event.objects.create(event_type="test.record", object_id="pending")
    newest = list(Event.objects.filter(state=Event.DEAD).order_by("-id").values_list("id", flat=True)[:10])
    assert prune_dead(limit=10, retention=None) == 20
    assert sorted(Event.objects.filter(state=Event.DEAD).values_list("id", flat=True)) == sorted(newest)
    assert Event.objects.filter(object_id="pending").exists()


def test_prune_drops_dead_events_older_than_the_retention():
    dead_events(3)
    Event.objects.filter(object_id="d0").update(updated_at=timezone.now() - timedelta(days=31))
    assert prune_dead(limit=None, retention=30 * 24 * 3600.0) == 1
    assert Event.objects.count() == 2


def test_the_runner_applies_the_limit_counts_what_it_pruned_and_logs_once_a_pass(runners, lock_file, caplog):
    dead_events(2000)
    with override_settings(KATELLO_EVENTS={"DEAD_EVENT_LIMIT": 500, "LOCK_FILE": lock_file}):
        start(runners, make_runner(lock_file, {"katello_events": (QUEUE, {"PRUNE_INTERVAL": 0.2})}))
        wait_for(lambda: Event.objects.count() <= 500, 30, "dead events pruned to the limit")

        def counted():
            row = HandlerStatus.objects.filter(name="katello_events").first()
            return row and row.counters.get("pruned") == 1500

        wait_for(counted, 15, "the status counts what was pruned")
    assert caplog.text.count("pruned 1500 dead event(s)") == 1


def test_log_budget_lets_a_few_lines_through_then_sums_up_the_rest():
    budget = LogBudget(limit=3, window=0.2)
    assert [budget.allow() for _ in range(10)] == [True] * 3 + [False] * 7
    assert budget.take_suppressed() == 0, "not while the window runs"
    assert wait_for(budget.take_suppressed, 5, "the window ends") == 7
    assert budget.allow(), "a new window"


def test_a_flood_of_malformed_messages_keeps_at_most_the_limit_and_logs_a_summary(
    runners, lock_file, destination, caplog, monkeypatch
):
    from katello_events.candlepin import dispatch

    monkeypatch.setattr(dispatch, "DEAD_LOG", LogBudget(limit=5, window=1.0))
    send(destination, [({"EVENT_TARGET": "POOL", "EVENT_TYPE": "CREATED"}, b"not json %d" % n) for n in range(2000)])
    settings = {"DEAD_EVENT_LIMIT": 500, "LOCK_FILE": lock_file}
    started = time.monotonic()
    with caplog.at_level(logging.INFO), override_settings(KATELLO_EVENTS=settings):
        runner = run_listener(runners, lock_file, destination, event_queue={"PRUNE_INTERVAL": 0.2})
        wait_for(lambda: messages_in_queue(destination) == 0, 120, "every message acked", interval=0.3)
        wait_for(lambda: Event.objects.filter(event_type=MESSAGE_EVENT).count() <= 500, 30, "pruned to the limit")
        wait_for(lambda: "more message(s) were kept as dead events" in caplog.text, 15, "the summary line")
    windows = math.ceil(time.monotonic() - started) + 1
    lines = caplog.text.count("message kept as dead event #")
    assert lines <= 5 * windows, "five lines a window at most"
    assert lines < 100, "not one line per message"
    assert not [s for s in runner.supervisor.snapshots() if s.problem], "the listener is ok"
