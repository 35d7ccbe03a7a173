"""Keep secrets out of logs, status rows, ping output and error pages."""

from __future__ import annotations

import re
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

# user:password@ in any URL-ish text (stomp://, postgres://, amqp://, https://).
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@\s]*)@", re.I)
# key=value or key: value pairs whose key says secret (libpq DSNs, headers, reprs).
_KEY_VALUE = re.compile(
    r"(?P<key>\b(?:password|passwd|passcode|secret|token|api_key|private_key)\b['\"]?\s*[=:]\s*['\"]?)"
    r"(?P<value>[^\s'\",;&)}]+)",
    re.I,
)

MASK = "********"


def redact(text: str) -> str:
    """``text`` with URL passwords and ``password=...``-style values replaced by a mask."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
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
