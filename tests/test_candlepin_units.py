"""Fast tests of the Candlepin listener's parts: options, message parsing, registry, probe, checks."""

from __future__ import annotations

import json
import logging

import pytest
from django.core.checks import run_checks
from django.test import override_settings
from hypothesis import given, settings
from hypothesis import strategies as st

import katello_events
from katello_events.candlepin.connection import _ack_frame
from katello_events.candlepin.depth_probe import DepthProbe, depth_from
from katello_events.candlepin.dispatch import handle_stored_message, message_key
from katello_events.candlepin.message import CandlepinMessage, MalformedMessage, parse_message, subject_of
from katello_events.candlepin.options import DEFAULT_OPTIONS, BrokerAddress, option_errors, parse_options
from katello_events.event_queue.types import QueuedEvent
from katello_events.handlers.base import HandlerStats
from katello_events.handlers.candlepin import CandlepinHandler
from katello_events.registry import HandlerRegistry, message_handlers
from tests.candlepin_support import fake_management_api, subject_message
from tests.support import ROOT, free_port

LIMIT = 1024 * 1024

# -- options -----------------------------------------------------------------------------------


def test_defaults_are_katellos():
    config = parse_options({})
    assert config.brokers == (BrokerAddress("localhost", 61613),)
    assert (config.destination, config.subscription_id, config.client_id) == (
        "/queue/katello.candlepin",
        "candlepin_events",
        "katello_candlepin_event_monitor",
    )
    assert (config.vhost, config.heartbeats, config.prefetch, config.max_body_bytes) == (
        "/",
        (30000, 30000),
        100,
        LIMIT,
    )
    assert config.depth_probe_url is None
    assert config.inbox is True, "the inbox is the default (docs/candlepin.md says why)"


def test_broker_urls_fail_over_in_order_with_their_own_credentials_and_tls():
    config = parse_options(
        {"BROKER_URL": "stomp://u%40x:p%3Aw@a.example:1, stomp+ssl://b.example", "SSL_CERT": "/c.pem", "SSL_CA": "/ca"}
    )
    first, second = config.brokers
    assert (first.host, first.port, first.tls, first.username, first.password) == ("a.example", 1, False, "u@x", "p:w")
    assert (second.host, second.port, second.tls, second.username) == ("b.example", 61613, True, None)
    assert str(first) == "stomp://a.example:1"
    assert "p:w" not in repr(first)
    assert parse_options({"BROKER_URL": ["stomp://[::1]:5"]}).brokers[0].host == "::1"


@pytest.mark.parametrize(
    ("options", "key", "text"),
    [
        ({"BROKER_URL": ""}, "BROKER_URL", "is empty"),
        ({"BROKER_URL": "amqp://u:hunter2@h"}, "BROKER_URL", "stomp:// or stomp+ssl://"),
        ({"BROKER_URL": "stomp://u:hunter2@h:99999"}, "BROKER_URL", "port"),
        ({"BROKER_URL": "stomp://u:hunter2@:61613"}, "BROKER_URL", "no host"),
        ({"BROKER_URL": "stomp://h,"}, "BROKER_URL", "empty entry"),
        ({"BROKER_URL": "stomp://u:hunter2@h/vhost"}, "BROKER_URL", "only scheme"),
        ({"BROKER_URL": 5}, "BROKER_URL", "URL string"),
        ({"PREFETCH": 0}, "PREFETCH", "positive integer"),
        ({"HEARTBEATS": (1, -1)}, "HEARTBEATS", "two milliseconds"),
        ({"RECONNECT_BACKOFF": "1"}, "RECONNECT_BACKOFF", "seconds"),
        ({"RECONNECT_BACKOFF": 5, "RECONNECT_BACKOFF_MAX": 1}, "RECONNECT_BACKOFF_MAX", "not be less"),
        ({"DESTINATION": " "}, "DESTINATION", "non-empty string"),
        ({"SSL_KEY": "/k.pem", "SSL_CERT": None}, "SSL_KEY", "without SSL_CERT"),
        ({"SSL_CA": "/ca.pem"}, "SSL_CERT", "stomp+ssl"),
        ({"DEPTH_PROBE_URL": "ftp://u:hunter2@h/q"}, "DEPTH_PROBE_URL", "http(s)"),
        ({"QUEUE": "x"}, "QUEUE", "not an option"),
        ({"INBOX": "false"}, "INBOX", "True or False"),
        ({"INBOX": 0}, "INBOX", "True or False"),
    ],
)
def test_invalid_options_name_their_key_and_never_show_a_password(options, key, text):
    [error] = option_errors(options)
    assert error.key == key
    assert text in str(error)
    assert "hunter2" not in str(error)
    with pytest.raises(ValueError, match="OPTIONS"):
        CandlepinHandler("candlepin_events", options, HandlerStats())  # a crash with this text, no I/O


def test_every_option_is_documented():
    documented = (ROOT / "docs" / "candlepin.md").read_text()
    assert all(f"`{key}`" in documented for key in DEFAULT_OPTIONS)


# -- messages ----------------------------------------------------------------------------------


def test_the_subject_comes_from_the_headers_then_the_body_lower_cased():
    assert subject_of({"EVENT_TARGET": "SYSTEM_PURPOSE_COMPLIANCE", "EVENT_TYPE": "CREATED"}, {}) == (
        "system_purpose_compliance.created"
    )
    assert subject_of({"EVENT_TARGET": "POOL"}, {"target": "Entitlement", "type": "Deleted"}) == "entitlement.deleted"
    with pytest.raises(MalformedMessage, match="no subject"):
        subject_of({}, {"target": "POOL", "type": 3})


def test_a_message_exposes_its_parts_and_parses_event_data_lazily():
    headers, body = subject_message("compliance.created")
    message = parse_message({**headers, "message-id": "m1", "redelivered": "true"}, body, LIMIT)
    assert message.subject == "compliance.created"
    assert message.message_id == "m1"
    assert message.redelivered
    assert message.body["target"] == "COMPLIANCE"
    assert message.event_data["status"] == "invalid"
    broken = parse_message({}, json.dumps({"target": "POOL", "type": "CREATED", "eventData": "{oops"}), LIMIT)
    assert broken.subject == "pool.created"  # parsing the body does not touch eventData...
    with pytest.raises(MalformedMessage, match="eventData is not JSON"):
        _ = broken.event_data  # ...the handler meets the error, so the message is retried, then kept dead
    assert parse_message({}, b'{"target": "a", "type": "b"}', LIMIT).event_data is None


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b"\xff", "not UTF-8"),
        (b"", "not JSON"),
        (b"[1]", "JSON list, not an object"),
        (b'{"target": "POOL", "type": "CREATED", "n": NaN}', "not JSON"),
        (b'{"target": "POOL", "type": "CREATED", "n": 1e999}', "not JSON"),
        (b"[" * 100000, "nested too deeply"),
        (b'{"target": "POOL", "type": "CREATED", "pad": "' + b"x" * LIMIT + b'"}', "over the limit"),
    ],
)
def test_malformed_bodies_raise_a_clear_error(body, text):
    with pytest.raises(MalformedMessage, match=text):
        parse_message({}, body, LIMIT)


@settings(max_examples=300, database=None)
@given(
    headers=st.dictionaries(st.sampled_from(["EVENT_TARGET", "EVENT_TYPE", "message-id"]), st.text(max_size=10)),
    body=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["target", "type", "x"]), inner)
            ),
            max_leaves=8,
        ).map(lambda value: json.dumps(value).encode()),
    ),
)
def test_any_body_gives_a_message_or_a_malformed_message_error_and_nothing_else(headers, body):
    try:
        message = parse_message(headers, body, 150)
    except MalformedMessage:
        return
    assert isinstance(message.body, dict)
    assert message.subject == message.subject.lower()
    assert json.loads(json.dumps(message.body, allow_nan=False)) == message.body  # storable as is


def test_message_keys_are_unique_per_message_and_fit_the_column():
    assert message_key({"message-id": "T_1@@session-a@@1"}) == "T_1@@session-a@@1"
    assert message_key({}) != message_key({})
    assert len(message_key({"message-id": "x" * 1000})) <= 255
    assert "\x00" not in message_key({"message-id": "a\x00b"})


def test_a_stored_message_is_run_again_through_the_registry():
    seen = []
    registry = HandlerRegistry("message subject")
    registry.register("pool.created", seen.append)
    headers, body = subject_message("pool.created")
    stored = {"subject": "pool.created", "headers": headers, "body": json.loads(body)}
    handle_stored_message(QueuedEvent(1, "candlepin.message", "m", stored, 0, None), registry)
    assert isinstance(seen[0], CandlepinMessage)
    assert seen[0].body == stored["body"]
    with pytest.raises(LookupError, match=r"no message handler is registered for subject 'pool\.deleted'"):
        handle_stored_message(
            QueuedEvent(2, "candlepin.message", "m", {**stored, "subject": "pool.deleted"}, 0, None), registry
        )
    requeued_malformed = {"headers": {}, "raw_body": "\\xff", "body_bytes": 1}
    with pytest.raises(MalformedMessage):
        handle_stored_message(QueuedEvent(3, "candlepin.message", "m", requeued_malformed, 0, None), registry)


# -- registry ----------------------------------------------------------------------------------


def test_message_handler_registers_lower_cased_subjects_and_refuses_a_second_function():
    previous = message_handlers.reset()
    try:

        @katello_events.message_handler("Pool.Created")
        def first(message) -> None: ...

        assert message_handlers.get("pool.created") is first

        with pytest.raises(ValueError, match="already has a handler"):

            @katello_events.message_handler("pool.created")
            def second(message) -> None: ...

    finally:
        message_handlers.reset(previous)


def test_the_public_api_is_importable_without_models():
    assert katello_events.CandlepinMessage is CandlepinMessage
    assert "message_handler" in katello_events.__all__


# -- stomp glue and the probe ------------------------------------------------------------------


def test_ack_frames_escape_their_id_as_stomp_1_2_says():
    assert _ack_frame("T_a@@session-x@@1") == b"ACK\nid:T_a@@session-x@@1\n\n\x00"
    assert _ack_frame("a:b\nc") == b"ACK\nid:a\\cb\\nc\n\n\x00"


def test_the_depth_probe_reads_rabbitmq_and_jolokia_and_never_guesses(caplog):
    with fake_management_api({"messages": 7, "name": "katello.candlepin"}) as url:
        assert DepthProbe(url).read() == 7
        assert DepthProbe(url.replace("s3cr3t", "wrong")).read() is None  # 401
    with fake_management_api({"value": 3}) as url:
        assert DepthProbe(url).read() == 3
    with fake_management_api({"status": 200}) as url:
        assert DepthProbe(url).read() is None
    caplog.set_level(logging.WARNING)
    assert DepthProbe(f"http://monitor:s3cr3t@127.0.0.1:{free_port()}/api/queues/%2F/q").read() is None
    assert "s3cr3t" not in caplog.text
    assert "queue depth probe" in caplog.text
    assert [depth_from(d) for d in ({"messages": -1}, {"messages": True}, [], {"value": 2})] == [None, None, None, 2]


# -- system checks -----------------------------------------------------------------------------


def candlepin_check_ids(tmp_path, **options) -> list[str]:
    handlers = {
        "candlepin_events": {"BACKEND": "katello_events.handlers.candlepin.CandlepinHandler", "OPTIONS": options}
    }
    with override_settings(KATELLO_EVENTS={"LOCK_FILE": tmp_path / "x.lock", "HANDLERS": handlers}):
        return sorted(m.id for m in run_checks() if m.id.startswith("katello_events."))


def test_the_default_and_a_full_configuration_pass_the_checks(tmp_path):
    cert = tmp_path / "client.pem"
    cert.write_text("")
    assert candlepin_check_ids(tmp_path) == []
    assert candlepin_check_ids(tmp_path, BROKER_URL="stomp+ssl://a:1,stomp+ssl://b:2", SSL_CERT=str(cert)) == []


@pytest.mark.parametrize("url", ["", "http://h:1", "stomp://u:p@h:0", None, "stomp://h:1,,"])
def test_e006_no_usable_broker_url(tmp_path, url):
    assert candlepin_check_ids(tmp_path, BROKER_URL=url) == ["katello_events.E006"]


def test_e006_says_what_is_wrong_with_a_hint_and_no_password(tmp_path):
    handlers = {
        "candlepin_events": {
            "BACKEND": "katello_events.handlers.candlepin.CandlepinHandler",
            "OPTIONS": {"BROKER_URL": "amqp://katello:hunter2@broker:5672"},
        }
    }
    with override_settings(KATELLO_EVENTS={"LOCK_FILE": tmp_path / "x.lock", "HANDLERS": handlers}):
        [message] = [m for m in run_checks() if m.id == "katello_events.E006"]
    assert "'candlepin_events'" in message.msg
    assert "stomp://" in message.hint
    assert "hunter2" not in message.msg + message.hint


@pytest.mark.parametrize(
    "options",
    [
        {"PREFETCH": -1},
        {"TYPO": 1},
        {"INBOX": "yes"},
        {"BROKER_URL": "stomp+ssl://h:1", "SSL_CERT": "/no/such/cert.pem"},
    ],
)
def test_e007_other_candlepin_options(tmp_path, options):
    assert candlepin_check_ids(tmp_path, **options) == ["katello_events.E007"]
