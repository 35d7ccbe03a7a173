"""PostgreSQL LISTEN/NOTIFY wake-ups for the event queue consumer.

A dedicated psycopg2 connection in autocommit, outside Django's connection handling (so
``CONN_MAX_AGE``, request signals and pooling never touch it), waited on with ``select()``.
"""

from __future__ import annotations

import select
from typing import Any

import psycopg2
from psycopg2 import sql

from katello_events.libpq import libpq_params

__all__ = ["NotifyListener", "libpq_params"]  # libpq_params moved to katello_events.libpq


class NotifyListener:
    """LISTENs on ``channel``; :meth:`wait` returns True when a notification arrived."""

    def __init__(self, settings_dict: dict[str, Any], channel: str) -> None:
        self._connection = psycopg2.connect(**libpq_params(settings_dict))
        self._connection.autocommit = True
        with self._connection.cursor() as cursor:
            cursor.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True when notified (raises if the connection died)."""
        self._connection.poll()
        if self._drain():
            return True
        readable, _, _ = select.select([self._connection], [], [], timeout)
        if not readable:
            return False
        self._connection.poll()
        return self._drain()

    def _drain(self) -> bool:
        notified = bool(self._connection.notifies)
        self._connection.notifies.clear()
        return notified

    def close(self) -> None:
        if not self._connection.closed:
            self._connection.close()
