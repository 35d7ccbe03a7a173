"""The OPTIONS of the ``candlepin_events`` slot: defaults, parsing and validation.

Pure functions, no I/O: the handler's constructor and the system checks (``katello_events.E006``
and ``E007``) share them, so a configuration the checks accept is one the handler runs with.
Passwords stay inside :class:`BrokerAddress` and never reach an error message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from katello_events.redaction import redact

#: OPTIONS with their defaults (documented in docs/candlepin.md).
DEFAULT_OPTIONS: dict[str, Any] = {
    # One broker URL, or several separated by commas (tried in order: failover).
    # stomp://[user:password@]host[:port] or stomp+ssl://... (TLS; see SSL_*).
    "BROKER_URL": "stomp://localhost:61613",
    "DESTINATION": "/queue/katello.candlepin",
    # The STOMP subscription id, also sent as Artemis' durable subscription name.
    "SUBSCRIPTION_ID": "candlepin_events",
    # The client-id CONNECT header (Artemis names the durable queue <CLIENT_ID>.<SUBSCRIPTION_ID>).
    "CLIENT_ID": "katello_candlepin_event_monitor",
    "VHOST": "/",  # the CONNECT host header; RabbitMQ reads it as the virtual host
    "HEARTBEATS": (30000, 30000),  # milliseconds: (we send every, we expect every); 0 disables
    "PREFETCH": 100,  # messages the broker may deliver before we ack (prefetch-count)
    "SSL_CERT": None,  # client certificate (PEM) for stomp+ssl:// brokers
    "SSL_KEY": None,  # its private key (PEM); None: inside SSL_CERT
    "SSL_CA": None,  # CA bundle to verify the broker with; None: the system's CAs
    "MAX_BODY_BYTES": 1024 * 1024,  # larger bodies are kept as dead, not handled
    "CONNECT_TIMEOUT": 10.0,  # seconds for TCP + TLS + CONNECTED + subscription receipt, per broker
    "RECONNECT_BACKOFF": 1.0,  # seconds before the first reconnection attempt; doubles per failure
    "RECONNECT_BACKOFF_MAX": 30.0,  # seconds
    # RabbitMQ management API URL of the queue (http://user:password@host:15672/api/queues/%2F/name).
    # None: the queue depth is unknown (shown as such, never guessed).
    "DEPTH_PROBE_URL": None,
    "DEPTH_PROBE_INTERVAL": 10.0,  # seconds between depth readings
    # True: every well-formed message with a handler is stored in the event queue (one commit per
    # burst, acked after it) and run there, coalesced by its subject's key. False: handlers run
    # in the listener, as before. Why True is the default: docs/candlepin.md, "The inbox".
    "INBOX": True,
}

DEFAULT_PORT = 61613
SCHEMES = {"stomp": False, "stomp+ssl": True}  # scheme -> TLS


class OptionsError(ValueError):
    """One invalid option; ``key`` names it (the checks give BROKER_URL an ID of its own)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"OPTIONS[{key!r}] {problem}")
        self.key = key


@dataclass(frozen=True)
class BrokerAddress:
    """One broker of BROKER_URL; ``str()`` is safe to log (no credentials)."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        scheme = "stomp+ssl" if self.tls else "stomp"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class ListenerSettings:
    """The validated OPTIONS (see :data:`DEFAULT_OPTIONS` for meanings and units)."""

    brokers: tuple[BrokerAddress, ...]
    destination: str
    subscription_id: str
    client_id: str
    vhost: str
    heartbeats: tuple[int, int]
    prefetch: int
    ssl_cert: str | None
    ssl_key: str | None
    ssl_ca: str | None
    max_body_bytes: int
    connect_timeout: float
    reconnect_backoff: float
    reconnect_backoff_max: float
    depth_probe_url: str | None = field(repr=False)
    depth_probe_interval: float
    inbox: bool = True


def parse_options(options: Mapping[str, Any]) -> ListenerSettings:
    """The settings for ``options`` merged over the defaults; raises the first :class:`OptionsError`."""
    settings, errors = _parse(options)
    if errors:
        raise errors[0]
    assert settings is not None  # noqa: S101 - narrows the type: _parse() gives None only with errors
    return settings


def option_errors(options: Mapping[str, Any]) -> list[OptionsError]:
    """Every problem of ``options`` (empty when valid)."""
    return _parse(options)[1]


def parse_broker_urls(value: Any) -> tuple[BrokerAddress, ...]:
    """``"stomp://a:1,stomp+ssl://b:2"`` (or a list of URLs) as addresses, in failover order."""
    if isinstance(value, str):
        urls = value.split(",")
    elif isinstance(value, (list, tuple)) and all(isinstance(url, str) for url in value):
        urls = list(value)
    else:
        raise OptionsError("BROKER_URL", f"must be a URL string or a list of them, not {type(value).__name__}")
    if not any(url.strip() for url in urls):
        raise OptionsError("BROKER_URL", "is empty: give at least one stomp:// or stomp+ssl:// URL")
    return tuple(_parse_broker_url(url.strip()) for url in urls)


def _parse_broker_url(url: str) -> BrokerAddress:
    shown = redact(url) or "''"
    if not url:
        raise OptionsError("BROKER_URL", "has an empty entry in its comma-separated list")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise OptionsError("BROKER_URL", f"{shown}: not a URL") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise OptionsError("BROKER_URL", f"{shown}: the scheme must be stomp:// or stomp+ssl://")
    try:
        port = parts.port if parts.port is not None else DEFAULT_PORT
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise OptionsError("BROKER_URL", f"{shown}: the port is not a number from 1 to 65535")
    if not parts.hostname:
        raise OptionsError("BROKER_URL", f"{shown}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise OptionsError("BROKER_URL", f"{shown}: only scheme, credentials, host and port are allowed")
    return BrokerAddress(
        host=parts.hostname,
        port=port,
        tls=SCHEMES[scheme],
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


# -- validation --------------------------------------------------------------------------------


def _parse(options: Mapping[str, Any]) -> tuple[ListenerSettings | None, list[OptionsError]]:
    if not isinstance(options, Mapping):
        return None, [OptionsError("OPTIONS", "must be a dict")]
    errors = [
        OptionsError(key, f"is not an option of the Candlepin listener (known: {', '.join(DEFAULT_OPTIONS)})")
        for key in options
        if key not in DEFAULT_OPTIONS
    ]
    merged = {**DEFAULT_OPTIONS, **options}

    def take(key: str, validate: Callable[[str, Any], Any]) -> Any:
        try:
            return validate(key, merged[key])
        except OptionsError as exc:
            errors.append(exc)
            return None

    values = {
        "brokers": take("BROKER_URL", lambda key, value: parse_broker_urls(value)),
        **{name.lower(): take(name, _text) for name in ("DESTINATION", "SUBSCRIPTION_ID", "CLIENT_ID", "VHOST")},
        "heartbeats": take("HEARTBEATS", _heartbeats),
        "prefetch": take("PREFETCH", _positive_int),
        "max_body_bytes": take("MAX_BODY_BYTES", _positive_int),
        **{name.lower(): take(name, _optional_text) for name in ("SSL_CERT", "SSL_KEY", "SSL_CA")},
        "depth_probe_url": take("DEPTH_PROBE_URL", _optional_http_url),
        **{
            name.lower(): take(name, _positive_seconds)
            for name in ("CONNECT_TIMEOUT", "RECONNECT_BACKOFF", "RECONNECT_BACKOFF_MAX", "DEPTH_PROBE_INTERVAL")
        },
        "inbox": take("INBOX", _bool),
    }
    errors += _consistency(values)
    if errors:
        return None, errors
    return ListenerSettings(**values), []


def _consistency(values: dict[str, Any]) -> list[OptionsError]:
    errors = []
    if values["ssl_key"] and not values["ssl_cert"]:
        errors.append(OptionsError("SSL_KEY", "is set without SSL_CERT"))
    brokers = values["brokers"] or ()
    tls_files = values["ssl_cert"] or values["ssl_ca"]
    if tls_files and brokers and not any(broker.tls for broker in brokers):
        errors.append(OptionsError("SSL_CERT", "and SSL_CA are for stomp+ssl:// brokers, but BROKER_URL has none"))
    backoff, backoff_max = values["reconnect_backoff"], values["reconnect_backoff_max"]
    if backoff and backoff_max and backoff_max < backoff:
        errors.append(OptionsError("RECONNECT_BACKOFF_MAX", "must not be less than RECONNECT_BACKOFF"))
    return errors


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise OptionsError(key, f"must be a non-empty string, not {value!r}")
    return value


def _optional_text(key: str, value: Any) -> str | None:
    return None if value is None else _text(key, str(value) if hasattr(value, "__fspath__") else value)


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise OptionsError(key, f"must be a positive integer, not {value!r}")
    return value


def _positive_seconds(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise OptionsError(key, f"must be a positive number of seconds, not {value!r}")
    return float(value)


def _bool(key: str, value: Any) -> bool:
    # Only a real bool: "false" or 0 read as a choice would be a guess about what was meant.
    if not isinstance(value, bool):
        raise OptionsError(key, f"must be True or False, not {value!r}")
    return value


def _heartbeats(key: str, value: Any) -> tuple[int, int]:
    valid = (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    )
    if not valid:
        raise OptionsError(key, f"must be two milliseconds (send, receive), 0 or more each, not {value!r}")
    return (value[0], value[1])


def _optional_http_url(key: str, value: Any) -> str | None:
    if value is None:
        return None
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        shown = redact(value) if isinstance(value, str) else repr(value)
        raise OptionsError(key, f"must be an http(s):// URL or None, not {shown}")
    return value
