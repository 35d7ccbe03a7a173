"""A Candlepin message whose handler takes its process down, under real ``run_event_daemon``s.

The poison message goes ahead of ordinary ones. Its first delivery runs in the listener and kills
the runner; the broker delivers it again (``redelivered: true``) to the next runner, whose listener
stores it in the durable event queue instead of running it. From there the event queue's rules
apply: each death while handling it costs one attempt, and after MAX_ATTEMPTS it ends dead. So
the poison is tried at most MAX_ATTEMPTS + 1 times, and the ordinary messages behind it are all
handled meanwhile: the listener never crash-loops on it.

Counted from outside the code under test: the poison handler (tests/eventsapp/events.py) appends
a line to a tries log before it kills its process; ``chaos.record`` writes one Handling row per
run; RabbitMQ says what is left in the queue.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from katello_events.candlepin.dispatch import MESSAGE_EVENT
from katello_events.models import Event, HandlerStatus
from tests.candlepin_support import BROKER_URL, messages_in_queue, send, subject_message
from tests.chaos_results import record
from tests.support import DaemonFleet, alive, wait_for
from tests.test_chaos import all_handled, chaos_messages, tally

pytestmark = [
    pytest.mark.process,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(240),
    pytest.mark.usefixtures("candlepin_test_queues"),
]

MAX_ATTEMPTS = 3
DAEMONS = 3  # a runner and two standbys
ORDINARY = 100
#: What the last error of an event says when its runner died while handling it.
DIED = "the runner died while handling it"
POISON = "poison"


def tries(tries_log: Path) -> list[int]:
    """The pid of each call of the poison handler, in order."""
    lines = tries_log.read_text().splitlines() if tries_log.exists() else []
    return [int(pid) for label, pid in (line.rsplit(" ", 1) for line in lines) if label == POISON]


def dead_poison() -> Event | None:
    return Event.objects.filter(event_type=MESSAGE_EVENT, state=Event.DEAD, metadata__subject="testing.sigkill").first()


def test_a_candlepin_message_that_sigkills_its_process_ends_dead_and_the_rest_flow(start_server, destination, tmp_path):
    tries_log = tmp_path / "tries.log"
    uids = [f"c{n}" for n in range(ORDINARY)]
    poison = subject_message("testing.sigkill", id=POISON, tries_log=str(tries_log))
    send(destination, [poison, *chaos_messages(uids)])  # the poison first: in the first burst
    started = time.monotonic()
    daemons = DaemonFleet(
        start_server,
        DAEMONS,
        CANDLEPIN_QUEUE=destination,
        CANDLEPIN_BROKER_URL=BROKER_URL,
        KATELLO_EVENTS_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
        KATELLO_EVENTS_RETRY_BACKOFF="1",
        KATELLO_EVENTS_CANDLEPIN_INBOX="false",  # the listener's own safeguard: the inbox runs nothing
    )

    def settled() -> bool:
        return daemons.keep_up() and dead_poison() is not None and all_handled(uids)

    try:
        wait_for(settled, 180, "the poison is dead and every ordinary message handled", interval=0.1)
    finally:
        counts, calls = tally(uids), tries(tries_log)
        event = dead_poison()
        record(
            "candlepin message that SIGKILLs its process",
            tries=len(calls),
            attempts=event.attempts if event else None,
            deaths=sum(not alive(pid) for pid in set(calls)),
            daemon_exits=len(daemons.exits),
            handled=counts["handled"],
            lost=counts["lost"],
            duplicates=counts["duplicates"],
            seconds=round(time.monotonic() - started, 1),
        )
    assert DIED in event.last_error, event.last_error
    assert event.metadata["body"]["id"] == POISON
    assert event.metadata["headers"]["redelivered"] == "true"
    assert 2 <= len(calls) <= MAX_ATTEMPTS + 1, f"the poison handler was called {len(calls)} times"
    assert counts["lost"] == 0
    wait_for(lambda: messages_in_queue(destination) == 0, 30, "nothing left with the broker", interval=0.5)
    wait_for(lambda: not Event.objects.exclude(state=Event.DEAD).exists(), 30, "nothing but the poison left")
    assert Event.objects.filter(state=Event.DEAD).count() == 1
    listener = HandlerStatus.objects.get(name="candlepin_events")
    assert listener.restarts == 0, "the listener never crashed: the poison killed processes, not its thread"
