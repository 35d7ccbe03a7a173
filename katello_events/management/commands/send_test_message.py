"""``manage.py send_test_message SUBJECT [--body JSON]``: send one Candlepin-style message.

It goes to the broker and destination of the Candlepin listener slot (``BROKER_URL``,
``DESTINATION``, ``VHOST`` and the TLS options of its ``OPTIONS``), shaped as Candlepin shapes its
event messages: ``EVENT_TARGET``/``EVENT_TYPE`` headers from the subject, a JSON body with
``id``, ``type``, ``target``, ``entityId``, ``eventData`` (a JSON document inside a string), ...
So any project can check that its ``@message_handler`` functions are reached, end to end.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from katello_events.candlepin.options import BrokerAddress, ListenerSettings, OptionsError, parse_options
from katello_events.conf import handler_specs
from katello_events.errors import describe_error
from katello_events.redaction import redact

#: The principal Candlepin names in its messages; this one says where the message came from.
PRINCIPAL = {"type": "trusteduser", "name": "send_test_message"}


def candlepin_body(target: str, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Candlepin's event JSON for ``TARGET.TYPE``, with ``fields`` over its defaults.

    ``eventData`` given as an object or a list is sent as Candlepin sends it: a JSON string.
    """
    body: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "type": kind,
        "target": target,
        "targetName": None,
        "timestamp": int(time.time() * 1000),
        "entityId": None,
        "ownerId": None,
        "consumerUuid": None,
        "referenceId": None,
        "referenceType": None,
        "eventData": None,
        "messageText": None,
        "principal": PRINCIPAL,
        **fields,
    }
    if isinstance(body["eventData"], (dict, list)):
        body["eventData"] = json.dumps(body["eventData"])
    return body


def split_subject(subject: str) -> tuple[str, str]:
    """``"pool.created"`` -> ``("POOL", "CREATED")``, the headers Candlepin sets."""
    target, _, kind = subject.strip().rpartition(".")
    if not target or not kind:
        raise CommandError(f"SUBJECT must read TARGET.TYPE, such as pool.created, not {subject!r}")
    return target.upper(), kind.upper()


def listener_settings(slot: str | None) -> tuple[str, ListenerSettings]:
    """The name and validated OPTIONS of the Candlepin listener slot (``slot``, or the only one)."""
    from django.utils.module_loading import import_string

    from katello_events.handlers.candlepin import CandlepinHandler

    specs = handler_specs()
    found = []
    for name, spec in specs.items():
        try:
            backend = import_string(spec["BACKEND"])
        except ImportError:
            continue
        if isinstance(backend, type) and issubclass(backend, CandlepinHandler):
            found.append(name)
    if slot is None:
        if len(found) != 1:
            listed = ", ".join(found) or "none"
            raise CommandError(f"name the Candlepin listener slot with --handler (Candlepin listener slots: {listed})")
        slot = found[0]
    elif slot not in found:
        raise CommandError(f"{slot!r} is not a Candlepin listener slot of KATELLO_EVENTS['HANDLERS']")
    try:
        return slot, parse_options(specs[slot]["OPTIONS"])
    except OptionsError as exc:
        raise CommandError(f"handler {slot!r}: {exc} (manage.py check says more)") from None


class Command(BaseCommand):
    help = (
        "Send one Candlepin-style event message (EVENT_TARGET/EVENT_TYPE headers, Candlepin's JSON "
        "body) to the broker and destination the Candlepin listener reads."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("subject", help="TARGET.TYPE, as message handlers name it: pool.created")
        parser.add_argument(
            "--body",
            default="{}",
            help='A JSON object of body fields over the defaults, such as \'{"entityId": "4028f9"}\'; '
            "an eventData object is sent as a JSON string, as Candlepin does.",
        )
        parser.add_argument("--handler", default=None, help="The Candlepin listener slot (default: the only one).")
        parser.add_argument("--count", type=int, default=1, help="Send the message this many times (default 1).")

    def handle(self, *args: Any, **options: Any) -> None:
        target, kind = split_subject(options["subject"])
        try:
            fields = json.loads(options["body"])
        except ValueError as exc:
            raise CommandError(f"--body is not JSON: {exc}") from None
        if not isinstance(fields, dict):
            raise CommandError("--body must be a JSON object (the fields of the message body)")
        if options["count"] < 1:
            raise CommandError("--count must be at least 1")
        slot, settings = listener_settings(options["handler"])
        headers = {"EVENT_TARGET": target, "EVENT_TYPE": kind, "persistent": "true"}
        connection, broker = self._connect(settings)
        try:
            for _ in range(options["count"]):
                body = candlepin_body(target, kind, fields)
                connection.send(
                    settings.destination, json.dumps(body), content_type="application/json", headers=headers
                )
        finally:
            # With a receipt: once it is back, the broker has every message sent before it.
            connection.disconnect(receipt=uuid.uuid4().hex)
        subject = f"{target}.{kind}".lower()
        self.stdout.write(f"sent {options['count']} x {subject} to {settings.destination} on {broker} (slot {slot})")

    def _connect(self, settings: ListenerSettings) -> tuple[Any, BrokerAddress]:
        """A connection to the first broker of BROKER_URL that answers (failover order)."""
        import stomp

        failures = []
        for broker in settings.brokers:
            address = [(broker.host, broker.port)]
            connection = stomp.Connection12(
                address,
                prefer_localhost=False,
                try_loopback_connect=False,
                reconnect_attempts_max=1,
                timeout=settings.connect_timeout,
                vhost=settings.vhost,
            )
            if broker.tls:
                connection.set_ssl(
                    for_hosts=address, cert_file=settings.ssl_cert, key_file=settings.ssl_key, ca_certs=settings.ssl_ca
                )
            try:
                connection.connect(broker.username, broker.password, wait=True)
            except Exception as exc:  # noqa: BLE001 - any failure: try the next broker, then say why
                failures.append(f"{broker}: {redact(describe_error(exc))}")
                continue
            return connection, broker
        raise CommandError("could not connect to the broker: " + "; ".join(failures))
