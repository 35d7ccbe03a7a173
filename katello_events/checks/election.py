"""System checks of the election settings (LOCK_BACKEND, LOCK_FILE, LOCK_KEY, LOCK_DATABASE, the watchdog)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from katello_events.election.lock_path import path_problem
from katello_events.links import docs_url


def check_election(config: Mapping[str, Any]) -> list[CheckMessage]:
    backend = config.get("LOCK_BACKEND")
    if backend == "file":
        return check_lock_file(config["LOCK_FILE"])
    if backend != "postgres":
        return [
            Error(
                f"KATELLO_EVENTS['LOCK_BACKEND'] must be 'file' or 'postgres', not {backend!r}.",
                hint="'file': one runner per host; 'postgres': one runner per database, across hosts.",
                id="katello_events.E008",
            )
        ]
    messages = check_lock_key(config.get("LOCK_KEY"))
    alias = config.get("LOCK_DATABASE")
    database = settings.DATABASES.get(alias) if isinstance(alias, str) else None
    if database is None or "postgresql" not in str(database.get("ENGINE", "")):
        messages.append(
            Error(
                f"KATELLO_EVENTS['LOCK_DATABASE'] {alias!r} is not a PostgreSQL database of DATABASES.",
                hint="With LOCK_BACKEND 'postgres', name a DATABASES alias using "
                "django.db.backends.postgresql (default: 'default').",
                id="katello_events.E009",
            )
        )
    elif database.get("DISABLE_SERVER_SIDE_CURSORS"):
        messages.append(
            Warning(
                f"The lock database {alias!r} has DISABLE_SERVER_SIDE_CURSORS set, the usual sign of a "
                "transaction-pooling proxy such as PgBouncer.",
                hint="A session-level advisory lock does not survive transaction pooling. Point "
                "LOCK_DATABASE at an alias that reaches PostgreSQL directly or through a session pool; "
                f"see {docs_url('deployment', 'not-through-a-transaction-pooling-proxy-pgbouncer')}",
                id="katello_events.W003",
            )
        )
    return messages


def check_lock_key(key: Any) -> list[CheckMessage]:
    if key is None or (isinstance(key, str) and key):
        return []
    if isinstance(key, int) and not isinstance(key, bool) and -(2**63) <= key < 2**63:
        return []
    return [
        Error(
            f"KATELLO_EVENTS['LOCK_KEY'] must be None, a signed 64-bit int or a non-empty str, not {key!r}.",
            hint="Leave it None to derive the key from the lock database's name.",
            id="katello_events.E010",
        )
    ]


def check_watchdog(config: Mapping[str, Any]) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    limit = config.get("MAX_RSS_MB")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        messages.append(
            Error(
                f"KATELLO_EVENTS['MAX_RSS_MB'] must be None or a positive number of megabytes, not {limit!r}.",
                hint="None turns the memory watchdog off; otherwise give the runner's RSS limit in MB.",
                id="katello_events.E011",
            )
        )
    if not isinstance(config.get("RECYCLE_ON_HANDOVER"), bool):
        messages.append(
            Error(
                "KATELLO_EVENTS['RECYCLE_ON_HANDOVER'] must be True or False.",
                hint="True asks the server to recycle the process after a memory handover.",
                id="katello_events.E012",
            )
        )
    return messages


def check_lock_file(path: str) -> list[CheckMessage]:
    # Never open the file here: in the runner process, closing any descriptor of the lock
    # file would release the lock. The election asks the same question at every attempt and
    # says the answer in the status rows; this check says it before any server starts.
    problem = path_problem(path)
    if problem is None:
        return []
    return [
        Error(
            f"The election lock file {path!r} cannot be used: {problem}.",
            hint="Set KATELLO_EVENTS['LOCK_FILE'] to a path in a folder owned by the server's user and "
            "writable by nobody else (the default, a per-user runtime folder, is), or fix the owner and mode.",
            id="katello_events.E003",
        )
    ]
