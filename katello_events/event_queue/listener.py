"""PostgreSQL LISTEN/NOTIFY wake-ups for the event queue consumer.

A dedicated psycopg2 connection in autocommit, outside Django's connection handling (so
``CONN_MAX_AGE``, request signals and pooling never touch it), waited on with ``select()``.
"""

from __future__ import annotations

import select
from typing import Any

import psycopg2
from psycopg2 import sql

#: Django OPTIONS that are not libpq connection parameters.
_NOT_LIBPQ = {"isolation_level", "server_side_binding", "pool", "assume_role", "cursor_factory", "context"}

#: Dead peers are noticed within about a minute even when no packet says so.
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def libpq_params(settings_dict: dict[str, Any]) -> dict[str, Any]:
    """psycopg2.connect() arguments for a Django database settings dict."""
    params: dict[str, Any] = {
        "dbname": settings_dict.get("NAME") or "postgres",
        "user": settings_dict.get("USER"),
        "password": settings_dict.get("PASSWORD"),
        "host": settings_dict.get("HOST"),
        "port": settings_dict.get("PORT"),
        **_KEEPALIVES,
    }
    params.update({k: v for k, v in (settings_dict.get("OPTIONS") or {}).items() if k not in _NOT_LIBPQ})
    params.setdefault("application_name", "katello_events listener")
    return {k: v for k, v in params.items() if v not in (None, "")}


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
