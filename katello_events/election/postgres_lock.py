"""Election by a PostgreSQL session-level advisory lock: one runner among every host of a database.

Facts this module is built on:

- ``pg_try_advisory_lock(key)`` never waits. The lock belongs to the *session* (the server
  backend) and lives until it is unlocked or the session ends, whichever way it ends: the client
  closed it, the client process or host died and TCP said so, or ``pg_terminate_backend()``.
- So the lock connection is ours alone: a plain driver connection in autocommit
  (``katello_events.pgdriver``: psycopg 3 or psycopg2), opened after fork in the process that
  competes, never handed to Django (``CONN_MAX_AGE``, request signals and connection pools would
  close or share it, and a session shared through a transaction-pooling proxy such as PgBouncer
  is not a session at all: see docs/deployment.md).
- A dead *client host* is noticed by the *server*, through the session's server-side TCP
  keepalives (``tcp_keepalives_*``, ``tcp_user_timeout``: per-session settings). A lost server or
  a partition is noticed by the *client*, through libpq's keepalives and ``tcp_user_timeout``.
  The server side is set to give up later than the client side plus the time the runner needs
  to stop its handlers, so a cut-off runner has fenced itself before the server frees the lock
  (see :func:`server_keepalives` and "The life of the lock" in docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import weakref
from typing import Any

from katello_events import pgdriver
from katello_events.libpq import libpq_params

#: The namespace mixed into derived keys, so our key does not collide with other users' locks.
KEY_NAMESPACE = "katello_events.runner"

#: Client side (libpq): a silent server or a partition fails the connection within about
#: CLIENT_TIMEOUT seconds, whether the connection is idle (keepalives) or waiting for an ack of a
#: query it sent (tcp_user_timeout).
CLIENT_TIMEOUT = 5
CLIENT_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 2, "keepalives_interval": 1, "keepalives_count": 3}
#: Seconds to wait for the connection to be established.
CONNECT_TIMEOUT = 5
#: Milliseconds any statement on the lock connection may take (the fencing query is tiny).
STATEMENT_TIMEOUT_MS = 2000
#: Server side: probes every SERVER_PROBE_INTERVAL s, SERVER_PROBE_COUNT of them, after an idle time.
SERVER_PROBE_INTERVAL = 2
SERVER_PROBE_COUNT = 3

_HELD_QUERY = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    " AND granted AND classid = %s AND objid = %s AND objsubid = 1)"
)

#: Connections inherited across fork. Never closed in the child: closing sends a Terminate
#: message on the shared socket and would end the parent's session, and with it its lock. Kept
#: referenced for the child's whole life, because psycopg2 also closes a connection when it is
#: garbage-collected (psycopg 3 does not do that in a child, but holding it costs nothing).
_inherited: list[Any] = []
_elections: weakref.WeakSet[PostgresLockElection] = weakref.WeakSet()


def derive_key(lock_key: int | str | None, database_name: str) -> int:
    """The signed 64-bit advisory lock key: ``lock_key`` itself when it is an int, else a hash.

    ``None`` derives the key from the database name, so every project on one PostgreSQL server
    elects its own runner while every candidate of one project competes for the same key.
    """
    if isinstance(lock_key, int) and not isinstance(lock_key, bool):
        return lock_key
    text = f"{KEY_NAMESPACE}|{database_name if lock_key is None else lock_key}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


def server_keepalives(heartbeat_interval: float, stop_timeout: float) -> dict[str, int]:
    """Server-side TCP settings of the lock session (seconds, ``tcp_user_timeout`` in ms).

    A runner cut off from the server learns it within ``heartbeat_interval + CLIENT_TIMEOUT``
    (its next fencing query fails) and then stops its handlers within ``stop_timeout``. The server
    must hold the lock at least that long after the last packet, plus a margin of two seconds.
    """
    fenced_within = heartbeat_interval + CLIENT_TIMEOUT + stop_timeout + 2
    idle = max(1, math.ceil(fenced_within - SERVER_PROBE_INTERVAL * SERVER_PROBE_COUNT))
    release_after = idle + SERVER_PROBE_INTERVAL * SERVER_PROBE_COUNT
    return {
        "tcp_keepalives_idle": idle,
        "tcp_keepalives_interval": SERVER_PROBE_INTERVAL,
        "tcp_keepalives_count": SERVER_PROBE_COUNT,
        "tcp_user_timeout": release_after * 1000,
    }


def client_params(settings_dict: dict[str, Any], label: str = "lock") -> dict[str, Any]:
    """libpq parameters of the lock connection: the database's, with our timeouts and name."""
    keepalives: dict[str, int] = dict(CLIENT_KEEPALIVES)
    if pgdriver.libpq_version() >= 120000:  # tcp_user_timeout appeared in libpq 12
        keepalives["tcp_user_timeout"] = CLIENT_TIMEOUT * 1000
    params = libpq_params(
        settings_dict,
        application_name=f"katello_events {label} {os.getpid()}",
        keepalives=keepalives,
        force_application_name=True,
    )
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    return params


class _SessionLock:
    """One advisory lock on one dedicated connection (its session). Errors close the connection."""

    def __init__(self, settings_dict: dict[str, Any], key: int, label: str, server_settings: dict[str, int]) -> None:
        self.settings_dict = settings_dict
        self.key = key
        self.label = label
        self.server_settings = server_settings
        self.connection: Any = None
        self.held = False

    def try_lock(self) -> bool:
        try:
            with self._connect().cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
                self.held = bool(cursor.fetchone()[0])
        except Exception:
            self.close()
            raise
        return self.held

    def holds(self) -> bool:
        """Asks the server (pg_locks, our own backend); any error means "not held"."""
        if not self.held or self.connection is None or self.connection.closed:
            return False
        try:
            with self.connection.cursor() as cursor:
                cursor.execute(_HELD_QUERY, _lock_ids(self.key))
                return bool(cursor.fetchone()[0])
        except Exception:  # noqa: BLE001 - any error means "not held": the runner steps down
            return False

    def release(self) -> None:
        if self.held and self.connection is not None and not self.connection.closed:
            try:
                with self.connection.cursor() as cursor:
                    # Unlock explicitly so the next candidate can win at once, without waiting
                    # for the server to notice the closed connection.
                    cursor.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            except Exception:  # noqa: BLE001, S110 - closing the session below releases it anyway
                pass
        self.close()

    def close(self) -> None:
        self.held = False
        connection, self.connection = self.connection, None
        if connection is not None and not connection.closed:
            with contextlib.suppress(Exception):
                connection.close()

    def _connect(self) -> Any:
        if self.connection is not None and not self.connection.closed:
            return self.connection
        connection = pgdriver.connect(**client_params(self.settings_dict, self.label))
        self.connection = connection
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('statement_timeout', %s, false)", (str(STATEMENT_TIMEOUT_MS),))
            for name, value in self.server_settings.items():
                # tcp_user_timeout needs PostgreSQL 12; Unix sockets ignore all of these.
                with contextlib.suppress(pgdriver.Error):
                    cursor.execute("SELECT set_config(%s, %s, false)", (name, str(value)))
        return connection


class PostgresLockElection:
    """The runner role as two session-level advisory locks, each on a dedicated connection.

    Same contract as :class:`~katello_events.election.FileLockElection`, used from the runner's
    control thread only.

    - The *election* lock (``key``, connection ``katello_events lock <pid>``) decides who leads.
      A candidate keeps that connection open between attempts: one connection per candidate.
    - The *fence* lock (a key derived from ``key``, connection ``katello_events fence <pid>``) is
      taken by the winner before it reports success, and released only with the role, after its
      handlers have ended. If the election session is killed under a live runner
      (``pg_terminate_backend``, an idle-session killer), the next winner of the election lock
      still waits for the fence lock, which the old runner gives up only once its handlers have
      stopped: the two never run side by side. If the fence session itself is ended, nothing
      here can hold the next runner back; the fencing token (``katello_events.fencing``) then
      keeps the old one from committing. When the process dies, both sessions end and failover
      takes one ``STANDBY_INTERVAL``.
    """

    def __init__(
        self,
        settings_dict: dict[str, Any],
        key: int,
        *,
        heartbeat_interval: float = 2.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.settings_dict = settings_dict
        self.key = key
        server = server_keepalives(heartbeat_interval, stop_timeout)
        self._election = _SessionLock(settings_dict, key, "lock", server)
        self._fence = _SessionLock(settings_dict, fence_key(key), "fence", server)
        _elections.add(self)

    def try_acquire(self) -> bool:
        """One non-blocking attempt; True when this process holds both locks.

        Raises on connection errors (the runner logs them once and retries later).
        """
        if not self._election.held and not self._election.try_lock():
            return False
        try:
            if not self._fence.held and not self._fence.try_lock():
                # A previous runner whose election session was killed has not stopped its
                # handlers yet: keep the election lock (no one else can win) and try again.
                return False
        except Exception:
            # No fence connection (say, max_connections reached): let another candidate try.
            self._election.release()
            raise
        return self.still_held()

    def still_held(self) -> bool:
        """Fencing: True only if both connections are alive and their sessions still hold the locks."""
        held = self._election.holds() and self._fence.holds()
        if not held:
            # The fence lock is kept: the runner releases it after its handlers have stopped.
            self._election.close()
        return held

    def release(self) -> None:
        """Give the role up (idempotent): the fence lock first, then the election lock."""
        self._fence.release()
        self._election.release()

    def describe(self) -> str:
        """Where the lock is, for logs (no password)."""
        db = self.settings_dict
        where = f"{db.get('HOST') or 'local socket'}:{db.get('PORT') or 5432}/{db.get('NAME')}"
        return f"PostgreSQL advisory lock {self.key} on {where}"

    def _sessions(self) -> list[_SessionLock]:
        return [self._election, self._fence]


def fence_key(key: int) -> int:
    """The fence lock's key, derived from the election key."""
    return derive_key(f"fence|{key}", "")


def _lock_ids(key: int) -> tuple[int, int]:
    """pg_locks shows a bigint advisory key as two unsigned 32-bit oids (high, low)."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


def _orphan_connections_after_fork() -> None:
    for election in list(_elections):
        for session in election._sessions():
            if session.connection is not None:
                _inherited.append(session.connection)
            session.connection, session.held = None, False


os.register_at_fork(after_in_child=_orphan_connections_after_fork)
