"""Template filters for status pages: ``{% load katello_events_status %}``."""

from __future__ import annotations

from datetime import datetime

from django import template

register = template.Library()


@register.filter
def isodatetime(value: str | None) -> datetime | None:
    """An ISO 8601 string of the status document as a datetime (for ``date``/``timesince``)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None  # a page must render whatever a hand-edited row holds
