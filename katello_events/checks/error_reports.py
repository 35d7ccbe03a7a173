"""System check: error pages and admin e-mails must not show a password found in a handler's options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Warning

from katello_events.redaction import redact, reporter_filter_installed

FILTER = "katello_events.redaction.SecretRedactingReporterFilter"


def check_reporter_filter(config: Mapping[str, Any]) -> list[CheckMessage]:
    """W005 when an option value carries a secret (a broker or probe URL with its password) and
    Django's exception-reporter filter would show it, in the settings or a frame's variables."""
    handlers = config.get("HANDLERS")
    carrying = sorted(
        f"{name}.{key}"
        for name, options in _options(handlers if isinstance(handlers, dict) else {})
        for key, value in options.items()
        if _carries_secret(value)
    )
    if not carrying or reporter_filter_installed(settings.DEFAULT_EXCEPTION_REPORTER_FILTER):
        return []
    return [
        Warning(
            f"{', '.join(carrying)} carries a password, and DEFAULT_EXCEPTION_REPORTER_FILTER "
            "would show it on error pages and in admin e-mails.",
            hint=f"Set DEFAULT_EXCEPTION_REPORTER_FILTER = {FILTER!r} (it redacts URL passwords in "
            "settings and in traceback variables).",
            id="katello_events.W005",
        )
    ]


def _options(handlers: dict) -> list[tuple[str, dict]]:
    """Each handler's OPTIONS, where well formed (E001 reports the rest)."""
    specs = [(name, spec.get("OPTIONS")) for name, spec in handlers.items() if isinstance(spec, dict)]
    return [(name, options) for name, options in specs if isinstance(options, dict)]


def _carries_secret(value: Any) -> bool:
    if isinstance(value, str):
        return redact(value) != value
    if isinstance(value, (list, tuple)):
        return any(_carries_secret(item) for item in value)
    return False
