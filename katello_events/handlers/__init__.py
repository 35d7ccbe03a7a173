"""Handlers: the long-lived services the runner keeps alive. See :class:`base.Handler`."""

from katello_events.handlers.base import Handler, HandlerState, HandlerStats

__all__ = ["Handler", "HandlerState", "HandlerStats"]
