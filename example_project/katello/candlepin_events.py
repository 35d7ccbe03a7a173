"""Handlers of Candlepin's event messages, registered by events.py at start-up (see register()).

Each reads only what Candlepin really sends (Candlepin 2.x to 4.x; the shapes are in
``tests/fixtures/candlepin_messages/``, their sources in its README):

- ``pool.created``: the pool's id (``entityId``), its product's name (``targetName``), its owner
  (``ownerId``) and ``eventData`` ``{"subscriptionId": ...}``; the rest (quantity, consumed) is
  asked of Candlepin's API through ``katello.candlepin_api``, never invented;
- ``pool.deleted``: ``entityId``;
- ``entitlement.created`` / ``.deleted``: the pool (``referenceId``) and the host
  (``consumerUuid``); the pool is refreshed from the API (its consumed count changed), as Katello
  did, through an ``import_pool`` event that coalesces per pool;
- ``compliance.created``: ``eventData`` ``{"status", "reasons": [{"productName", "message"}]}``;
- ``system_purpose_compliance.created``: ``eventData`` ``{"status", "compliantRole",
  "nonCompliantRole", ...}``;
- ``owner_content_access_mode.modified``: the owner (``ownerId``, ``targetName``) and
  ``eventData`` ``{"contentAccessMode": ...}``.

A message about a host (or an organization) this application does not have is skipped, as
Katello skipped it: it is retried for ``KATELLO_UNKNOWN_CONSUMER_GRACE`` seconds after Candlepin
sent it (the host's registration may not have committed yet; ``RetryLater``, not a failure), then
:class:`katello_events.SkipMessage`: counted ``skipped``, logged at DEBUG, never failed nor dead.

Idempotent and order-tolerant: a message may arrive twice (at-least-once delivery) or late
(a failed message is retried through the event queue while newer ones go ahead).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, NoReturn

from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

import katello_events
from katello.candlepin_api import candlepin_api
from katello.models import Host, Organization, Pool, Subscription
from katello_events import CandlepinMessage, MalformedMessage, RetryLater, SkipMessage, message_handler

#: Seconds the grace gives by default (the example project's settings set it too).
DEFAULT_GRACE = 10.0
#: Most seconds between two tries of a message about an unknown host, within the grace.
GRACE_RETRY_INTERVAL = 2.0
#: The event that refreshes a pool from Candlepin's API (Katello's ``import_pool`` event).
IMPORT_POOL = "import_pool"


# -- what is not known here: a short grace, then skipped -------------------------------------


def unknown(message: CandlepinMessage, what: str) -> NoReturn:
    """Give up on ``message``, about something this application does not have (``what``).

    Within the grace (``KATELLO_UNKNOWN_CONSUMER_GRACE`` seconds since Candlepin sent it) it is
    tried again a little later: a host's registration may commit after Candlepin's first
    messages about it. After the grace, or with no usable send time, it is skipped. A send time
    ahead of our clock by more than the grace is not trusted (the message is skipped), so a
    clock that is off never makes a message wait for more than twice the grace.
    """
    grace = float(getattr(settings, "KATELLO_UNKNOWN_CONSUMER_GRACE", DEFAULT_GRACE))
    age = message_age(message)
    if grace > 0 and age is not None and -grace <= age < grace:
        delay = min(GRACE_RETRY_INTERVAL, max(grace - age, 0.1))
        raise RetryLater(delay, reason=f"{what}; trying again within the grace ({age:.1f}s of {grace:g}s)")
    raise SkipMessage(what)


def message_age(message: CandlepinMessage, now: float | None = None) -> float | None:
    """Seconds since Candlepin sent ``message`` (negative when its clock is ahead); None: unknown."""
    sent = sent_at(message)
    return None if sent is None else (time.time() if now is None else now) - sent


def sent_at(message: CandlepinMessage) -> float | None:
    """When Candlepin made the message, in epoch seconds: the body's ``timestamp`` (epoch
    milliseconds, or an ISO 8601 date), else the broker's ``timestamp`` header (Artemis: epoch
    milliseconds); None when neither is readable."""
    for value in (message.body.get("timestamp"), message.headers.get("timestamp")):
        seconds = _epoch_seconds(value)
        if seconds is not None:
            return seconds
    return None


def _epoch_seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value / 1000.0 if value > 0 else None
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return int(text) / 1000.0
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _host(message: CandlepinMessage) -> Host:
    """The host the message is about (``consumerUuid``); unknown ones: grace, then skipped."""
    uuid = message.body.get("consumerUuid")
    if not isinstance(uuid, str) or not uuid:
        raise SkipMessage("no consumerUuid: about no host")
    host = Host.objects.filter(consumer_uuid=uuid).first()
    if host is None:
        unknown(message, f"no host with consumer uuid {uuid!r}")
    return host


def _owner(message: CandlepinMessage) -> Organization | None:
    """The organization of the message's owner: by Candlepin's owner id (``ownerId``, and
    ``entityId`` for owner events), else by its key (``targetName`` of owner events)."""
    ids = [
        value
        for value in (message.body.get("ownerId"), message.body.get("entityId"))
        if isinstance(value, str) and value
    ]
    organization = Organization.objects.filter(candlepin_id__in=ids).first() if ids else None
    if organization is not None:
        return organization
    key = message.body.get("targetName")
    return Organization.objects.filter(label=key).first() if isinstance(key, str) and key else None


def _event_data(message: CandlepinMessage) -> dict[str, Any]:
    data = message.event_data
    return data if isinstance(data, dict) else {}


# -- pools ---------------------------------------------------------------------------------


# Locks on a pool row, so that the event queue's threads never deadlock on the one pool that
# thousands of entitlements name: linking a host takes only the foreign key's KEY SHARE lock
# (links run side by side), unlinking takes the same lock first (_hold), updating a pool's
# figures FOR NO KEY UPDATE (compatible with it), and only pool.deleted takes FOR UPDATE, which
# waits for the links and unlinks in progress and makes new ones wait for it (they then see the
# pool deleted and undo themselves). Without _hold, an unlink held a link row of the pool while
# pool.deleted held the pool and waited for that row; a later link in the unlinking thread's
# batch then waited for the pool: a deadlock.


def _live_pool(candlepin_id: str, *, lock: bool = False) -> Pool | None:
    """The pool, created when new (locked FOR NO KEY UPDATE with ``lock``); None when Candlepin
    deleted it."""
    pools = Pool.objects.select_for_update(no_key=True) if lock else Pool.objects
    pool, _ = pools.get_or_create(candlepin_id=candlepin_id)
    return None if pool.deleted_at is not None else pool


def _hold(pool: Pool) -> None:
    """FOR KEY SHARE on the pool, as a link's foreign key takes it: before an unlink touches a
    link row, so that it never holds one while waiting for the pool (PostgreSQL only)."""
    connection = connections[Pool.objects.db]
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT 1 FROM {Pool._meta.db_table} WHERE id = %s FOR KEY SHARE", [pool.pk])  # noqa: S608


def _apply_api(pool: Pool) -> None:
    """What only Candlepin's API knows of ``pool`` (the seam: ``katello.candlepin_api``)."""
    facts = candlepin_api().pool(pool.candlepin_id)
    if facts is None:  # not told (the example's stand-in), or gone: what we have stays
        return
    if facts.quantity is not None:
        pool.quantity = facts.quantity
    if facts.consumed is not None:
        pool.consumed = facts.consumed


def refresh_pool(candlepin_id: str) -> None:
    """The ``import_pool`` event: the pool's figures read again from Candlepin's API."""
    with transaction.atomic():
        pools = Pool.objects.select_for_update(no_key=True)
        pool = pools.filter(candlepin_id=candlepin_id, deleted_at__isnull=True).first()
        if pool is not None:
            _apply_api(pool)
            pool.save()


def _refresh_later(pool: Pool) -> None:
    """Katello's ``import_pool`` event: many entitlements of one pool, one refresh (coalesced)."""
    katello_events.push_event(IMPORT_POOL, pool.candlepin_id)


@transaction.atomic
def import_pool(message: CandlepinMessage) -> None:
    """``pool.created``: what the message carries, and the rest from Candlepin's API."""
    pool = _live_pool(message.body["entityId"], lock=True)
    if pool is None:
        return
    name = message.body.get("targetName")
    if isinstance(name, str) and name:
        pool.product_name = name
    subscription_id = _event_data(message).get("subscriptionId")
    if isinstance(subscription_id, str) and subscription_id:
        pool.candlepin_subscription_id = subscription_id
        pool.subscription = Subscription.objects.filter(candlepin_id=subscription_id).first() or pool.subscription
    pool.organization = _owner(message) or pool.organization
    _apply_api(pool)
    pool.save()


@transaction.atomic
def remove_pool(message: CandlepinMessage) -> None:
    """``pool.deleted``: FOR UPDATE, so links in progress finish first and later ones see it."""
    pool, _ = Pool.objects.select_for_update().get_or_create(candlepin_id=message.body["entityId"])
    pool.hosts.clear()
    if pool.deleted_at is None:  # deleting twice is harmless
        pool.deleted_at = timezone.now()
        pool.save(update_fields=["deleted_at"])


def attach_pool(message: CandlepinMessage) -> None:
    """``entitlement.created``: the pool (imported when new) refreshed, and linked to the host."""
    with transaction.atomic():
        pool = _live_pool(message.body["referenceId"])
        if pool is not None:
            _refresh_later(pool)
    host = _host(message)  # an unknown host: the pool's refresh is kept, the link skipped
    if pool is not None:
        host.pools.add(pool)  # waits for a pool.deleted in progress (its FOR UPDATE)...
        if Pool.objects.filter(pk=pool.pk, deleted_at__isnull=False).exists():
            host.pools.remove(pool)  # ...which then has the last word: never linked to a deleted pool
            # (no _hold needed: the insert above took the pool's KEY SHARE lock already)


def detach_pool(message: CandlepinMessage) -> None:
    """``entitlement.deleted``: the pool refreshed, as Katello did (its consumed count changed),
    and unlinked from the host."""
    pool = Pool.objects.filter(candlepin_id=message.body["referenceId"]).first()
    if pool is not None and pool.deleted_at is None:
        _refresh_later(pool)
    host = _host(message)
    if pool is not None:
        with transaction.atomic():
            _hold(pool)
            host.pools.remove(pool)


# -- statuses ------------------------------------------------------------------------------


def update_subscription_status(message: CandlepinMessage) -> None:
    """``compliance.created``: the host's subscription status and its reasons."""
    data = _event_data(message)
    host = _host(message)
    host.subscription_status = str(data.get("status") or "unknown").lower()
    host.subscription_reasons = [_reason_text(reason) for reason in data.get("reasons") or []]
    host.save(update_fields=["subscription_status", "subscription_reasons"])


def update_purpose_status(message: CandlepinMessage) -> None:
    """``system_purpose_compliance.created``: the host's system purpose statuses."""
    data = _event_data(message)
    host = _host(message)
    host.purpose_status = str(data.get("status") or "unknown").lower()
    for attribute, key in (("role", "Role"), ("usage", "Usage"), ("sla", "SLA"), ("addons", "AddOns")):
        setattr(host, f"purpose_{attribute}_status", _purpose_status(data, key))
    host.save(update_fields=["purpose_status", *(f"purpose_{a}_status" for a in ("role", "usage", "sla", "addons"))])


def _reason_text(reason: object) -> str:
    """Katello's wording of a reason: ``"<product>: <message>"``. Candlepin's message names the
    product as ``productName``; its API as ``attributes.name``."""
    if not isinstance(reason, dict):
        return str(reason)
    attributes = reason.get("attributes")
    product = reason.get("productName") or (attributes.get("name") if isinstance(attributes, dict) else None)
    text = str(reason.get("message") or "")
    return f"{product}: {text}" if product else text


def _purpose_status(data: dict, key: str) -> str:
    """Katello's rule: a non-compliant value means mismatched, a compliant one matched."""
    if data.get(f"nonCompliant{key}"):
        return "mismatched"
    return "matched" if data.get(f"compliant{key}") else "not specified"


# -- organizations ---------------------------------------------------------------------------


def update_content_access_mode(message: CandlepinMessage) -> None:
    """``owner_content_access_mode.modified``: the organization's content access mode."""
    mode = _event_data(message).get("contentAccessMode")
    if not isinstance(mode, str) or not mode.strip():
        raise MalformedMessage("owner_content_access_mode.modified without eventData.contentAccessMode")
    organization = _owner(message)
    if organization is None:
        unknown(
            message, f"no organization for owner {message.body.get('ownerId')!r} ({message.body.get('targetName')!r})"
        )
    Organization.objects.filter(pk=organization.pk).update(content_access_mode=mode.strip())


#: Subject -> handler: every Candlepin message this application acts on.
HANDLERS = {
    "pool.created": import_pool,
    "pool.deleted": remove_pool,
    "entitlement.created": attach_pool,
    "entitlement.deleted": detach_pool,
    "compliance.created": update_subscription_status,
    "system_purpose_compliance.created": update_purpose_status,
    "owner_content_access_mode.modified": update_content_access_mode,
}


def _consumer(message: CandlepinMessage) -> object:
    return message.body.get("consumerUuid")


def _entity(message: CandlepinMessage) -> object:
    return message.body.get("entityId")


def _owner_id(message: CandlepinMessage) -> object:
    return message.body.get("ownerId") or message.body.get("entityId")


#: Subject -> what its messages coalesce by in the listener's inbox (see docs/candlepin.md,
#: "Coalescing keys"). A status or a state: only the newest message about the thing matters.
#: entitlement.* are left out on purpose: each is a change (a pool attached to or detached from
#: a host), and every change must run.
COALESCE_BY = {
    "pool.created": _entity,  # the pool's id: its newest data is what to import
    "pool.deleted": _entity,  # the pool's id: deleting it twice is deleting it once
    "compliance.created": _consumer,  # the host: its newest subscription status replaces the others
    "system_purpose_compliance.created": _consumer,  # the host: likewise its system purpose status
    "owner_content_access_mode.modified": _owner_id,  # the organization: its newest mode is its mode
}


def register() -> None:
    """Register :data:`HANDLERS` with :data:`COALESCE_BY` (explicit rather than by decorator, so
    a test suite that registers handlers of its own for these subjects can leave them out)."""
    for subject, function in HANDLERS.items():
        message_handler(subject, coalesce_by=COALESCE_BY.get(subject))(function)
