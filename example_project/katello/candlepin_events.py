"""Handlers of Candlepin's event messages, registered by events.py at start-up (see register()).

Idempotent and order-tolerant: a message may arrive twice (at-least-once delivery) or late
(a failed message is retried through the event queue while newer ones go ahead).
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from katello.models import Host, Pool, Subscription
from katello_events import CandlepinMessage
from katello_events.registry import message_handlers


class UnknownConsumer(LookupError):
    """A message about a host this application has not registered (yet): retried later."""


def _host(message: CandlepinMessage) -> Host:
    uuid = message.body.get("consumerUuid")
    host = Host.objects.filter(consumer_uuid=uuid).first()
    if host is None:
        raise UnknownConsumer(f"no host with consumer uuid {uuid!r}")
    return host


def _live_pool(candlepin_id: str, data: dict | None = None) -> Pool | None:
    """The pool, imported or refreshed from ``data``; None when Candlepin deleted it."""
    pool, _ = Pool.objects.select_for_update().get_or_create(candlepin_id=candlepin_id)
    if pool.deleted_at is not None:
        return None
    if data:
        pool.quantity = int(data.get("quantity", pool.quantity))
        pool.product_name = data.get("productName", pool.product_name)
        pool.subscription = Subscription.objects.filter(name=data.get("subscriptionName")).first() or pool.subscription
        pool.save()
    return pool


@transaction.atomic
def import_pool(message: CandlepinMessage) -> None:
    _live_pool(message.body["entityId"], message.event_data or {})


@transaction.atomic
def remove_pool(message: CandlepinMessage) -> None:
    pool, _ = Pool.objects.select_for_update().get_or_create(candlepin_id=message.body["entityId"])
    pool.hosts.clear()
    if pool.deleted_at is None:  # deleting twice is harmless
        pool.deleted_at = timezone.now()
        pool.save(update_fields=["deleted_at"])


@transaction.atomic
def attach_pool(message: CandlepinMessage) -> None:
    pool = _live_pool(message.body["referenceId"])
    if pool is not None:
        _host(message).pools.add(pool)


@transaction.atomic
def detach_pool(message: CandlepinMessage) -> None:
    pool = Pool.objects.filter(candlepin_id=message.body["referenceId"]).first()
    host = Host.objects.filter(consumer_uuid=message.body.get("consumerUuid")).first()
    if pool is not None and host is not None:
        host.pools.remove(pool)


def update_subscription_status(message: CandlepinMessage) -> None:
    data = message.event_data or {}
    host = _host(message)
    host.subscription_status = str(data.get("status", "unknown")).lower()
    host.subscription_reasons = [_reason_text(reason) for reason in data.get("reasons", [])]
    host.save(update_fields=["subscription_status", "subscription_reasons"])


def update_purpose_status(message: CandlepinMessage) -> None:
    data = message.event_data or {}
    host = _host(message)
    host.purpose_status = str(data.get("status", "unknown")).lower()
    for attribute, key in (("role", "Role"), ("usage", "Usage"), ("sla", "SLA"), ("addons", "AddOns")):
        setattr(host, f"purpose_{attribute}_status", _purpose_status(data, key))
    host.save(update_fields=["purpose_status", *(f"purpose_{a}_status" for a in ("role", "usage", "sla", "addons"))])


def _reason_text(reason: object) -> str:
    return str(reason.get("message", reason)) if isinstance(reason, dict) else str(reason)


def _purpose_status(data: dict, key: str) -> str:
    if data.get(f"nonCompliant{key}"):
        return "mismatched"
    return "matched" if data.get(f"compliant{key}") else "not specified"


#: Subject -> handler: every Candlepin message this application acts on.
HANDLERS = {
    "pool.created": import_pool,
    "pool.deleted": remove_pool,
    "entitlement.created": attach_pool,
    "entitlement.deleted": detach_pool,
    "compliance.created": update_subscription_status,
    "system_purpose_compliance.created": update_purpose_status,
}


def register() -> None:
    """Register :data:`HANDLERS` (explicit rather than by decorator, so a test suite that
    registers handlers of its own for these subjects can leave them out)."""
    for subject, function in HANDLERS.items():
        message_handlers.register(subject, function)
