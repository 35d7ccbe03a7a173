"""The package's loggers: every record passes through the redaction of secrets before any handler formats it."""

from __future__ import annotations

import logging

from katello_events.redaction import redact


class RedactingFilter(logging.Filter):
    """Redacts a record's message and traceback text before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
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
