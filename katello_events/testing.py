"""Helpers for testing an application's handlers, in its own test suite.

No runner, no threads: :func:`drain_events` runs the event queue's consumer in the calling
thread, so it works inside ``TestCase`` transactions; :func:`make_message` builds the message a
``@message_handler`` function receives, from a subject and a body, as Candlepin would send it.
"""

from __future__ import annotations

import json
from typing import Any

from django.db.models.functions import Now

from katello_events.candlepin.message import CandlepinMessage, parse_message
from katello_events.event_queue.batch import RetryPolicy
from katello_events.event_queue.consumer import BatchConsumer
from katello_events.models import Event
from katello_events.stats import HandlerStats, bind_thread


def drain_events(*, include_deferred: bool = False, max_attempts: int = 1, max_batches: int = 1000) -> HandlerStats:
    """Handle every pending event now, in this thread; returns the counters of the run.

    ``include_deferred`` makes delayed and backed-off events due first. With the default
    ``max_attempts=1`` a failing handler's event becomes dead at once (its traceback is in
    ``Event.last_error``) instead of waiting for a retry.
    """
    if include_deferred:
        Event.objects.filter(state=Event.PENDING).update(run_after=Now())
    stats = HandlerStats()
    consumer = BatchConsumer(stats, retry=RetryPolicy(max_attempts=max_attempts))
    previous = bind_thread(stats)  # what the handlers count themselves (skipped messages) lands here too
    try:
        for _ in range(max_batches):
            if not consumer.process_batch():
                break
    finally:
        bind_thread(previous)
    return stats


def make_message(
    subject: str,
    body: dict[str, Any] | None = None,
    *,
    event_data: Any = None,
    headers: dict[str, str] | None = None,
) -> CandlepinMessage:
    """The message a handler of ``subject`` ("pool.created") receives for ``body``.

    ``event_data`` (any JSON value) is stored in the body's ``eventData`` as Candlepin does: a
    JSON document inside a string.
    """
    target, _, type_ = subject.upper().partition(".")
    document = {"id": "test", "target": target, "type": type_, **(body or {})}
    if event_data is not None:
        document["eventData"] = json.dumps(event_data)
    frame_headers = {"EVENT_TARGET": target, "EVENT_TYPE": type_, "message-id": "test", **(headers or {})}
    return parse_message(frame_headers, json.dumps(document).encode(), max_body_bytes=2**31)
