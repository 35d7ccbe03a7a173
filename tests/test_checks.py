"""System checks: each ID fires on the configuration it describes, and a sane one is clean."""

from __future__ import annotations

import os

import pytest
from django.core.checks import run_checks
from django.test import override_settings


def ids(config) -> list[str]:
    with override_settings(KATELLO_EVENTS=config):
        return sorted(m.id for m in run_checks() if m.id and m.id.startswith("katello_events."))


def test_sane_configuration_is_clean(tmp_path):
    assert ids({"LOCK_FILE": tmp_path / "a" / "b.lock"}) == []


@pytest.mark.parametrize(
    "handlers",
    [{"x": "not a dict"}, {"x": {"OPTIONS": {}}}, {"x": {"BACKEND": "a.B", "OPTIONS": ["no"]}}, ["x"]],
)
def test_e001_handlers_malformed(tmp_path, handlers):
    assert ids({"LOCK_FILE": tmp_path / "x.lock", "HANDLERS": handlers}) == ["katello_events.E001"]


def test_every_error_has_a_hint(tmp_path):
    from django.core.checks import run_checks

    with override_settings(KATELLO_EVENTS={"LOCK_FILE": tmp_path / "x.lock", "STANDBY_INTERVAL": 0}):
        assert all(m.hint for m in run_checks() if m.id.startswith("katello_events."))


def test_e001_setting_not_a_dict():
    with override_settings(KATELLO_EVENTS=["nope"]):
        assert [m.id for m in run_checks() if m.id.startswith("katello_events.")] == ["katello_events.E001"]


@pytest.mark.parametrize("backend", ["no.such.module.Handler", "katello_events.conf.get_config"])
def test_e002_bad_handler_backend(tmp_path, backend):
    assert ids({"LOCK_FILE": tmp_path / "x.lock", "HANDLERS": {"x": {"BACKEND": backend}}}) == ["katello_events.E002"]


def test_e003_lock_file_is_a_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("")
    link = tmp_path / "runner.lock"
    link.symlink_to(target)
    assert ids({"LOCK_FILE": link}) == ["katello_events.E003"]


def test_e003_lock_folder_not_writable(tmp_path):
    if os.geteuid() == 0:
        # root writes anywhere; a regular file in the path is unwritable for everyone.
        blocker = tmp_path / "file"
        blocker.write_text("")
        assert ids({"LOCK_FILE": blocker / "runner.lock"}) == ["katello_events.E003"]
    else:
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o500)
        assert ids({"LOCK_FILE": folder / "runner.lock"}) == ["katello_events.E003"]


@pytest.mark.parametrize("value", [0, -1, "2", True, None])
def test_e004_intervals_must_be_positive_numbers(tmp_path, value):
    assert ids({"LOCK_FILE": tmp_path / "x.lock", "HEARTBEAT_INTERVAL": value}) == ["katello_events.E004"]


def test_e005_details_audience(tmp_path):
    assert ids({"LOCK_FILE": tmp_path / "x.lock", "DETAILS_VISIBLE_TO": "admins"}) == ["katello_events.E005"]


def test_e015_unknown_key_says_what_was_meant(tmp_path):
    from django.core.checks import run_checks

    with override_settings(KATELLO_EVENTS={"LOCK_FILE": tmp_path / "x.lock", "HEARTBEAT": 1}):
        (message,) = [m for m in run_checks() if m.id.startswith("katello_events.")]
    assert message.id == "katello_events.E015"
    assert message.msg == "Unknown KATELLO_EVENTS key 'HEARTBEAT' (did you mean 'HEARTBEAT_INTERVAL'?)"


def test_w002_stale_after_too_close_to_heartbeat(tmp_path):
    config = {"LOCK_FILE": tmp_path / "x.lock", "HEARTBEAT_INTERVAL": 2.0, "STALE_AFTER": 4.0}
    assert ids(config) == ["katello_events.W002"]


@pytest.mark.parametrize("setting", [0, -5, "1000", True, {"katello_events": 0}, {"default": "x"}])
def test_e013_queue_depth_thresholds(tmp_path, setting):
    assert ids({"LOCK_FILE": tmp_path / "x.lock", "QUEUE_DEPTH_WARNING": setting}) == ["katello_events.E013"]


@pytest.mark.parametrize("setting", [None, 1, {"katello_events": 5000, "default": None}])
def test_valid_queue_depth_thresholds(tmp_path, setting):
    assert ids({"LOCK_FILE": tmp_path / "x.lock", "QUEUE_DEPTH_WARNING": setting}) == []


def test_e004_covers_the_ping_timeout(tmp_path):
    assert ids({"LOCK_FILE": tmp_path / "x.lock", "PING_TIMEOUT": 0}) == ["katello_events.E004"]


def test_w004_sqlite_with_autostart_warns(tmp_path):
    from katello_events.checks.status import check_status_settings

    sqlite = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "x"}}
    warned = check_status_settings({"AUTOSTART": True, "QUEUE_DEPTH_WARNING": 1}, sqlite)
    assert [m.id for m in warned] == ["katello_events.W004"]
    assert check_status_settings({"AUTOSTART": False, "QUEUE_DEPTH_WARNING": 1}, sqlite) == []


def test_e016_metrics_audience(tmp_path):
    assert ids({"LOCK_FILE": tmp_path / "x.lock", "METRICS_VISIBLE_TO": "robots"}) == ["katello_events.E016"]


def test_w005_a_password_in_an_option_without_the_redacting_filter(tmp_path):
    handlers = {
        "candlepin_events": {
            "BACKEND": "katello_events.handlers.candlepin.CandlepinHandler",
            "OPTIONS": {"BROKER_URL": "stomp://guest:s3cret@127.0.0.1:61613"},
        }
    }
    config = {"LOCK_FILE": tmp_path / "x.lock", "HANDLERS": handlers}
    with override_settings(DEFAULT_EXCEPTION_REPORTER_FILTER="django.views.debug.SafeExceptionReporterFilter"):
        assert ids(config) == ["katello_events.W005"]
        without_password = {"candlepin_events": {**handlers["candlepin_events"], "OPTIONS": {}}}
        assert ids({**config, "HANDLERS": without_password}) == []
    with override_settings(DEFAULT_EXCEPTION_REPORTER_FILTER="katello_events.redaction.SecretRedactingReporterFilter"):
        assert ids(config) == []


def test_the_redacting_filter_hides_passwords_on_the_error_page_settings_and_frames(rf):
    import sys

    from django.views.debug import ExceptionReporter

    def secret() -> str:  # never whole in this file or a frame: the page quotes both
        return "".join(["s3", "cret"])

    url = f"stomp://guest:{secret()}@broker:61613"

    def fail(broker_url: str, options: dict) -> None:
        raise ConnectionError("cannot connect")

    with override_settings(
        DEFAULT_EXCEPTION_REPORTER_FILTER="katello_events.redaction.SecretRedactingReporterFilter",
        DEBUG=True,
        KATELLO_EVENTS_BROKER=url,
    ):
        try:
            fail(url, {"BROKER_URL": url})
        except ConnectionError:
            html = ExceptionReporter(rf.get("/"), *sys.exc_info()).get_traceback_html()
    assert secret() not in html
    assert "guest:********@broker" in html
