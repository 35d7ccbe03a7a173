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


class BatchHandler:
    """A handler of many events of one type per call: ``fn(events)``, at most ``batch_size``.

    What the event registry holds for ``@event_handler(type, batch_size=N)``; the consumer calls
    it with a list of :class:`~katello_events.QueuedEvent` (distinct objects, each coalesced).
    """

    def __init__(self, function: Callable[[list[Any]], Any], batch_size: int) -> None:
        self.function = function
        self.batch_size = batch_size
        # Named like the function, so registering it twice (a re-import) is recognised.
        self.__module__ = getattr(function, "__module__", "?")
        self.__qualname__ = getattr(function, "__qualname__", repr(function))

    def __call__(self, events: list[Any]) -> Any:
        return self.function(events)


def event_handler(event_type: str, *, batch_size: int | None = None) -> Callable[[HandlerFunction], HandlerFunction]:
    """Register ``fn(event)`` as the handler of ``event_type`` (see ``docs/handlers.md``).

    With ``batch_size``, ``fn(events)`` gets a list of up to that many events of the type
    (distinct objects, each already coalesced) and handles them in one call; it may raise
    :class:`~katello_events.PartialFailure` naming the objects that failed.

    ::

        @katello_events.event_handler("generate_host_applicability")
        def regenerate(event):
            Host.objects.get(pk=event.object_id).recompute_applicability()

        @katello_events.event_handler("generate_host_applicability", batch_size=500)
        def regenerate_many(events):
            recompute_applicability(Host.objects.filter(pk__in=[e.object_id for e in events]))
    """
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise TypeError(f"batch_size must be a positive int, not {batch_size!r}")

    def decorator(function: HandlerFunction) -> HandlerFunction:
        if batch_size is None:
            return event_handlers.register(event_type, function)
        event_handlers.register(event_type, BatchHandler(function, batch_size))
        return function  # still callable directly, with a list

    return decorator


#: Message subject ("pool.created") -> fn(message), for the candlepin_events listener.
message_handlers = HandlerRegistry("message subject")

#: Message subject -> fn(message) giving the key its pending messages coalesce by in the
#: listener's inbox (``coalesce_by=``); a subject without one never coalesces.
message_coalescing = HandlerRegistry("coalescing key of message subject")


def message_handler(
    subject: str, *, coalesce_by: Callable[[Any], Any] | None = None
) -> Callable[[HandlerFunction], HandlerFunction]:
    """Register ``fn(message)`` as the handler of Candlepin messages of ``subject`` (see
    ``docs/candlepin.md``). Subjects are lower-case ``target.type``; the key is lower-cased here.

    ``coalesce_by``: ``fn(message)`` returning what the message is about (a str or int, or None
    for "this one alone"). With the listener's ``INBOX``, pending messages of this subject with
    the same key are run once, with the newest message: give it only to subjects whose newest
    message makes the older ones moot (a status, not a change). Default: every message runs.

    ::

        @katello_events.message_handler("pool.created")
        def import_pool(message):
            Pool.import_from_candlepin(message.body["entityId"])

        @katello_events.message_handler("compliance.created", coalesce_by=lambda m: m.body["consumerUuid"])
        def update_status(message): ...
    """
    key = subject.strip().lower() if isinstance(subject, str) else subject
    if coalesce_by is not None and not callable(coalesce_by):
        raise TypeError(f"coalesce_by must be a function of the message, not {coalesce_by!r}")

    def decorator(function: HandlerFunction) -> HandlerFunction:
        registered = message_handlers.register(key, function)
        if coalesce_by is not None:
            message_coalescing.register(key, coalesce_by)
        return registered

    return decorator
