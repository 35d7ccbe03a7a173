"""The optional queue-depth probe: the broker's own count of the listener's queue.

STOMP cannot tell how many messages wait in a queue, so the depth is unknown (None) unless
``DEPTH_PROBE_URL`` names an HTTP endpoint that can: RabbitMQ's management API
(``/api/queues/<vhost>/<queue>``, field ``messages``) or a Jolokia read of an Artemis queue's
``MessageCount`` (field ``value``). A failed reading is unknown too: never a made-up number.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from urllib.parse import unquote, urlsplit, urlunsplit

from katello_events.errors import describe_error
from katello_events.log import get_logger
from katello_events.redaction import redact

logger = get_logger(__name__)

#: Seconds a reading may take: it runs in the listener's thread, between messages.
TIMEOUT = 2.0


class DepthProbe:
    """Reads the depth from ``url``; credentials in the URL become a basic-auth header."""

    def __init__(self, url: str, timeout: float = TIMEOUT) -> None:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
        self._url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        self._headers = {"Accept": "application/json"}
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        self._timeout = timeout
        self._failing = False

    def read(self) -> int | None:
        """The number of messages in the queue, or None when it cannot be known now."""
        try:
            # S310: no file: or custom scheme can get here, options.py accepts only http(s) URLs.
            request = urllib.request.Request(self._url, headers=self._headers)  # noqa: S310 - http(s) only
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310 - http(s) only
                document = json.load(response)
            depth = depth_from(document)
        except Exception as exc:  # noqa: BLE001 - read() never raises: an unknown depth is None
            self._complain(describe_error(exc))
            return None
        if depth is None:
            self._complain("the answer has no 'messages' or 'value' count")
        elif self._failing:
            logger.info("queue depth probe recovered")
            self._failing = False
        return depth

    def _complain(self, problem: str) -> None:
        if not self._failing:  # once per failing spell, not once per reading
            logger.warning("queue depth probe %s failed: %s", redact(self._url), redact(problem))
        self._failing = True


def depth_from(document: object) -> int | None:
    """``messages`` (RabbitMQ) or ``value`` (Jolokia) when it is a count; else None."""
    if not isinstance(document, dict):
        return None
    for key in ("messages", "value"):
        value = document.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None
