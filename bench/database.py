"""The benchmarks' own PostgreSQL database: dropped and made afresh before a run."""

from __future__ import annotations

from katello_events import pgdriver


def recreate(name: str) -> None:
    """Drop the database ``name`` (closing its sessions) and create it empty."""
    admin = pgdriver.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{name}"')
    admin.close()
