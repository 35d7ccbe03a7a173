"""Signal receivers connected by ``KatelloEventsConfig.ready()``."""

from __future__ import annotations

from typing import Any


def start_on_first_request(sender: Any, **kwargs: Any) -> None:
    """``request_started`` receiver: the first request a worker serves starts its standby.

    Cheap after the first call (one pid comparison); see :func:`katello_events.lifecycle.autostart`.
    """
    from katello_events.lifecycle import autostart

    autostart("first request")
