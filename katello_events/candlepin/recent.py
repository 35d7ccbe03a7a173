"""A bounded memory of the message ids this listener has received: a delivery seen before is a
redelivery, even from a broker that does not set the ``redelivered`` header.
"""

from __future__ import annotations

#: Ids remembered; the oldest are forgotten first. Far more than a broker keeps unacked for us.
RECENT_IDS = 10_000


class RecentIds:
    """The last ``size`` distinct message ids, oldest forgotten first (not thread-safe: the
    listener's thread is its only user)."""

    def __init__(self, size: int = RECENT_IDS) -> None:
        self.size = size
        self._ids: dict[str, None] = {}  # insertion-ordered: the first key is the oldest

    def seen_before(self, message_id: str | None) -> bool:
        """Whether ``message_id`` was received before; remembers it either way (None: never seen)."""
        if not message_id:
            return False
        if message_id in self._ids:
            return True
        self._ids[message_id] = None
        if len(self._ids) > self.size:
            del self._ids[next(iter(self._ids))]
        return False

    def __len__(self) -> int:
        return len(self._ids)
