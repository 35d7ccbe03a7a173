"""The event types katello_events handles itself (discovered like any installed app's events.py).

``candlepin.message``: a Candlepin message whose handler raised, stored by the listener so the
event queue retries it (see ``docs/candlepin.md``).
"""

from katello_events.candlepin.dispatch import MESSAGE_EVENT, handle_stored_message
from katello_events.registry import event_handler

event_handler(MESSAGE_EVENT)(handle_stored_message)
