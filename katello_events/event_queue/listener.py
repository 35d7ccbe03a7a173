"""PostgreSQL LISTEN/NOTIFY wake-ups for the event queue consumer.

A dedicated autocommit connection (``katello_events.pgdriver``: psycopg 3 or psycopg2), outside
Django's connection handling (so ``CONN_MAX_AGE``, request signals and pooling never touch it),
waited on with ``select()``.
"""

from __future__ import annotations

import select
from typing import Any

from katello_events.libpq import libpq_params
from katello_events.pgdriver import NotifyConnection

__all__ = ["NotifyListener", "libpq_params"]  # libpq_params moved to katello_events.libpq


class NotifyListener:
    """LISTENs on ``channel``; :meth:`wait` returns True when a notification arrived."""

    def __init__(self, settings_dict: dict[str, Any], channel: str) -> None:
        self._connection = NotifyConnection(libpq_params(settings_dict), channel)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True when notified (raises if the connection died)."""
        # Everything already received counts: several notifications make one wake-up.
        if self._connection.take():
            return True
        readable, _, _ = select.select([self._connection], [], [], timeout)
        if not readable:
            return False
        return bool(self._connection.take())

    def close(self) -> None:
        self._connection.close()
