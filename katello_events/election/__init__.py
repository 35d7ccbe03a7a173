"""Election: deciding which single process is the runner.

An election object is process-local and used from the runner's control thread only:
``try_acquire()`` never blocks, ``still_held()`` is the fencing check made at every heartbeat,
``release()`` gives the role up, ``describe()`` says where the lock is (for logs). Two backends
(``KATELLO_EVENTS["LOCK_BACKEND"]``): ``"file"``, one runner per host, and ``"postgres"``, one
runner per database whatever the number of hosts. See ``docs/architecture.md`` ("The life of the
lock"). Imports nothing from the package but ``libpq``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from katello_events.election.file_lock import FileLockElection, LockFileError
from katello_events.election.postgres_lock import PostgresLockElection, derive_key

__all__ = ["BACKENDS", "Election", "FileLockElection", "LockFileError", "PostgresLockElection", "make_election"]

BACKENDS = ("file", "postgres")


class Election(Protocol):
    def try_acquire(self) -> bool: ...
    def still_held(self) -> bool: ...
    def release(self) -> None: ...
    def describe(self) -> str: ...


def make_election(config: Mapping[str, Any], databases: dict[str, Any] | None = None) -> Election:
    """The election the configuration asks for (``LOCK_BACKEND``); raises ValueError on an unknown one."""
    backend = config.get("LOCK_BACKEND", "file")
    if backend == "file":
        return FileLockElection(config["LOCK_FILE"])
    if backend == "postgres":
        if databases is None:
            from django.conf import settings

            databases = settings.DATABASES
        settings_dict = databases[config.get("LOCK_DATABASE") or "default"]
        return PostgresLockElection(
            settings_dict,
            derive_key(config.get("LOCK_KEY"), str(settings_dict.get("NAME") or "")),
            heartbeat_interval=config["HEARTBEAT_INTERVAL"],
            stop_timeout=config["STOP_TIMEOUT"],
        )
    raise ValueError(f"unknown KATELLO_EVENTS['LOCK_BACKEND'] {backend!r}; use one of {', '.join(BACKENDS)}")
