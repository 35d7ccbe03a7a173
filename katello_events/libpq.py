"""libpq connection parameters for connections we open ourselves, outside Django's handling.

The event queue's LISTEN connection and the PostgreSQL election's lock connection are plain driver
connections (``katello_events.pgdriver``: psycopg 3 or psycopg2, the same parameters for both):
``CONN_MAX_AGE``, request signals and connection pooling never touch them. They are built from a
Django ``DATABASES`` entry so there is one place to configure the database. Imports nothing else
from the package.
"""

from __future__ import annotations

from typing import Any

#: Django OPTIONS that are not libpq connection parameters (Django's own, or a driver's Python-side
#: options such as psycopg 3's ``prepare_threshold``).
_NOT_LIBPQ = {
    "isolation_level",
    "server_side_binding",
    "pool",
    "assume_role",
    "cursor_factory",
    "context",
    "prepare_threshold",
    "connection_factory",
}

#: Dead peers are noticed within about a minute even when no packet says so.
DEFAULT_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def libpq_params(
    settings_dict: dict[str, Any],
    *,
    application_name: str = "katello_events listener",
    keepalives: dict[str, int] | None = None,
    force_application_name: bool = False,
) -> dict[str, Any]:
    """``pgdriver.connect()`` arguments (libpq parameters) for a Django database settings dict.

    ``keepalives`` replaces :data:`DEFAULT_KEEPALIVES` and wins over the database's OPTIONS;
    ``force_application_name`` also makes ``application_name`` win (operators find the
    connection by that name).
    """
    params: dict[str, Any] = {
        "dbname": settings_dict.get("NAME") or "postgres",
        "user": settings_dict.get("USER"),
        "password": settings_dict.get("PASSWORD"),
        "host": settings_dict.get("HOST"),
        "port": settings_dict.get("PORT"),
        **DEFAULT_KEEPALIVES,
    }
    params.update({k: v for k, v in (settings_dict.get("OPTIONS") or {}).items() if k not in _NOT_LIBPQ})
    if keepalives is not None:
        params.update(keepalives)
    if force_application_name:
        params["application_name"] = application_name
    else:
        params.setdefault("application_name", application_name)
    return {k: v for k, v in params.items() if v not in (None, "")}
