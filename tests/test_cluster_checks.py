"""System checks of the election backend and the memory watchdog settings (E008-E012, W003)."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import override_settings

from katello_events.checks import check_settings


def messages(config, databases=None):
    # Overriding DATABASES warns (and warnings are errors here): patch the dict in place instead.
    saved = dict(settings.DATABASES)
    settings.DATABASES.update(databases or {})
    try:
        with override_settings(KATELLO_EVENTS=config):
            # Only our check: Django's own model checks would open every database of DATABASES.
            return [m for m in check_settings() if m.id and m.id.startswith("katello_events.")]
    finally:
        settings.DATABASES.clear()
        settings.DATABASES.update(saved)


def ids(config, databases=None) -> list[str]:
    return sorted(m.id for m in messages(config, databases))


def test_a_sane_postgres_configuration_is_clean(tmp_path):
    config = {"LOCK_BACKEND": "postgres", "LOCK_KEY": "site", "MAX_RSS_MB": 512, "RECYCLE_ON_HANDOVER": False}
    assert ids(config) == []


def test_e008_unknown_backend():
    assert ids({"LOCK_BACKEND": "redis"}) == ["katello_events.E008"]


@pytest.mark.parametrize("alias", ["nope", None])
def test_e009_lock_database_not_a_postgresql_alias(alias):
    assert ids({"LOCK_BACKEND": "postgres", "LOCK_DATABASE": alias}) == ["katello_events.E009"]


def test_e009_lock_database_on_sqlite():
    databases = {**settings.DATABASES, "lite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
    assert ids({"LOCK_BACKEND": "postgres", "LOCK_DATABASE": "lite"}, databases) == ["katello_events.E009"]


def test_w003_lock_database_behind_a_transaction_pool():
    pooled = {**settings.DATABASES["default"], "DISABLE_SERVER_SIDE_CURSORS": True}
    found = messages({"LOCK_BACKEND": "postgres"}, {**settings.DATABASES, "default": pooled})
    assert [m.id for m in found] == ["katello_events.W003"]
    assert "PgBouncer" in found[0].msg


@pytest.mark.parametrize("key", [True, 2**63, "", 1.5, ["k"]])
def test_e010_bad_lock_key(key):
    assert ids({"LOCK_BACKEND": "postgres", "LOCK_KEY": key}) == ["katello_events.E010"]


@pytest.mark.parametrize("limit", [0, -1, "500", True])
def test_e011_bad_max_rss(limit):
    assert ids({"MAX_RSS_MB": limit}) == ["katello_events.E011"]


def test_e012_recycle_not_a_bool():
    assert ids({"RECYCLE_ON_HANDOVER": "yes"}) == ["katello_events.E012"]


def test_every_new_message_has_a_hint():
    found = messages({"LOCK_BACKEND": "postgres", "LOCK_DATABASE": "x", "LOCK_KEY": "", "MAX_RSS_MB": 0})
    assert len(found) == 3
    assert all(m.hint for m in found)
