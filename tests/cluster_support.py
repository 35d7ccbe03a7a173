"""Helpers for the PostgreSQL election tests: who holds the advisory lock, seen from the server."""

from __future__ import annotations

from katello_events import pgdriver
from katello_events.election.postgres_lock import _lock_ids, derive_key, fence_key

_HOLDERS = """
SELECT a.application_name, a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def admin_connection(database_name: str):
    """An autocommit connection as postgres, on whichever driver is installed."""
    return pgdriver.connect(host="127.0.0.1", user="postgres", dbname=database_name)


def lock_key(database_name: str) -> int:
    """The key every candidate derives by default (LOCK_KEY None)."""
    return derive_key(None, database_name)


def holders(admin, key: int) -> dict[int, int]:
    """Client pid -> server backend pid of every session holding advisory lock ``key``."""
    with admin.cursor() as cursor:
        cursor.execute(_HOLDERS, _lock_ids(key))
        rows = cursor.fetchall()
    return {int(name.rsplit(" ", 1)[1]): backend for name, backend in rows if name.startswith("katello_events ")}


def election_holders(admin, database_name: str) -> set[int]:
    return set(holders(admin, lock_key(database_name)))


def fence_holders(admin, database_name: str) -> set[int]:
    return set(holders(admin, fence_key(lock_key(database_name))))


def terminate(admin, backend_pid: int) -> bool:
    with admin.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", (backend_pid,))
        return bool(cursor.fetchone()[0])
