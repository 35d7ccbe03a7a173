"""The status document and its surfaces (/api/ping, /about/, manage.py ping) from real rows."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import OperationalError
from django.test import override_settings
from django.utils import timezone

from katello_events.models import HandlerStatus
from katello_events.status import report
from tests.factories import make_row

pytestmark = pytest.mark.django_db

NAMES = ["katello_events", "candlepin_events"]


def services():
    return report.collect_status()["services"]


def test_no_row_yet_is_fail_never_started():
    document = report.collect_status()
    assert document["status"] == "FAIL"
    assert set(document["services"]) == set(NAMES)
    assert document["services"]["katello_events"]["message"] == "Not running (never started)"
    assert document["services"]["katello_events"]["running"] is False


def test_running_rows_are_ok_with_katello_style_message():
    make_row("katello_events", queue_depth=3)
    make_row("candlepin_events")
    document = report.collect_status()
    assert document["status"] == "ok"
    entry = document["services"]["katello_events"]
    assert entry["message"] == "12 Processed, 1 Failed, 3 in queue"
    assert document["services"]["candlepin_events"]["message"] == "12 Processed, 1 Failed"
    assert entry["runner"]["pid"] == 4242
    assert entry["runner"]["hostname"] == "host-a"
    assert (entry["processed_count"], entry["failed_count"], entry["queue_depth"], entry["running"]) == (12, 1, 3, True)
    assert isinstance(entry["duration_ms"], str)


def test_stale_heartbeat_reads_not_running():
    make_row("katello_events", age=60)
    make_row("candlepin_events")
    entry = services()["katello_events"]
    assert entry["status"] == "FAIL"
    assert entry["running"] is False
    assert entry["message"].startswith("Not running (no heartbeat for 60s")


def test_a_clean_stop_reads_not_running_at_once_as_a_handover_then_fail():
    make_row("katello_events", running=False, age=0.2)
    make_row("candlepin_events", running=False, age=30)
    document = report.collect_status()
    handing_over = document["services"]["katello_events"]
    assert (handing_over["status"], handing_over["running"]) == ("WARN", False)
    assert handing_over["message"] == "Not running: handing over to the next runner"
    stopped = document["services"]["candlepin_events"]
    assert (stopped["status"], stopped["message"]) == ("FAIL", "Not running")


def test_a_stop_with_a_problem_is_fail_at_once():
    make_row("katello_events", running=False, age=0.2, problem="handlers did not stop")
    assert services()["katello_events"]["status"] == "FAIL"


def test_a_problem_is_fail_with_its_text():
    make_row("katello_events", problem="database unreachable: OperationalError: boom")
    entry = services()["katello_events"]
    assert entry["status"] == "FAIL"
    assert entry["running"] is True
    assert entry["message"] == "database unreachable: OperationalError: boom"


def test_a_queue_deeper_than_its_threshold_is_warn_but_not_fail():
    make_row("katello_events", queue_depth=1500)
    make_row("candlepin_events", queue_depth=None)
    document = report.collect_status()
    entry = document["services"]["katello_events"]
    assert entry["status"] == "WARN"
    assert entry["message"] == "12 Processed, 1 Failed, 1500 in queue (queue deeper than 1000)"
    assert entry["queue_depth_threshold"] == 1000
    assert document["status"] == "ok", "WARN alone does not fail the ping"
    assert document["services"]["candlepin_events"]["status"] == "ok", "unknown depth never warns"


@pytest.mark.parametrize(
    ("setting", "expected"),
    [(2000, "ok"), ({"katello_events": 100}, "WARN"), ({"default": 100}, "WARN"), (None, "ok")],
)
def test_thresholds_per_handler_or_default(setting, expected):
    make_row("katello_events", queue_depth=1500)
    with override_settings(KATELLO_EVENTS={"QUEUE_DEPTH_WARNING": setting}):
        assert services()["katello_events"]["status"] == expected


@pytest.mark.django_db(transaction=True)
def test_a_slow_database_makes_the_ping_fail_fast_instead_of_hanging():
    import threading
    import time

    from django.db import connections

    make_row("katello_events")
    locked, release = threading.Event(), threading.Event()

    def hold_an_exclusive_lock():
        with connections["default"].cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("LOCK TABLE katello_events_handlerstatus IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(30)
            cursor.execute("ROLLBACK")
        connections["default"].close()

    holder = threading.Thread(target=hold_an_exclusive_lock)
    holder.start()
    try:
        assert locked.wait(10)
        with override_settings(KATELLO_EVENTS={"PING_TIMEOUT": 0.5}):
            started = time.monotonic()
            document = report.collect_status()
            took = time.monotonic() - started
    finally:
        release.set()
        holder.join(30)
    assert document["status"] == "FAIL"
    assert "statement timeout" in document["services"]["katello_events"]["message"]
    assert took < 20, "bounded by PING_TIMEOUT, not by the lock"


def test_unreachable_database_is_fail_and_redacted(monkeypatch):
    def broken(*args, **kwargs):
        raise OperationalError('connection to server failed: password="hunter2" rejected')

    monkeypatch.setattr(HandlerStatus.objects, "filter", broken)
    document = report.collect_status()
    assert document["status"] == "FAIL"
    assert all(s["message"].startswith("database unreachable") for s in document["services"].values())
    assert "hunter2" not in json.dumps(document)


def test_public_document_hides_hosts_pids_and_errors():
    make_row("katello_events", problem="broker unreachable: stomp://u:secret@h:61613", last_error="boom")
    make_row("candlepin_events")
    public = report.public_document(report.collect_status())
    text = json.dumps(public)
    for hidden in ("host-a", "4242", "secret", "boom", "runner"):
        assert hidden not in text
    assert public["services"]["katello_events"]["message"] == "broker unreachable"
    assert public["services"]["candlepin_events"]["processed_count"] == 12


class TestPingView:
    def test_anonymous_gets_statuses_and_counts_only(self, client):
        make_row("katello_events")
        make_row("candlepin_events")
        response = client.get("/api/ping")
        assert response.status_code == 200
        assert "no-cache" in response["Cache-Control"]
        body = response.json()
        assert body["status"] == "ok"
        assert body["services"]["katello_events"]["processed_count"] == 12
        assert "runner" not in body["services"]["katello_events"]

    def test_staff_gets_details_and_fail_is_503(self, admin_client):
        make_row("katello_events", running=False, age=30)
        response = admin_client.get("/api/ping")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "FAIL"
        assert body["services"]["katello_events"]["runner"]["pid"] == 4242

    @override_settings(KATELLO_EVENTS={"DETAILS_VISIBLE_TO": "nobody"})
    def test_details_can_be_hidden_from_everyone(self, admin_client):
        make_row("katello_events")
        assert "runner" not in admin_client.get("/api/ping").json()["services"]["katello_events"]


def test_about_page_shows_the_backend_system_status_table(admin_client, client):
    make_row("katello_events", queue_depth=5)
    make_row("candlepin_events", running=False, age=30)
    page = admin_client.get("/about/")
    assert page.status_code == 503
    html = page.content.decode()
    assert "Backend System Status" in html
    assert "12 Processed, 1 Failed, 5 in queue" in html
    assert "host-a (pid 4242)" in html
    assert "host-a" not in client.get("/about/").content.decode()


def test_ping_command_text_json_and_exit_status():
    make_row("katello_events")
    make_row("candlepin_events")
    out = StringIO()
    call_command("ping", stdout=out)
    text = out.getvalue()
    assert "Status:          ok" in text
    assert "Server Response: Duration:" in text

    out = StringIO()
    call_command("ping", "--json", stdout=out)
    document = json.loads(out.getvalue())
    assert document["services"]["katello_events"]["runner"]["pid"] == 4242

    HandlerStatus.objects.filter(name="candlepin_events").update(
        running=False, heartbeat_at=timezone.now() - timedelta(seconds=30)
    )
    with pytest.raises(SystemExit) as exit_info:
        call_command("ping", stdout=StringIO())
    assert exit_info.value.code == 1


def test_requests_in_a_test_run_start_no_runner(client):
    from katello_events.lifecycle import current_runner

    client.get("/api/ping")
    assert current_runner() is None


def test_missing_tables_read_not_migrated_with_what_to_do():
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE katello_events_handlerstatus RENAME TO katello_events_handlerstatus_away")
    try:
        document = report.collect_status()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE katello_events_handlerstatus_away RENAME TO katello_events_handlerstatus")
    assert {s["message"] for s in document["services"].values()} == {"not migrated: run manage.py migrate"}
    public = report.public_document(document)
    assert {s["message"] for s in public["services"].values()} == {"not migrated"}


def test_sqlite_without_tables_reads_not_migrated_too():
    import sqlite3

    from katello_events.errors import is_missing_table

    database = sqlite3.connect(":memory:")
    try:
        with pytest.raises(sqlite3.OperationalError) as raised:
            database.execute("SELECT * FROM katello_events_handlerstatus")
    finally:
        database.close()
    assert is_missing_table(OperationalError(str(raised.value)))


@pytest.mark.parametrize(
    ("message", "public"),
    [
        ("database unreachable: connection to db.internal:5432 refused", "database unreachable"),
        ("broker unreachable: stomp://guest:********@mq.internal:61613: refused", "broker unreachable"),
        ("stalled: handler katello_events made no progress for 300s on event 42", "stalled"),
        ("deposed: another runner has taken the role", "deposed"),
        ("restarting in 4s after: ValueError: customer acme.example rejected", "restarting"),
        ("Not running: handlers did not stop; the runner lock is held until this process exits", "Not running"),
        ("Not running: handed over: RSS 900 MB above MAX_RSS_MB 512", "Not running"),
        ("election lock unusable: /tmp/shared is writable by others", "election lock unusable"),
        ("Not running: election lock unusable: /tmp/shared is writable by others", "election lock unusable"),
        ("not migrated: run manage.py migrate", "not migrated"),
        # A handler's own report_problem text is never shown, whatever it looks like.
        ("customer acme.example: API key rejected", "handler problem"),
        ("Pulp at pulp.internal is down", "handler problem"),
        ("Not running", "Not running"),
    ],
)
def test_the_public_message_is_a_fixed_category_never_free_text(message, public):
    assert report.public_category(message) == public
    entry = {"status": "FAIL", "message": message, "problem": message, "duration_ms": "1"}
    assert report.public_document({"status": "FAIL", "services": {"x": entry}})["services"]["x"]["message"] == public
