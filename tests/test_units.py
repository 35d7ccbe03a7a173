"""Fast unit tests: settings, autostart rules, redaction."""

from __future__ import annotations

import dataclasses
import os

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from katello_events.autostart import autostart_blocker, management_command
from katello_events.conf import DEFAULTS, Config, default_lock_file, get_config, handler_specs, runtime_folder
from katello_events.redaction import redact
from katello_events.runner import Runner


def test_defaults_apply_and_override_settings_clears_the_cache(tmp_path):
    assert get_config()["HEARTBEAT_INTERVAL"] > 0
    with override_settings(KATELLO_EVENTS={"STALE_AFTER": 42.0, "LOCK_FILE": tmp_path / "x.lock"}):
        config = get_config()
        assert config["STALE_AFTER"] == 42.0
        assert config["LOCK_FILE"] == str(tmp_path / "x.lock")
        assert config["STANDBY_INTERVAL"] == DEFAULTS["STANDBY_INTERVAL"]
    assert get_config()["STALE_AFTER"] != 42.0


def test_the_config_is_typed_read_only_and_still_a_mapping(tmp_path):
    with override_settings(KATELLO_EVENTS={"STALE_AFTER": 42.0, "LOCK_FILE": tmp_path / "x.lock"}):
        config = get_config()
    assert isinstance(config, Config)
    assert config.STALE_AFTER == 42.0 == config["STALE_AFTER"]
    assert {**config}["STOP_TIMEOUT"] == config.STOP_TIMEOUT
    assert config.get("NOPE") is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.STALE_AFTER = 1.0  # type: ignore[misc]  # the point: it cannot be changed
    assert dataclasses.replace(config, STALE_AFTER=7.0).STALE_AFTER == 7.0


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("HEARTBEAT_INTERVALL", "HEARTBEAT_INTERVAL"), ("LOCKFILE", "LOCK_FILE"), ("STAL_TIMEOUT", "STALL_TIMEOUT")],
)
def test_a_misspelt_key_fails_at_start_up_with_a_suggestion(tmp_path, key, suggestion):
    with override_settings(KATELLO_EVENTS={key: 1, "LOCK_FILE": tmp_path / "x.lock"}):
        with pytest.raises(
            ImproperlyConfigured, match=f"Unknown KATELLO_EVENTS key '{key}' .did you mean '{suggestion}'"
        ):
            get_config()
        with pytest.raises(ImproperlyConfigured):
            Runner()


def test_handler_specs_default_to_both_slots_with_options():
    with override_settings(KATELLO_EVENTS={}):
        specs = handler_specs()
    assert list(specs) == ["katello_events", "candlepin_events"]
    assert all(spec["OPTIONS"] == {} for spec in specs.values())


def test_default_lock_file_is_per_database():
    first = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "one"}}
    second = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "two"}}
    path_one, path_two = default_lock_file(first), default_lock_file(second)
    assert path_one != path_two
    assert os.path.dirname(path_one) == runtime_folder()


@pytest.mark.parametrize(
    ("argv", "environ", "blocked"),
    [
        (["/venv/bin/gunicorn", "-c", "g.py", "app:application"], {}, None),
        (["/usr/sbin/uwsgi", "--ini", "x.ini"], {}, None),
        (["manage.py", "migrate"], {}, "management command 'migrate'"),
        (["manage.py", "shell"], {}, "management command 'shell'"),
        (["manage.py", "test"], {}, "management command 'test'"),
        (["/x/django-admin", "check"], {}, "management command 'check'"),
        (["/venv/lib/python3.11/site-packages/django/__main__.py", "shell"], {}, "management command 'shell'"),
        (["manage.py", "runserver"], {}, "runserver's reloader parent (the child serves requests)"),
        (["manage.py", "runserver"], {"RUN_MAIN": "true"}, None),
        (["manage.py", "runserver", "--noreload"], {}, None),
        (["manage.py"], {}, "management command 'help'"),
    ],
)
def test_autostart_rules(argv, environ, blocked):
    assert autostart_blocker(argv, environ, testing=False) == blocked


def test_autostart_is_blocked_in_tests_and_when_disabled():
    assert autostart_blocker(["gunicorn"], {}) == "running tests"
    assert autostart_blocker(["gunicorn"], {}, autostart=False, testing=False) == "KATELLO_EVENTS['AUTOSTART'] is False"


def test_management_command_detection():
    assert management_command(["gunicorn"]) is None
    assert management_command([]) is None
    assert management_command(["./manage.py", "run_event_daemon"]) == "run_event_daemon"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stomp://katello:s3cr3t@broker:61613 refused", "stomp://katello:********@broker:61613 refused"),
        ("could not connect: host=db password=hunter2 user=x", "could not connect: host=db password=******** user=x"),
        ("{'passcode': 'abc'}", "{'passcode': '********'}"),
        ("nothing secret here", "nothing secret here"),
        # a password with @ in it: hidden whole, up to the last @ of the URL
        ("stomp://guest:p@ss@host:61613 down", "stomp://guest:********@host:61613 down"),
        ("['stomp://a:x@y@h1', 'stomp://a:z@h2']", "['stomp://a:********@h1', 'stomp://a:********@h2']"),
        # percent-encoded inside a URL, and a whole URL percent-encoded
        ("amqp://bob:s3%40cr3t@mq/vhost", "amqp://bob:********@mq/vhost"),
        (
            "next=stomp%3A%2F%2Fbob%3As3cr3t%40broker%3A61613&x=1",
            "next=stomp%3A%2F%2Fbob%3A********%40broker%3A61613&x=1",
        ),
        # keys with a prefix or a suffix
        ("DB_PASSWORD=hunter2 PGPASSWORD=s3cr3t", "DB_PASSWORD=******** PGPASSWORD=********"),
        ('{"SECRET_KEY": "s3cr3t", "api_key": "k"}', '{"SECRET_KEY": "********", "api_key": "********"}'),
        ("tokens left: 5", "tokens left: 5"),
    ],
)
def test_redact(text, expected):
    assert redact(text) == expected
    assert "s3cr3t" not in redact(text)
    assert "hunter2" not in redact(text)


def test_a_long_traceback_is_redacted_before_it_is_cut():
    from katello_events.event_queue.consumer import MAX_ERROR_LENGTH, _error_text

    # Long enough that the kept tail starts at "://guest:...", past the scheme a pattern needs.
    tail = "://guest:s3cr3t@broker:61613 "
    padding = "x" * (MAX_ERROR_LENGTH - len(tail) - 1)
    try:
        raise RuntimeError("stomp" + tail + padding)
    except RuntimeError as exc:
        text = _error_text(exc)
    assert "s3cr3t" not in text
    assert len(text) <= MAX_ERROR_LENGTH


def test_log_messages_cannot_forge_lines(caplog):
    from katello_events.log import get_logger

    with caplog.at_level("INFO", logger="katello_events.test"):
        get_logger("katello_events.test").info("no handler for %s", "pool.created\n2026 ERROR forged\x1b[31m")
    (record,) = caplog.records
    assert record.getMessage() == "no handler for pool.created\\n2026 ERROR forged\\x1b[31m"


@pytest.mark.parametrize("library", ["stomp.py", "psycopg", "psycopg2"])
def test_the_libraries_loggers_are_redacted_too(caplog, library):
    import logging

    with caplog.at_level("WARNING", logger=library):
        logging.getLogger(library).warning("connecting to %s", "stomp://guest:s3cr3t@broker:61613")
    (record,) = caplog.records
    assert "s3cr3t" not in record.getMessage()
