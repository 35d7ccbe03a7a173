"""The driver module: the same driver as Django's, autocommit connections, notifications, errors."""

from __future__ import annotations

import select

import pytest
from django.core.checks import Error
from django.db import connection

from katello_events import pgdriver
from katello_events.checks import check_driver
from katello_events.libpq import libpq_params
from tests.cluster_support import admin_connection, terminate

pytestmark = pytest.mark.django_db(transaction=True)


def test_our_connections_use_the_driver_django_uses():
    assert pgdriver.name() == connection.Database.__name__
    assert pgdriver.describe().startswith(f"{pgdriver.name()} ")
    assert pgdriver.libpq_version() >= 100000
    assert issubclass(pgdriver.Error, Exception)
    assert pgdriver.Error is connection.Database.Error


def test_connect_gives_an_autocommit_connection_outside_django():
    own = pgdriver.connect(**libpq_params(connection.settings_dict, application_name="katello_events test"))
    try:
        assert own.autocommit
        assert not own.closed
        with own.cursor() as cursor:
            cursor.execute("SELECT current_setting('application_name'), %s::int + 1", (41,))
            assert cursor.fetchone() == ("katello_events test", 42)
    finally:
        own.close()
    assert own.closed


def test_notifications_are_taken_without_blocking_and_once():
    listener = pgdriver.NotifyConnection(libpq_params(connection.settings_dict), "katello events test")
    sender = admin_connection(connection.settings_dict["NAME"])
    try:
        assert listener.take() == []
        with sender.cursor() as cursor:
            cursor.execute("""NOTIFY "katello events test", 'a'""")
            cursor.execute("""NOTIFY "katello events test", 'b'""")
        ready, _, _ = select.select([listener], [], [], 5)
        assert ready
        taken = listener.take()
        if len(taken) < 2:  # the second one may come in a later packet
            select.select([listener], [], [], 5)
            taken += listener.take()
        assert taken == ["katello events test"] * 2
        assert listener.take() == []
    finally:
        sender.close()
        listener.close()
    assert listener.closed


def test_a_killed_listener_session_raises_a_driver_error():
    listener = pgdriver.NotifyConnection(libpq_params(connection.settings_dict), "katello_events_test")
    admin = admin_connection(connection.settings_dict["NAME"])
    try:
        with listener.connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (backend,) = cursor.fetchone()
        assert terminate(admin, backend)
        # Both drivers first read the server's farewell, then fail on the closed socket.
        # PT011: which class is the driver's business (is_driver_error() below); PT012: it takes a
        # few reads before the closed socket fails.
        with pytest.raises(Exception) as raised:  # noqa: PT011, PT012
            for _ in range(10):
                select.select([listener], [], [], 1)
                listener.take()
        assert pgdriver.is_driver_error(raised.value)
    finally:
        admin.close()
        listener.close()


def test_only_driver_errors_are_driver_errors():
    assert not pgdriver.is_driver_error(ValueError("no"))
    assert pgdriver.is_driver_error(pgdriver.Error("yes"))


def test_e014_without_a_driver_names_both_extras(monkeypatch):
    assert check_driver() == []
    monkeypatch.setattr(pgdriver, "name", lambda: None)
    [message] = check_driver()
    assert isinstance(message, Error)
    assert message.id == "katello_events.E014"
    assert "'default'" in message.msg
    assert "katello_events[psycopg]" in message.hint
    assert "katello_events[psycopg2]" in message.hint


def test_e014_is_quiet_without_postgresql(monkeypatch):
    monkeypatch.setattr(pgdriver, "name", lambda: None)
    assert check_driver({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}) == []
