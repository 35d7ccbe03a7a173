"""System checks of a Candlepin listener slot's OPTIONS (E006, E007)."""

from __future__ import annotations

import os
from typing import Any

from django.core.checks import CheckMessage, Error

from katello_events.conf import unknown_option_message
from katello_events.links import docs_url

_BROKER_HINT = (
    "Set OPTIONS['BROKER_URL'] to stomp://user:password@host:61613 or stomp+ssl://host:61613 "
    f"(several, comma-separated, for failover); see {docs_url('candlepin', 'options')}"
)
_CANDLEPIN_HINT = f"Every option of the Candlepin listener and its default: {docs_url('candlepin', 'options')}"


def check_candlepin_options(name: str, backend: type, options: dict[str, Any]) -> list[CheckMessage]:
    """E006 (no usable BROKER_URL) and E007 (any other option) for Candlepin listener slots."""
    from katello_events.candlepin.options import DEFAULT_OPTIONS, option_errors, parse_options
    from katello_events.handlers.candlepin import CandlepinHandler

    if not issubclass(backend, CandlepinHandler):
        return []
    messages: list[CheckMessage] = []
    # An unknown key is most often a typo: say what was meant (option_errors lists every option).
    misspelt = {
        key: unknown_option_message(name, key, DEFAULT_OPTIONS) for key in options if key not in DEFAULT_OPTIONS
    }
    for error in option_errors(options):  # the texts never contain a password
        if error.key in misspelt:
            messages.append(Error(f"{misspelt[error.key]}.", hint=_CANDLEPIN_HINT, id="katello_events.E007"))
        elif error.key == "BROKER_URL":
            messages.append(Error(f"Handler {name!r}: {error}", hint=_BROKER_HINT, id="katello_events.E006"))
        else:
            messages.append(Error(f"Handler {name!r}: {error}", hint=_CANDLEPIN_HINT, id="katello_events.E007"))
    if messages:
        return messages
    settings = parse_options(options)
    for key, path in (("SSL_CERT", settings.ssl_cert), ("SSL_KEY", settings.ssl_key), ("SSL_CA", settings.ssl_ca)):
        if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            messages.append(
                Error(
                    f"Handler {name!r}: OPTIONS[{key!r}] {path!r} is not a readable file.",
                    hint="Give the path of a PEM file the server user can read.",
                    id="katello_events.E007",
                )
            )
    return messages
