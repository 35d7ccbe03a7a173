"""Clear reasons for failed connections, where stomp.py gives none.

stomp.py logs why a socket could not be opened and then raises an exception that does not say;
it reports unreadable TLS files the same way. The handler's problem text ("broker unreachable:
...") should name the cause, so these helpers find it.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from katello_events.candlepin.options import ListenerSettings
from katello_events.errors import describe_error


def check_tls_files(settings: ListenerSettings) -> None:
    """Load the TLS files the way stomp.py will, to fail with a clear ``ConnectionError``."""
    try:
        context = ssl.create_default_context(cafile=settings.ssl_ca)
    except (OSError, ValueError) as exc:
        raise ConnectionError(f"cannot load SSL_CA {settings.ssl_ca!r}: {describe_error(exc)}") from None
    if settings.ssl_cert:
        try:
            context.load_cert_chain(settings.ssl_cert, settings.ssl_key)
        except (OSError, ValueError) as exc:
            files = f"{settings.ssl_cert!r}" + (f" / {settings.ssl_key!r}" if settings.ssl_key else "")
            raise ConnectionError(f"cannot load SSL_CERT/SSL_KEY {files}: {describe_error(exc)}") from None


class _ConnectErrorCapture(logging.Filter):
    """Keeps stomp.py's connection errors for the thread that asked (sparing the log a duplicate
    of what the handler reports); other threads' records pass untouched."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        errors = getattr(self._local, "errors", None)
        message = str(record.msg)
        if errors is None or not message.lower().startswith(("could not connect", "could not find file")):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        errors.append(str(args[-1]) if len(args) == 3 else record.getMessage())
        return False

    @contextmanager
    def capturing(self) -> Iterator[list[str]]:
        errors: list[str] = []
        self._local.errors = errors
        try:
            yield errors
        finally:
            self._local.errors = None


_CAPTURE = _ConnectErrorCapture()


def capture_connect_errors() -> AbstractContextManager[list[str]]:
    """Within the block, stomp.py's connection errors of this thread land in the yielded list."""
    logger = logging.getLogger("stomp.py")
    if _CAPTURE not in logger.filters:
        logger.addFilter(_CAPTURE)
    return _CAPTURE.capturing()
