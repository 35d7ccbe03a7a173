"""The package's loggers: every record passes through the redaction of secrets before any handler formats it."""

from __future__ import annotations

import logging
import re
import threading
import time

from katello_events.redaction import redact

#: Loggers of the libraries we drive, whose messages may carry a broker URL or a libpq DSN.
THIRD_PARTY_LOGGERS = ("stomp.py", "psycopg", "psycopg2")

# Control characters in a message (a subject or a header from the broker) could forge log lines:
# newlines and the rest are written as escapes. Tracebacks keep their lines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def escape_controls(text: str) -> str:
    """``text`` with control characters as escapes: ``"a\\nb"`` for a newline."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class RedactingFilter(logging.Filter):
    """Redacts a record's message and traceback text before any handler formats it, and escapes
    the message's control characters."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = escape_controls(redact(record.getMessage()))
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FILTER = RedactingFilter()


def get_logger(name: str) -> logging.Logger:
    """A logger whose records are redacted (logger filters are not inherited, so one each)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


def redact_third_party_loggers() -> None:
    """Put the same filter on the loggers of stomp.py and the PostgreSQL drivers (idempotent).

    Called from the app's ``ready()``: a filter on a logger applies to its own records only, so
    each library's logger gets one.
    """
    for name in THIRD_PARTY_LOGGERS:
        get_logger(name)


class LogBudget:
    """At most ``limit`` log lines of one kind per ``window`` seconds; the rest are counted, and
    :meth:`take_suppressed` gives the count once the window is over, for one summary line.

    A flood of bad input (2,000 malformed messages) then writes a dozen lines, not 2,000.
    """

    def __init__(self, limit: int = 10, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._used = 0
        self._suppressed = 0

    def allow(self) -> bool:
        """Whether this line may be logged now (counted as suppressed if not)."""
        with self._lock:
            self._roll()
            if self._used < self.limit:
                self._used += 1
                return True
            self._suppressed += 1
            return False

    def take_suppressed(self) -> int:
        """Lines suppressed in a window that is over (0 while the window runs); resets the count."""
        with self._lock:
            if time.monotonic() - self._started < self.window:
                return 0
            suppressed, self._suppressed = self._suppressed, 0
            self._roll()
            return suppressed

    def _roll(self) -> None:
        if time.monotonic() - self._started >= self.window and not self._suppressed:
            self._started, self._used = time.monotonic(), 0
