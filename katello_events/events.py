"""The event types katello_events handles itself (discovered like any installed app's events.py).

``candlepin.message``: a Candlepin message whose handler raised, stored by the listener so the
event queue retries it (see ``docs/candlepin.md``). ``katello_events.task``: a task of Django's
Tasks framework enqueued through ``katello_events.tasks.EventQueueBackend`` (``docs/tasks.md``);
registering it needs no Tasks framework installed.
"""

import katello_events.tasks.execute  # noqa: F401 - registers the katello_events.task event type
from katello_events.candlepin.dispatch import MESSAGE_EVENT, handle_stored_message
from katello_events.registry import event_handler

event_handler(MESSAGE_EVENT)(handle_stored_message)
