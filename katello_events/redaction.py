"""Keep secrets out of logs, status rows, ping output and error pages."""

from __future__ import annotations

import re
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

# user:password@ in any URL-ish text (stomp://, postgres://, amqp://, https://). The password
# runs to the *last* @ of the URL, not the first: "stomp://guest:p@ss@host" hides "p@ss" whole.
_URL_PASSWORD = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^\s]*)@(?=[^\s@]*(?:[\s,;)\]}'\"]|$))",
    re.I,
)
# The same URL percent-encoded as a whole (a query string, a header): %3A%2F%2F, %3A and %40.
_ENCODED_URL_PASSWORD = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*%3A%2F%2F)(?P<user>(?:(?!%3A|%40)[^\s&])*)%3A(?P<password>\S*?)%40", re.I
)
# key=value or key: value pairs whose key says secret (libpq DSNs, headers, reprs, environment
# dumps): DB_PASSWORD=, PGPASSWORD=, "secret_key": and the like, whatever the prefix or suffix.
_KEY_VALUE = re.compile(
    r"(?P<key>\b\w*?(?:password|passwd|passcode|secret|token|api_?key|private_?key)\w*['\"]?\s*[=:]\s*['\"]?)"
    r"(?P<value>[^\s'\",;&)}]+)",
    re.I,
)

MASK = "********"


def redact(text: str) -> str:
    """``text`` with URL passwords and ``password=...``-style values replaced by a mask.

    Redact whole texts, then cut them: a cut can start inside a URL, where no pattern sees it.
    """
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _ENCODED_URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}%3A{MASK}%40", text)
    return _KEY_VALUE.sub(lambda m: f"{m['key']}{MASK}", text)


class SecretRedactingReporterFilter(SafeExceptionReporterFilter):
    """Django's error-page filter, plus passwords inside URLs of any setting.

    Django hides settings by name (``PASSWORD``, ``SECRET_KEY``...), but a broker URL in
    ``KATELLO_EVENTS["HANDLERS"][...]["OPTIONS"]["BROKER_URL"]`` carries its password inside the
    value. Set ``DEFAULT_EXCEPTION_REPORTER_FILTER = "katello_events.redaction.SecretRedactingReporterFilter"``.
    """

    def cleanse_setting(self, key: int | str, value: Any) -> Any:
        value = super().cleanse_setting(key, value)
        return redact(value) if isinstance(value, str) else value

    def get_traceback_frame_variables(self, request: Any, tb_frame: Any) -> Any:
        """A frame's local variables as the error page shows them (their repr), redacted.

        A listener's frame holds its settings and connection objects, whose repr carries the
        broker URL: the page shows the redacted repr instead of the object.
        """
        variables = super().get_traceback_frame_variables(request, tb_frame)
        return [(name, _RedactedRepr(value)) for name, value in variables]


class _RedactedRepr:
    """Shows as the redacted repr of what it wraps (Django's error page pprints frame variables)."""

    __slots__ = ("text",)

    def __init__(self, value: Any) -> None:
        try:
            self.text = redact(repr(value))
        except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not break the error page
            self.text = f"<repr failed: {type(exc).__name__}>"

    def __repr__(self) -> str:
        return self.text


def reporter_filter_installed(setting: str) -> bool:
    """Whether ``DEFAULT_EXCEPTION_REPORTER_FILTER`` (a dotted path) redacts like ours does."""
    from django.utils.module_loading import import_string

    try:
        return issubclass(import_string(setting), SecretRedactingReporterFilter)
    except (ImportError, TypeError):
        return False
