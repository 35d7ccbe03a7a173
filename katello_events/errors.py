"""Errors in one line: what the logs, the status rows and the ping say of an exception."""

from __future__ import annotations


def describe_error(error: str | BaseException) -> str:
    """One line for an error: ``"OperationalError: connection refused"``."""
    if isinstance(error, BaseException):
        text = str(error).strip().splitlines()
        return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    return error


#: What every surface says of a database whose tables are missing, and what to do about it.
NOT_MIGRATED = "not migrated: run manage.py migrate"


def is_missing_table(error: BaseException) -> bool:
    """Whether a database error says a table does not exist (PostgreSQL 42P01, SQLite's text)."""
    for exc in (error, error.__cause__):
        if exc is None:
            continue
        code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        if code == "42P01" or "no such table" in str(exc):
            return True
    return False
