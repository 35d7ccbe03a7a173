"""The seam to Candlepin's REST API: what a message does not carry is fetched here, never guessed.

Candlepin's messages say *that* something changed and name it: ``pool.created`` carries the pool's
id (``entityId``), its product's name (``targetName``), its owner (``ownerId``) and, in
``eventData``, only ``{"subscriptionId": ...}``. Katello then read the rest from Candlepin's API
(``GET /candlepin/pools/<id>``: quantity, consumed, dates...), in ``Katello::Pool.import_pool``.

The example project has no Candlepin to ask. Its default, :class:`NoCandlepinApi`, knows nothing,
so pools keep what the messages carry and the figures only the API knows stay None (unknown).
A real project points the ``KATELLO_CANDLEPIN_API`` setting at a class of its own that implements
:class:`CandlepinApi` with HTTP calls to its Candlepin (client certificate, timeouts, and
``None`` for a 404: the pool is gone).

The handlers call it from the event queue's threads (the listener's with ``INBOX: False``), inside
their transaction: keep calls short (a timeout of a few seconds), and raise on failure, which
retries the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from django.conf import settings
from django.utils.module_loading import import_string

#: The setting naming the class (dotted path) that answers for Candlepin.
SETTING = "KATELLO_CANDLEPIN_API"
DEFAULT = "katello.candlepin_api.NoCandlepinApi"


@dataclass(frozen=True)
class PoolFacts:
    """What Candlepin's API says of a pool, beyond its messages; None: not told."""

    quantity: int | None = None
    consumed: int | None = None


class CandlepinApi(Protocol):
    """What the example's handlers ask Candlepin."""

    def pool(self, pool_id: str) -> PoolFacts | None:
        """The pool as Candlepin knows it now; None when it does not (deleted, or unknown)."""
        ...


class NoCandlepinApi:
    """The example's stand-in: no Candlepin to ask, so nothing is known beyond the messages."""

    def pool(self, pool_id: str) -> PoolFacts | None:
        return None


def candlepin_api() -> CandlepinApi:
    """The API named by ``KATELLO_CANDLEPIN_API`` (default :class:`NoCandlepinApi`), a new instance."""
    return import_string(getattr(settings, SETTING, DEFAULT))()
