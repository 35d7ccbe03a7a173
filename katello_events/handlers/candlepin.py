"""The ``candlepin_events`` slot: the STOMP listener on Candlepin's broker.

Foundation stage: the slot is wired, supervised and reported; the listener itself (connect,
subscribe, dispatch, ack, reconnect) arrives with the Candlepin work. Until then it idles and
reports the queue depth as unknown.
"""

from __future__ import annotations

from katello_events.handlers.base import Handler


class CandlepinHandler(Handler):
    """Listens to Candlepin's event messages (placeholder loop, see module docstring)."""
