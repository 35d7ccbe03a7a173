"""Candlepin's side, simulated: realistic event messages published to the STOMP broker.

The bodies follow Candlepin's event JSON (``id``, ``type``, ``target``, ``entityId``,
``consumerUuid``, ``referenceId``, ``eventData`` as a JSON document inside a string, ...) and
carry the ``EVENT_TARGET`` / ``EVENT_TYPE`` headers Candlepin sets. Messages are persistent.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import stomp

OWNER_ID = "8a85f9815e7f6a19015e7f6b0b4c0002"
PRINCIPAL = {"type": "trusteduser", "name": "foreman_admin"}


@dataclass(frozen=True)
class SimulatedMessage:
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def subject(self) -> str:
        return f"{self.headers['EVENT_TARGET']}.{self.headers['EVENT_TYPE']}".lower()


def _message(target: str, type_: str, *, entity_id: str | None = None, event_data: Any = None, **fields: Any):
    body = {
        "id": uuid.uuid4().hex,
        "type": type_,
        "target": target,
        "targetName": fields.pop("target_name", None),
        "timestamp": int(time.time() * 1000),
        "entityId": entity_id,
        "ownerId": OWNER_ID,
        "consumerUuid": fields.pop("consumer_uuid", None),
        "referenceId": fields.pop("reference_id", None),
        "referenceType": fields.pop("reference_type", None),
        "eventData": json.dumps(event_data) if event_data is not None else None,
        "messageText": fields.pop("message_text", None),
        "principal": PRINCIPAL,
    }
    return SimulatedMessage({"EVENT_TARGET": target, "EVENT_TYPE": type_}, body)


def pool_created(pool_id: str, product_name: str, subscription_name: str, quantity: int) -> SimulatedMessage:
    data = {"id": pool_id, "productName": product_name, "subscriptionName": subscription_name, "quantity": quantity}
    return _message("POOL", "CREATED", entity_id=pool_id, event_data=data, target_name=product_name)


def pool_deleted(pool_id: str) -> SimulatedMessage:
    return _message("POOL", "DELETED", entity_id=pool_id, event_data={"id": pool_id})


def entitlement_created(pool_id: str, consumer_uuid: str) -> SimulatedMessage:
    return _message(
        "ENTITLEMENT", "CREATED", entity_id=uuid.uuid4().hex, consumer_uuid=consumer_uuid,
        reference_id=pool_id, reference_type="POOL",
    )  # fmt: skip


def entitlement_deleted(pool_id: str, consumer_uuid: str) -> SimulatedMessage:
    return _message(
        "ENTITLEMENT", "DELETED", entity_id=uuid.uuid4().hex, consumer_uuid=consumer_uuid,
        reference_id=pool_id, reference_type="POOL",
    )  # fmt: skip


def compliance_created(consumer_uuid: str, status: str, reasons: list[str] = ()) -> SimulatedMessage:
    data = {"status": status, "reasons": [{"key": "NOTCOVERED", "message": reason} for reason in reasons]}
    return _message("COMPLIANCE", "CREATED", entity_id=consumer_uuid, consumer_uuid=consumer_uuid, event_data=data)


def system_purpose_compliance_created(
    consumer_uuid: str, status: str, *, role: str | None = None, non_compliant_role: str | None = None
) -> SimulatedMessage:
    data = {
        "status": status,
        "reasons": [],
        "compliantRole": {role: []} if role else {},
        "nonCompliantRole": non_compliant_role,
        "compliantUsage": {},
        "nonCompliantUsage": None,
        "compliantSLA": {},
        "nonCompliantSLA": None,
        "compliantAddOns": {},
        "nonCompliantAddOns": [],
    }
    return _message(
        "SYSTEM_PURPOSE_COMPLIANCE", "CREATED", entity_id=consumer_uuid, consumer_uuid=consumer_uuid, event_data=data
    )


class Publisher:
    """Publishes simulated messages to ``destination`` on the broker at ``broker_url``."""

    def __init__(self, broker_url: str, destination: str, vhost: str = "/") -> None:
        url = urlsplit(broker_url.split(",")[0].strip())
        self.destination = destination
        self.connection = stomp.Connection12([(url.hostname or "127.0.0.1", url.port or 61613)], vhost=vhost)
        self.connection.connect(unquote(url.username or ""), unquote(url.password or ""), wait=True)

    def send(self, message: SimulatedMessage) -> None:
        self.connection.send(
            self.destination,
            json.dumps(message.body),
            content_type="application/json",
            headers={**message.headers, "persistent": "true"},
        )

    def close(self) -> None:
        # A receipt on disconnect: every message sent before it has reached the broker.
        self.connection.disconnect(receipt=uuid.uuid4().hex)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
