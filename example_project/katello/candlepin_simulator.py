"""Candlepin's side, simulated: event messages published to the STOMP broker in Candlepin's shapes.

Each body has exactly the keys of Candlepin's event JSON (``org.candlepin.audit.Event``), filled as
Candlepin's ``EventFactory`` fills them for that subject: ``id`` null (events on the bus are not
stored), ``principalStore`` (the principal as a JSON string) and ``principal``, ``timestamp`` in
epoch milliseconds, ``eventData`` a JSON document inside a string, or null for the subjects that
carry none. The only headers are Candlepin's ``EVENT_TARGET`` and ``EVENT_TYPE`` (no
``content-type``), plus ``persistent: true``, RabbitMQ's way of making the message durable as
Candlepin's are. ``tests/fixtures/candlepin_messages/`` holds the shapes and where they come from;
the test suite checks that what is built here has exactly them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import stomp

#: The owner (organization) the simulated Candlepin sends for: its id and its key (the label of
#: the example's organization; ``seed_example`` creates it).
OWNER_ID = "8a85f9815e7f6a19015e7f6b0b4c0002"
OWNER_KEY = "Default_Organization"
PRINCIPAL = {"type": "trusteduser", "name": "foreman_admin"}
DEFAULT_PRODUCT = "Red Hat Enterprise Linux Server"


@dataclass(frozen=True)
class SimulatedMessage:
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def subject(self) -> str:
        return f"{self.headers['EVENT_TARGET']}.{self.headers['EVENT_TYPE']}".lower()


def _message(
    target: str,
    type_: str,
    *,
    target_name: str | None,
    entity_id: str,
    owner_id: str = OWNER_ID,
    consumer_uuid: str | None = None,
    reference_id: str | None = None,
    reference_type: str | None = None,
    event_data: Any = None,
) -> SimulatedMessage:
    body = {
        "id": None,
        "type": type_,
        "target": target,
        "targetName": target_name,
        "principalStore": json.dumps(PRINCIPAL, separators=(",", ":")),
        "timestamp": int(time.time() * 1000),
        "entityId": entity_id,
        "ownerId": owner_id,
        "consumerUuid": consumer_uuid,
        "referenceId": reference_id,
        "referenceType": reference_type,
        "eventData": json.dumps(event_data, separators=(",", ":")) if event_data is not None else None,
        "messageText": None,
        "principal": dict(PRINCIPAL),
    }
    return SimulatedMessage({"EVENT_TARGET": target, "EVENT_TYPE": type_}, body)


def _candlepin_id() -> str:
    """An id as Candlepin makes them: 32 hex digits."""
    return uuid.uuid4().hex


def pool_created(pool_id: str, subscription_id: str, product_name: str = DEFAULT_PRODUCT) -> SimulatedMessage:
    """A pool was created: its id, its product's name and its subscription's id, nothing more
    (its quantity is for the API to tell)."""
    return _message(
        "POOL", "CREATED", target_name=product_name, entity_id=pool_id, event_data={"subscriptionId": subscription_id}
    )


def pool_deleted(pool_id: str, product_name: str = DEFAULT_PRODUCT) -> SimulatedMessage:
    return _message("POOL", "DELETED", target_name=product_name, entity_id=pool_id)


def entitlement_created(pool_id: str, consumer_uuid: str, product_name: str = DEFAULT_PRODUCT) -> SimulatedMessage:
    return _message(
        "ENTITLEMENT", "CREATED", target_name=product_name, entity_id=_candlepin_id(),
        consumer_uuid=consumer_uuid, reference_id=pool_id, reference_type="POOL",
    )  # fmt: skip


def entitlement_deleted(pool_id: str, consumer_uuid: str, product_name: str = DEFAULT_PRODUCT) -> SimulatedMessage:
    return _message(
        "ENTITLEMENT", "DELETED", target_name=product_name, entity_id=_candlepin_id(),
        consumer_uuid=consumer_uuid, reference_id=pool_id, reference_type="POOL",
    )  # fmt: skip


def compliance_created(
    consumer_uuid: str,
    status: str,
    reasons: Sequence[str] = (),
    *,
    product_name: str = DEFAULT_PRODUCT,
    consumer_name: str | None = None,
) -> SimulatedMessage:
    """A host's subscription status: each reason about ``product_name``, as Candlepin words them."""
    data = {"reasons": [{"productName": product_name, "message": reason} for reason in reasons], "status": status}
    return _message(
        "COMPLIANCE", "CREATED", target_name=consumer_name or consumer_uuid, entity_id=consumer_uuid,
        consumer_uuid=consumer_uuid, event_data=data,
    )  # fmt: skip


def system_purpose_compliance_created(
    consumer_uuid: str,
    status: str,
    *,
    role: str | None = None,
    non_compliant_role: str | None = None,
    consumer_name: str | None = None,
) -> SimulatedMessage:
    """A host's system purpose status. A compliant role maps to the entitlements that provide it
    (here: one made-up entitlement id)."""
    data = {
        "nonCompliantUsage": None,
        "compliantRole": {role: [_candlepin_id()]} if role else {},
        "nonCompliantAddOns": [],
        "reasons": (
            [f'The requested role "{non_compliant_role}" is not provided by a currently consumed subscription.']
            if non_compliant_role
            else []
        ),
        "compliantSLA": {},
        "nonCompliantRole": non_compliant_role,
        "nonCompliantSLA": None,
        "compliantAddOns": {},
        "compliantUsage": {},
        "status": status,
    }
    return _message(
        "SYSTEM_PURPOSE_COMPLIANCE", "CREATED", target_name=consumer_name or consumer_uuid, entity_id=consumer_uuid,
        consumer_uuid=consumer_uuid, event_data=data,
    )  # fmt: skip


def owner_content_access_mode_modified(
    mode: str, *, owner_key: str = OWNER_KEY, owner_id: str = OWNER_ID
) -> SimulatedMessage:
    """An organization's content access mode changed: ``entitlement`` or ``org_environment``."""
    return _message(
        "OWNER_CONTENT_ACCESS_MODE", "MODIFIED", target_name=owner_key, entity_id=owner_id, owner_id=owner_id,
        event_data={"contentAccessMode": mode},
    )  # fmt: skip


class Publisher:
    """Publishes simulated messages to ``destination`` on the broker at ``broker_url``."""

    def __init__(self, broker_url: str, destination: str, vhost: str = "/") -> None:
        url = urlsplit(broker_url.split(",")[0].strip())
        self.destination = destination
        self.connection = stomp.Connection12([(url.hostname or "127.0.0.1", url.port or 61613)], vhost=vhost)
        self.connection.connect(unquote(url.username or ""), unquote(url.password or ""), wait=True)

    def send(self, message: SimulatedMessage) -> None:
        # Candlepin's headers only: no content-type (Candlepin sends none).
        self.connection.send(self.destination, json.dumps(message.body), headers={**message.headers, **DURABLE})

    def close(self) -> None:
        # A receipt on disconnect: every message sent before it has reached the broker.
        self.connection.disconnect(receipt=uuid.uuid4().hex)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: What makes a message durable on RabbitMQ (Candlepin's messages are durable on Artemis).
DURABLE = {"persistent": "true"}
