"""The ``katello_events`` slot: the durable event queue in the database.

Foundation stage: the slot is wired, supervised and reported; the consumer itself (claiming,
coalescing, retries) arrives with the event-queue work. Until then it idles honestly: it
reports no queue depth rather than a made-up one.
"""

from __future__ import annotations

from katello_events.handlers.base import Handler


class EventQueueHandler(Handler):
    """Consumes the database event queue (placeholder loop, see module docstring)."""
