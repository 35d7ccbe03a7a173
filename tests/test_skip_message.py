"""``katello_events.SkipMessage``: a message handler says "nothing to do here" (a message about a
host this application does not have). The message is done, like a return: acked, never retried,
never dead, counted ``skipped`` by the service that ran the handler (the listener on the direct
path, the event queue with the inbox and for stored messages), logged at DEBUG. Real RabbitMQ and
real PostgreSQL for the end-to-end tests; the event queue's side also without a broker.
"""

from __future__ import annotations

import json
import logging
import threading

import pytest

import katello_events
from katello_events import SkipMessage
from katello_events.candlepin.dispatch import MESSAGE_EVENT
from katello_events.models import Event, HandlerStatus
from katello_events.registry import message_coalescing, message_handlers
from katello_events.stats import HandlerStats, bind_thread, count_in_thread, thread_stats
from katello_events.testing import drain_events
from tests.candlepin_support import DIRECT, messages_in_queue, run_listener, send, status_row, subject_message, uid_of
from tests.eventsapp.models import Handling
from tests.factories import make_row
from tests.support import wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(120),
    pytest.mark.usefixtures("candlepin_test_queues"),
]


def skip_after_writing(message) -> None:
    """Writes a row, then skips: the row is kept (a skip ends the run like a return)."""
    Handling.objects.create(uid=str(message.body.get("id")), event_type=message.subject, object_id="", attempts=0,
                            coalesced=1, pid=0)  # fmt: skip
    raise SkipMessage(f"no host with consumer uuid {message.body.get('consumerUuid')!r}")


def fail(message) -> None:
    raise RuntimeError("this one fails")


@pytest.fixture
def skipping():
    previous = message_handlers.reset({"testing.skip": skip_after_writing, "testing.fail": fail})
    previous_keys = message_coalescing.reset()
    yield
    message_handlers.reset(previous)
    message_coalescing.reset(previous_keys)


def stored(subject: str, uid: str) -> int:
    """A message stored for the event queue, as the inbox (or a failed direct run) stores it."""
    headers, body = subject_message(subject, id=uid, consumerUuid="nobody")
    metadata = {"subject": subject, "headers": {**headers, "message-id": uid}, "body": json.loads(body)}
    return katello_events.push_event(MESSAGE_EVENT, uid, metadata)


# -- the event queue's side, without a broker ----------------------------------------------------------


def test_a_stored_message_skipped_is_done_counted_skipped_and_logged_at_debug(skipping, caplog):
    stored("testing.skip", "m-1")
    with caplog.at_level(logging.DEBUG, logger="katello_events"):
        stats = drain_events()
    counters = stats.counters()
    assert (counters["processed"], counters["failed"], counters.get("skipped")) == (1, 0, 1)
    assert not Event.objects.exists(), "done: not pending, not dead"
    assert Handling.objects.count() == 1, "what the handler wrote before skipping is kept"
    lines = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.DEBUG]
    assert "no host with consumer uuid 'nobody'" in lines[0].getMessage()


def test_a_batch_rolled_back_counts_its_skip_once(skipping):
    """The skip runs in the batch, the batch fails on another message and runs again one by one:
    the skip is counted once, when its run commits."""
    stored("testing.skip", "m-1")
    stored("testing.fail", "m-2")
    stats = drain_events(max_attempts=1)
    counters = stats.counters()
    assert counters.get("skipped") == 1
    assert counters["failed"] == 1
    assert list(Event.objects.values_list("object_id", "state")) == [("m-2", Event.DEAD)]
    assert Handling.objects.count() == 1, "the batch's own write rolled back with it"


def test_counting_in_a_thread_needs_a_slot_bound_to_it():
    previous = bind_thread(None)
    try:
        assert count_in_thread("skipped") is False
        stats = HandlerStats()
        bind_thread(stats)
        assert count_in_thread("skipped", 2) is True
        assert stats.counters()["skipped"] == 2
        seen: list[object] = []
        thread = threading.Thread(target=lambda: seen.append(thread_stats()))
        thread.start()
        thread.join()
        assert seen == [None], "a binding is per thread"
    finally:
        bind_thread(previous)


# -- end to end through RabbitMQ ----------------------------------------------------------------------


def queue_row() -> HandlerStatus | None:
    return HandlerStatus.objects.filter(name="katello_events").first()


@pytest.mark.parametrize("inbox", [True, False], ids=["inbox", "direct"])
def test_skipped_messages_are_acked_and_counted_by_the_service_that_ran_them(
    skipping, runners, lock_file, destination, inbox
):
    messages = [subject_message("testing.skip", consumerUuid="nobody") for _ in range(12)]
    send(destination, messages)
    run_listener(runners, lock_file, destination, **({} if inbox else DIRECT))

    wait_for(lambda: Handling.objects.count() == len(messages), 30, "every message ran")
    assert {row.uid for row in Handling.objects.all()} == {uid_of(m) for m in messages}
    wait_for(lambda: messages_in_queue(destination) == 0, 20, "every message acked", interval=0.3)
    wait_for(lambda: not Event.objects.exists(), 20, "nothing pending, nothing dead")

    ran, other = (queue_row, status_row) if inbox else (status_row, queue_row)
    row = wait_for(lambda: (r := ran()) and r.counters.get("skipped") == len(messages) and r, 20, "counted skipped")
    assert row.failed_count == 0
    assert row.processed_count >= 1, "a skipped message is done: processed too"
    assert not (other() and other().counters.get("skipped"))
    listener = status_row()
    assert listener.failed_count == 0
    assert not {"deferred", "retried_later", "dead"} & {k for k, v in listener.counters.items() if v}


# -- where it shows --------------------------------------------------------------------------------------


def test_the_status_and_the_about_page_show_the_skipped_count(client):
    make_row("katello_events", counters={"skipped": 7, "coalesced": 2})
    make_row("candlepin_events", counters={"stored": 12})
    assert client.get("/api/ping").json()["services"]["katello_events"]["counters"]["skipped"] == 7
    html = client.get("/about/").content.decode()
    assert "7 Skipped" in html
    assert html.count("Skipped") == 1, "only where something was skipped"
