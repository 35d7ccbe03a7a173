"""The one module that knows which PostgreSQL driver is installed: psycopg 3 or psycopg2.

Every connection we open ourselves (the event queue's LISTEN connection, the election's lock
connections) goes through here, and so does telling a driver error from any other error. The
driver is the one Django's PostgreSQL backend uses: psycopg 3 when it can be imported, else
psycopg2, so our connections and Django's speak through the same library. Both share the DB-API
surface used elsewhere (``cursor()`` as a context manager, ``%s`` parameters, ``fetchone()``,
``autocommit``, ``closed``, ``close()``, ``fileno()``); what differs is handled here.
Imports nothing else from the package.
"""

from __future__ import annotations

import functools
import importlib
import sys
from types import ModuleType
from typing import Any

# ``Error`` too, looked up lazily by the module's __getattr__ (so not listed here).
__all__ = ["NotifyConnection", "connect", "describe", "is_driver_error", "libpq_version", "name"]

#: Import names of the drivers, in the order Django's backend tries them.
PSYCOPG3 = "psycopg"
PSYCOPG2 = "psycopg2"


class _NoDriverError(Exception):
    """Stands in for the driver's base error class when no driver is installed; never raised."""


@functools.cache
def _driver() -> ModuleType | None:
    """The driver module Django's PostgreSQL backend uses, or None when neither imports."""
    try:
        # Django decides here (psycopg 3 first); asking it keeps us on the same driver even where
        # psycopg 3 is installed but cannot load (no libpq), and Django falls back to psycopg2.
        from django.db.backends.postgresql.psycopg_any import is_psycopg3
    except ImportError:
        return _first_importable(PSYCOPG3, PSYCOPG2)
    return _first_importable(PSYCOPG3 if is_psycopg3 else PSYCOPG2)


def _first_importable(*names: str) -> ModuleType | None:
    for module_name in names:
        try:
            return importlib.import_module(module_name)
        except ImportError:
            continue
    return None


def _require() -> ModuleType:
    driver = _driver()
    if driver is None:
        raise ImportError(
            "No PostgreSQL driver: install katello_events[psycopg] (psycopg 3) or katello_events[psycopg2]."
        )
    return driver


def name() -> str | None:
    """``"psycopg"`` (psycopg 3), ``"psycopg2"``, or None when neither is installed."""
    driver = _driver()
    return driver.__name__ if driver is not None else None


def describe() -> str:
    """The driver and its version, for banners and logs: ``psycopg 3.2.9`` or ``psycopg2 2.9.10``."""
    driver = _driver()
    if driver is None:
        return "no PostgreSQL driver"
    return f"{driver.__name__} {driver.__version__.split()[0]}"


def libpq_version() -> int:
    """The version of the libpq the driver runs with, as libpq numbers it (``160002`` is 16.2)."""
    driver = _require()
    if driver.__name__ == PSYCOPG3:
        return int(driver.pq.version())
    import psycopg2.extensions

    return int(psycopg2.extensions.libpq_version())


def connect(**params: Any) -> Any:
    """A new autocommit connection, outside Django, from libpq parameters (``dbname``, ``host``...)."""
    driver = _require()
    if driver.__name__ == PSYCOPG3:
        return driver.connect(autocommit=True, **params)
    connection = driver.connect(**params)
    connection.autocommit = True
    return connection


def __getattr__(attribute: str) -> Any:
    # ``Error`` is looked up lazily so that importing this module never imports a driver.
    if attribute == "Error":
        driver = _driver()
        return driver.Error if driver is not None else _NoDriverError
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


def is_driver_error(exc: BaseException) -> bool:
    """True for an error raised by a PostgreSQL driver (either one: both may be loaded)."""
    classes = tuple(
        module.Error
        for module in (sys.modules.get(PSYCOPG3), sys.modules.get(PSYCOPG2))
        if module is not None and hasattr(module, "Error")
    )
    return bool(classes) and isinstance(exc, classes)


class NotifyConnection:
    """A dedicated autocommit connection that LISTENs on one channel.

    Wait for it with ``select()`` (it has a ``fileno()``), then :meth:`take` the notifications
    without blocking. A notification that arrived together with the LISTEN's own answer is kept
    for the first :meth:`take` too.
    """

    def __init__(self, params: dict[str, Any], channel: str) -> None:
        driver = _require()
        self._psycopg3 = driver.__name__ == PSYCOPG3
        self._received: list[str] = []
        self.connection = connect(**params)
        if self._psycopg3:
            # psycopg 3 hands notifications that come with a query's results to its handlers.
            self.connection.add_notify_handler(lambda notify: self._received.append(notify.channel))
        statement = importlib.import_module(f"{driver.__name__}.sql")
        try:
            with self.connection.cursor() as cursor:
                cursor.execute(statement.SQL("LISTEN {}").format(statement.Identifier(channel)))
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        return self.connection.fileno()

    def take(self) -> list[str]:
        """The channels of the notifications received so far (read without blocking), oldest first.

        Raises the driver's error when the connection is broken.
        """
        if self._psycopg3:
            pgconn = self.connection.pgconn
            pgconn.consume_input()
            while (notify := pgconn.notifies()) is not None:
                self._received.append(notify.relname.decode(self.connection.info.encoding))
        else:
            self.connection.poll()
            self._received.extend(notify.channel for notify in self.connection.notifies)
            self.connection.notifies.clear()
        received, self._received = self._received, []
        return received

    @property
    def closed(self) -> bool:
        return bool(self.connection.closed)

    def close(self) -> None:
        if not self.connection.closed:
            self.connection.close()
