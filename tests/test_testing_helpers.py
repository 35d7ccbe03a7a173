"""katello_events.testing, as an application's test suite would use it (inside TestCase)."""

from __future__ import annotations

from django.test import TestCase

import katello_events
from katello_events.models import Event
from katello_events.testing import drain_events, make_message
from tests.eventsapp.models import Handling


class DrainEventsTests(TestCase):
    def test_runs_pending_events_in_this_thread_and_transaction(self):
        katello_events.push_event("test.record", "a", {"n": 1})
        katello_events.push_event("test.record", "a", {"n": 2})
        katello_events.push_event("test.record", "b", delay=3600)
        stats = drain_events()
        assert [(h.object_id, h.metadata, h.coalesced) for h in Handling.objects.all()] == [("a", {"n": 2}, 2)]
        assert stats.counters()["processed"] == 1
        assert Event.objects.get().object_id == "b", "a deferred event waits unless asked"
        drain_events(include_deferred=True)
        assert not Event.objects.exists()

    def test_a_failing_handler_leaves_a_dead_event_with_its_traceback(self):
        katello_events.push_event("test.fail", "x")
        stats = drain_events()
        assert stats.counters()["failed"] == 1
        dead = Event.objects.get()
        assert dead.state == Event.DEAD
        assert "cannot handle x" in dead.last_error


def test_make_message_builds_what_a_handler_receives():
    message = make_message("pool.created", {"entityId": "pool-1"}, event_data={"quantity": 5})
    assert message.subject == "pool.created"
    assert message.body["entityId"] == "pool-1"
    assert message.body["target"] == "POOL"
    assert message.event_data == {"quantity": 5}
    assert message.headers["EVENT_TYPE"] == "CREATED"
