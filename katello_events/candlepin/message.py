"""What a message handler receives, and how a STOMP frame's body becomes it.

Free of Django and model imports: ``katello_events`` exports :class:`CandlepinMessage` before the
app registry is ready.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, TypeGuard

_UNSET: Any = object()


class MalformedMessage(ValueError):
    """A message that cannot be understood: too large, not UTF-8, not a JSON object, or no subject.

    Such a message is never handed to a handler; the listener keeps it as a dead event.
    """


class SkipMessage(Exception):  # no "Error" suffix (N818 is off): reads as what the handler asks for
    """Raised by a ``@message_handler`` function: this message is about nothing this application
    has (a host registered elsewhere, or deleted a moment ago), so there is nothing to do.

    The message is done, as if the handler had returned: acked, never retried, never dead, its
    handler's database writes before the raise kept. It is counted ``skipped`` (as well as
    processed) by the service that ran the handler, the listener (``INBOX: False``) or the event
    queue (the inbox, and messages stored for a retry), and logged at DEBUG with ``reason``.
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or "nothing to do")
        self.reason = reason


class CandlepinMessage:
    """One Candlepin event message, as a ``@message_handler`` function receives it.

    - ``subject``: ``"pool.created"``: the lower-cased ``EVENT_TARGET.EVENT_TYPE`` headers, or the
      body's ``target`` and ``type`` when the headers are missing;
    - ``headers``: the STOMP headers (``message-id``, ``redelivered``, ``EVENT_TARGET``...);
    - ``body``: Candlepin's event JSON, parsed (``id``, ``type``, ``target``, ``entityId``,
      ``ownerId``, ``consumerUuid``, ``referenceId``, ``eventData``, ...);
    - ``event_data``: the body's ``eventData`` (a JSON document inside a string) parsed on first
      use; None when absent. Invalid JSON there raises :class:`MalformedMessage` on access, which
      fails the handler (and so retries the message, then keeps it as dead).
    """

    __slots__ = ("_event_data", "body", "headers", "subject")

    def __init__(self, subject: str, headers: Mapping[str, str], body: dict[str, Any]) -> None:
        self.subject = subject
        self.headers = dict(headers)
        self.body = body
        self._event_data = _UNSET

    @property
    def event_data(self) -> Any:
        if self._event_data is _UNSET:
            self._event_data = parse_event_data(self.body.get("eventData"))
        return self._event_data

    @property
    def message_id(self) -> str | None:
        return self.headers.get("message-id")

    @property
    def redelivered(self) -> bool:
        """True when the broker delivered this message before (it may have been handled already)."""
        return self.headers.get("redelivered") == "true"

    def __repr__(self) -> str:
        return f"<CandlepinMessage {self.subject} id={self.body.get('id')!r}>"


def parse_message(headers: Mapping[str, str], body: bytes | str, max_body_bytes: int) -> CandlepinMessage:
    """The message of a frame; raises :class:`MalformedMessage` saying what is wrong with it."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if len(raw) > max_body_bytes:
        raise MalformedMessage(f"body is {len(raw)} bytes, over the limit of {max_body_bytes} (MAX_BODY_BYTES)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedMessage(f"body is not UTF-8: {exc}") from None
    document = load_json(text, what="body")
    if not isinstance(document, dict):
        raise MalformedMessage(f"body is a JSON {type(document).__name__}, not an object")
    return CandlepinMessage(subject_of(headers, document), headers, document)


def subject_of(headers: Mapping[str, str], body: Mapping[str, Any]) -> str:
    """``target.type`` lower-cased, from the headers, else from the body."""
    target, kind = headers.get("EVENT_TARGET"), headers.get("EVENT_TYPE")
    if not (_usable(target) and _usable(kind)):
        target, kind = body.get("target"), body.get("type")
        if not (_usable(target) and _usable(kind)):
            raise MalformedMessage("no subject: neither EVENT_TARGET/EVENT_TYPE headers nor target/type in the body")
    return f"{target.strip().lower()}.{kind.strip().lower()}"


def parse_event_data(value: Any) -> Any:
    """``eventData`` parsed: None for null or blank, as is when already a JSON object or list."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (dict, list)):
        return value
    if not isinstance(value, str):
        raise MalformedMessage(f"eventData is a {type(value).__name__}, not a JSON string")
    return load_json(value, what="eventData")


def load_json(text: str, *, what: str) -> Any:
    """Strict JSON: NaN, Infinity and floats that overflow are refused (the database refuses them)."""
    try:
        return _STRICT_JSON.decode(text)
    except RecursionError:
        raise MalformedMessage(f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and ints too long to convert
        raise MalformedMessage(f"{what} is not JSON: {exc}") from None


def _usable(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value.strip())


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range")
    return value


#: One decoder for every message: ``json.loads`` with these hooks would build a new one per call.
_STRICT_JSON = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
