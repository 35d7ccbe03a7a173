"""Registries of the application's handler functions, filled by decorators at import time.

Event handlers live in ``events.py`` modules of installed apps; ``KatelloEventsConfig.ready()``
imports those modules (like the admin's autodiscovery), so the registry is complete before the
first ``push_event``. Each registry has :meth:`reset` for tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

HandlerFunction = Callable[[Any], Any]


class HandlerRegistry:
    """Maps a key (an event type, a message subject) to the one function that handles it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._functions: dict[str, HandlerFunction] = {}

    def register(self, key: str, function: HandlerFunction) -> HandlerFunction:
        if not isinstance(key, str) or not key:
            raise TypeError(f"a {self.kind} must be a non-empty string, not {key!r}")
        existing = self._functions.get(key)
        if existing is not None and _qualified(existing) != _qualified(function):
            raise ValueError(f"{self.kind} {key!r} already has a handler: {_qualified(existing)}")
        self._functions[key] = function
        return function

    def get(self, key: str) -> HandlerFunction | None:
        return self._functions.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._functions

    def keys(self) -> list[str]:
        return sorted(self._functions)

    def reset(self, functions: dict[str, HandlerFunction] | None = None) -> dict[str, HandlerFunction]:
        """Replace the registrations (tests); returns the previous ones so they can be restored."""
        previous, self._functions = self._functions, dict(functions or {})
        return previous


def _qualified(function: HandlerFunction) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"


#: Event type -> fn(event), for the database event queue.
event_handlers = HandlerRegistry("event type")


def event_handler(event_type: str) -> Callable[[HandlerFunction], HandlerFunction]:
    """Register ``fn(event)`` as the handler of ``event_type`` (see ``docs/handlers.md``).

    ::

        @katello_events.event_handler("generate_host_applicability")
        def regenerate(event):
            Host.objects.get(pk=event.object_id).recompute_applicability()
    """

    def decorator(function: HandlerFunction) -> HandlerFunction:
        return event_handlers.register(event_type, function)

    return decorator


#: Message subject ("pool.created") -> fn(message), for the candlepin_events listener.
message_handlers = HandlerRegistry("message subject")


def message_handler(subject: str) -> Callable[[HandlerFunction], HandlerFunction]:
    """Register ``fn(message)`` as the handler of Candlepin messages of ``subject`` (see
    ``docs/candlepin.md``). Subjects are lower-case ``target.type``; the key is lower-cased here.

    ::

        @katello_events.message_handler("pool.created")
        def import_pool(message):
            Pool.import_from_candlepin(message.body["entityId"])
    """
    key = subject.strip().lower() if isinstance(subject, str) else subject

    def decorator(function: HandlerFunction) -> HandlerFunction:
        return message_handlers.register(key, function)

    return decorator
