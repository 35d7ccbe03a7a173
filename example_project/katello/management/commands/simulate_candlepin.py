"""``manage.py simulate_candlepin SUBJECT ...``: publish one Candlepin event message, in Candlepin's shape.

manage.py simulate_candlepin pool.created --pool-id 4028f9 --subscription-id 4028aa --product "RHEL Server"
manage.py simulate_candlepin entitlement.created --pool-id 4028f9 --consumer <uuid>
manage.py simulate_candlepin compliance.created --consumer <uuid> --status invalid --reason "Not covered"
manage.py simulate_candlepin owner_content_access_mode.modified --mode org_environment --owner Default_Organization

Candlepin's messages carry ids, names and statuses, never a pool's quantity: that is for its API to
tell (see ``katello.candlepin_api``), so there is no option for it here.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from katello import candlepin_simulator as simulator


def candlepin_options() -> dict[str, Any]:
    """The broker URL and destination of the candlepin_events slot."""
    return settings.KATELLO_EVENTS["HANDLERS"]["candlepin_events"].get("OPTIONS", {})


class Command(BaseCommand):
    help = "Publish a Candlepin event message, in Candlepin's shape, to the broker of the candlepin_events handler."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("subject", choices=sorted(BUILDERS))
        parser.add_argument("--pool-id")
        parser.add_argument(
            "--subscription-id", help="pool.created: the pool's subscription (eventData.subscriptionId)."
        )
        parser.add_argument(
            "--product", default=simulator.DEFAULT_PRODUCT, help="The pool's product name (targetName)."
        )
        parser.add_argument("--consumer", help="The host's consumer uuid.")
        parser.add_argument("--status", default="valid")
        parser.add_argument("--reason", action="append", default=[])
        parser.add_argument("--role", help="system_purpose_compliance.created: the role that is matched.")
        parser.add_argument("--mismatched-role", help="system_purpose_compliance.created: the role that is not.")
        parser.add_argument("--mode", help="owner_content_access_mode.modified: entitlement or org_environment.")
        parser.add_argument("--owner", default=simulator.OWNER_KEY, help="The owner's key (organization label).")
        parser.add_argument("--owner-id", default=simulator.OWNER_ID, help="The owner's Candlepin id.")
        parser.add_argument("--count", type=int, default=1, help="Publish the message this many times.")
        parser.add_argument("--broker-url", default=None, help="Default: the candlepin_events BROKER_URL.")
        parser.add_argument("--destination", default=None, help="Default: the candlepin_events DESTINATION.")

    def handle(self, *args: Any, **options: Any) -> None:
        message = BUILDERS[options["subject"]](options)
        broker_url = options["broker_url"] or candlepin_options().get("BROKER_URL")
        destination = options["destination"] or candlepin_options().get("DESTINATION")
        if not broker_url or not destination:
            raise CommandError("no broker: set --broker-url and --destination, or the candlepin_events OPTIONS")
        with simulator.Publisher(broker_url, destination) as publisher:
            for _ in range(options["count"]):
                publisher.send(message)
        self.stdout.write(f"published {options['count']} x {message.subject} to {destination}")


def _required(options: dict[str, Any], *names: str) -> list[Any]:
    missing = [f"--{name.replace('_', '-')}" for name in names if not options.get(name)]
    if missing:
        raise CommandError(f"{options['subject']} needs {', '.join(missing)}")
    return [options[name] for name in names]


BUILDERS = {
    "pool.created": lambda o: simulator.pool_created(*_required(o, "pool_id", "subscription_id"), o["product"]),
    "pool.deleted": lambda o: simulator.pool_deleted(*_required(o, "pool_id"), o["product"]),
    "entitlement.created": lambda o: simulator.entitlement_created(*_required(o, "pool_id", "consumer"), o["product"]),
    "entitlement.deleted": lambda o: simulator.entitlement_deleted(*_required(o, "pool_id", "consumer"), o["product"]),
    "compliance.created": lambda o: simulator.compliance_created(
        *_required(o, "consumer"), o["status"], o["reason"], product_name=o["product"]
    ),
    "system_purpose_compliance.created": lambda o: simulator.system_purpose_compliance_created(
        *_required(o, "consumer"), o["status"], role=o["role"], non_compliant_role=o["mismatched_role"]
    ),
    "owner_content_access_mode.modified": lambda o: simulator.owner_content_access_mode_modified(
        *_required(o, "mode"), owner_key=o["owner"], owner_id=o["owner_id"]
    ),
}
