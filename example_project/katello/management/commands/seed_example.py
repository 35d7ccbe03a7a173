"""``manage.py seed_example``: example data, and work for both handlers to show on /about/.

Idempotent: run it again and it adds another round of work, not duplicate data.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from katello import candlepin_simulator as simulator
from katello import services
from katello.management.commands.simulate_candlepin import candlepin_options
from katello.models import ActivationKey, ContentView, Erratum, Host, Organization, Product, Subscription

HOSTS = 5
#: The Candlepin id of the example's subscription (what its pool's pool.created names).
SUBSCRIPTION_ID = "example-subscription-rhel-premium"


class Command(BaseCommand):
    help = "Load example hosts, content views, errata and a subscription, and give both handlers work."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--no-broker", action="store_true", help="Skip the Candlepin messages.")

    def handle(self, *args: Any, **options: Any) -> None:
        Organization.objects.get_or_create(
            label=simulator.OWNER_KEY, defaults={"name": "Default Organization", "candlepin_id": simulator.OWNER_ID}
        )
        product, _ = Product.objects.get_or_create(name="Red Hat Enterprise Linux Server")
        subscription, _ = Subscription.objects.get_or_create(
            name="RHEL Premium", product=product, defaults={"candlepin_id": SUBSCRIPTION_ID}
        )
        key, _ = ActivationKey.objects.get_or_create(name="rhel-servers", subscription=subscription)
        Erratum.objects.get_or_create(errata_id="RHSA-2026:1001", defaults={"packages": ["openssl-3.0.8"]})
        Erratum.objects.get_or_create(errata_id="RHBA-2026:1002", defaults={"packages": ["bash-5.2.26"]})
        base, _ = ContentView.objects.get_or_create(name="RHEL 9 base")
        composite, _ = ContentView.objects.get_or_create(name="RHEL 9 app stack", composite=True, auto_publish=True)
        composite.components.add(base)
        hosts = [
            Host.objects.get_or_create(
                name=f"web-{n}.example.com",
                defaults={"consumer_uuid": f"example-consumer-{n}", "activation_key": key, "content_view": composite},
            )[0]
            for n in range(1, HOSTS + 1)
        ]

        services.publish(base)  # the composite follows, through the event queue
        for host in hosts:
            services.set_installed_packages(host, ["bash-5.2.15", "openssl-3.0.7", "kernel-6.1.10"])
        self.stdout.write(f"example data ready: {len(hosts)} hosts; events pushed for both content views and errata")
        if not options["no_broker"]:
            self._publish_candlepin_messages(hosts)

    def _publish_candlepin_messages(self, hosts: list[Host]) -> None:
        settings = candlepin_options()
        pool_id = "example-pool-rhel-premium"
        with simulator.Publisher(settings["BROKER_URL"], settings["DESTINATION"]) as publisher:
            publisher.send(simulator.pool_created(pool_id, SUBSCRIPTION_ID, "Red Hat Enterprise Linux Server"))
            publisher.send(simulator.owner_content_access_mode_modified("entitlement"))
            for host in hosts:
                publisher.send(simulator.entitlement_created(pool_id, host.consumer_uuid))
                publisher.send(simulator.compliance_created(host.consumer_uuid, "valid"))
                publisher.send(
                    simulator.system_purpose_compliance_created(
                        host.consumer_uuid, "matched", role="Red Hat Enterprise Linux Server"
                    )
                )
        self.stdout.write(f"Candlepin messages published to {settings['DESTINATION']}")
