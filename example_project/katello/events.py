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


@event_handler("generate_host_applicability", batch_size=500)
def generate_host_applicability(events) -> None:
    """Hosts whose packages changed: recompute their applicability, up to 500 hosts a call.

    One query for the hosts and one for the errata per call, instead of per host (Katello moved
    applicability to a batched host queue for this). Hosts deleted meanwhile are skipped.
    """
    hosts = Host.objects.filter(pk__in=[event.object_id for event in events])
    services.recompute_applicability_of(list(hosts))


@event_handler(candlepin_events.IMPORT_POOL)
def import_pool(event) -> None:
    """A pool's entitlements changed (Candlepin's ``entitlement.*`` messages): read its figures
    again from Candlepin's API, once per burst of them (coalesced by the pool's id), as Katello's
    ``import_pool`` event did."""
    candlepin_events.refresh_pool(event.object_id)


if getattr(settings, "KATELLO_EXAMPLE_MESSAGE_HANDLERS", True):
    candlepin_events.register()
