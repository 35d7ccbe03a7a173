"""The example domain's event handlers (discovered by katello_events at start-up).

All are idempotent: running one twice leaves the same state as running it once.
"""

from __future__ import annotations

from django.conf import settings

from katello import candlepin_events, services
from katello.models import ContentView, Host
from katello_events import event_handler


@event_handler("auto_publish_composite_view")
def auto_publish_composite_view(event) -> None:
    """A component was published: publish the composite (once per burst, by coalescing)."""
    composite = ContentView.objects.filter(pk=event.object_id, composite=True, auto_publish=True).first()
    if composite is not None:  # deleted or no longer auto-publishing: nothing to do
        services.publish(composite)


@event_handler("generate_host_applicability")
def generate_host_applicability(event) -> None:
    host = Host.objects.filter(pk=event.object_id).first()
    if host is not None:
        services.recompute_applicability(host)


if getattr(settings, "KATELLO_EXAMPLE_MESSAGE_HANDLERS", True):
    candlepin_events.register()
