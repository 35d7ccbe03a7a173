"""A new user's first hour (issue 15): mistakes are loud where the user looks, and say what to do.

A misspelt setting reads FAIL ``misconfigured`` on every surface (not a 500) and is logged at
start-up; a misspelt option says what was meant; a crash loop reads ``crashing``; hints link
to the published documentation; ``send_test_message`` builds Candlepin's messages; runserver
starts its runner without a request and a Ctrl-C marks the rows stopped.
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import re
import signal
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.apps import apps
from django.core.checks import run_checks
from django.core.management import CommandError, call_command
from django.test import override_settings

from katello_events import links
from katello_events.autostart import reloader_parent, serving_child
from katello_events.conf import config_error, get_config, setting, unknown_option_message
from katello_events.handlers.event_queue import EventQueueHandler
from katello_events.management.commands.send_test_message import candlepin_body, split_subject
from katello_events.models import HandlerStatus
from katello_events.status import report
from katello_events.supervisor import HandlerSlot
from tests.support import ROOT, alive, children, free_port, manage_args, wait_for

MISSPELT = {"LOCKFILE": "/run/myproject/x.lock", "HEARTBEAT_INTERVALL": 1.0}
DID_YOU_MEAN = "Unknown KATELLO_EVENTS key 'HEARTBEAT_INTERVALL' (did you mean 'HEARTBEAT_INTERVAL'?)"


# -- 1. a misspelt KATELLO_EVENTS key: FAIL "misconfigured" everywhere, never a 500 -----------------


def test_a_misspelt_key_is_refused_with_what_was_meant():
    with override_settings(KATELLO_EVENTS=MISSPELT):
        problem = config_error()
        assert problem is not None
        assert "Unknown KATELLO_EVENTS key 'LOCKFILE' (did you mean 'LOCK_FILE'?)" in problem
        assert DID_YOU_MEAN in problem
    assert config_error() is None


@pytest.mark.django_db
def test_the_ping_answers_misconfigured_rather_than_a_500(client, admin_client):
    with override_settings(KATELLO_EVENTS=MISSPELT):
        response = client.get("/api/ping")
        assert response.status_code == 503
        document = response.json()
        assert document["status"] == "FAIL"
        assert set(document["services"]) == {"katello_events", "candlepin_events"}
        assert {s["message"] for s in document["services"].values()} == {"misconfigured"}
        detailed = admin_client.get("/api/ping").json()
        for service in detailed["services"].values():
            assert service["message"].startswith("misconfigured: ")
            assert DID_YOU_MEAN in service["message"]


@pytest.mark.django_db
def test_the_about_page_says_misconfigured(client):
    with override_settings(KATELLO_EVENTS=MISSPELT):
        response = client.get("/about/")
    assert response.status_code == 503
    assert "misconfigured" in response.content.decode()


@pytest.mark.django_db
def test_the_metrics_answer_with_every_service_down(client):
    pytest.importorskip("prometheus_client")
    with override_settings(KATELLO_EVENTS=MISSPELT):
        response = client.get("/metrics")
    assert response.status_code == 200
    assert re.search(r'katello_events_up\{handler="katello_events"\} 0', response.content.decode())


def test_the_user_s_own_audience_still_counts_beside_a_misspelt_key():
    with override_settings(KATELLO_EVENTS={**MISSPELT, "DETAILS_VISIBLE_TO": "everyone"}):
        assert setting("DETAILS_VISIBLE_TO") == "everyone"
        assert setting("PING_TIMEOUT") == 2.0  # the default


@pytest.mark.django_db
def test_manage_py_ping_prints_the_error_and_exits_1():
    out = StringIO()
    with override_settings(KATELLO_EVENTS=MISSPELT), pytest.raises(SystemExit) as exited:
        call_command("ping", stdout=out)
    assert exited.value.code == 1
    assert DID_YOU_MEAN in out.getvalue()


def test_a_misspelt_key_is_logged_as_an_error_at_start_up(caplog):
    with override_settings(KATELLO_EVENTS=MISSPELT), caplog.at_level(logging.ERROR, "katello_events"):
        apps.get_app_config("katello_events").ready()
    (record,) = [r for r in caplog.records if "KATELLO_EVENTS is refused" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert DID_YOU_MEAN in record.getMessage()


def test_the_runner_is_not_started_with_a_misspelt_key(monkeypatch):
    from katello_events import lifecycle

    monkeypatch.setattr(lifecycle, "_autostart_checked_pid", None)
    monkeypatch.setattr(lifecycle, "autostart_blocker", lambda **kwargs: None)  # as in a web worker
    with override_settings(KATELLO_EVENTS=MISSPELT):
        assert lifecycle.autostart("test") is None
    assert lifecycle.current_runner() is None


# -- 1. a misspelt OPTIONS key: did you mean, at handler start and in the checks ----------------------


def test_the_supervisor_refuses_a_misspelt_option_saying_what_was_meant(caplog):
    slot = HandlerSlot(
        "katello_events", "katello_events.handlers.event_queue.EventQueueHandler", {"BATCHSIZE": 5}, get_config()
    )
    slot.start()
    assert slot.handler is None
    assert slot.last_error == "Handler 'katello_events': unknown OPTIONS key 'BATCHSIZE' (did you mean 'BATCH_SIZE'?)"
    snapshot = slot.snapshot()
    assert snapshot.running is False
    assert snapshot.problem.startswith("restarting in ")
    assert snapshot.problem.endswith("after: " + slot.last_error)
    assert "did you mean 'BATCH_SIZE'?" in caplog.text


def test_the_candlepin_slot_says_what_was_meant_too():
    slot = HandlerSlot(
        "candlepin_events", "katello_events.handlers.candlepin.CandlepinHandler", {"DESTINATON": "/q"}, get_config()
    )
    slot.start()
    assert slot.last_error == (
        "Handler 'candlepin_events': unknown OPTIONS key 'DESTINATON' (did you mean 'DESTINATION'?)"
    )


def test_option_names_come_from_the_handler_s_defaults():
    from katello_events.candlepin.options import DEFAULT_OPTIONS as CANDLEPIN_OPTIONS
    from katello_events.handlers.base import Handler
    from katello_events.handlers.candlepin import CandlepinHandler
    from katello_events.handlers.event_queue import DEFAULT_OPTIONS as QUEUE_OPTIONS

    assert set(EventQueueHandler.option_names()) == set(QUEUE_OPTIONS)
    assert set(CandlepinHandler.option_names()) == set(CANDLEPIN_OPTIONS)

    class Subclass(EventQueueHandler):
        pass

    assert set(Subclass.option_names()) == set(QUEUE_OPTIONS)
    assert Handler.option_names() is None  # a handler without defaults takes any option


def test_an_option_far_from_any_lists_the_known_ones():
    message = unknown_option_message("x", "ZZZ", ("BATCH_SIZE", "POLL_INTERVAL"))
    assert message == "Handler 'x': unknown OPTIONS key 'ZZZ' (known options: BATCH_SIZE, POLL_INTERVAL)"


def _handlers(queue_options=None, candlepin_options=None):
    return {
        "katello_events": {
            "BACKEND": "katello_events.handlers.event_queue.EventQueueHandler",
            "OPTIONS": queue_options or {},
        },
        "candlepin_events": {
            "BACKEND": "katello_events.handlers.candlepin.CandlepinHandler",
            "OPTIONS": {"BROKER_URL": "stomp://127.0.0.1:61613", **(candlepin_options or {})},
        },
    }


def _messages(tmp_path, handlers):
    with override_settings(KATELLO_EVENTS={"LOCK_FILE": tmp_path / "x.lock", "HANDLERS": handlers}):
        return [m for m in run_checks() if m.id.startswith("katello_events.")]


def test_e017_a_misspelt_event_queue_option(tmp_path):
    (message,) = _messages(tmp_path, _handlers(queue_options={"BATCHSIZE": 5}))
    assert message.id == "katello_events.E017"
    assert message.msg == "Handler 'katello_events': unknown OPTIONS key 'BATCHSIZE' (did you mean 'BATCH_SIZE'?)."
    assert links.DOCS_URL in message.hint


def test_e007_a_misspelt_candlepin_option_says_what_was_meant(tmp_path):
    (message,) = _messages(tmp_path, _handlers(candlepin_options={"DESTINATON": "/queue/x"}))
    assert message.id == "katello_events.E007"
    assert "unknown OPTIONS key 'DESTINATON' (did you mean 'DESTINATION'?)" in message.msg


# -- 5. a crash loop reads "crashing" --------------------------------------------------------------


def _row(problem: str, heartbeat_age: float) -> tuple[HandlerStatus, datetime]:
    now = datetime.now(UTC)
    row = HandlerStatus(
        name="katello_events", running=False, problem=problem, heartbeat_at=now - timedelta(seconds=heartbeat_age)
    )
    return row, now


def test_a_crash_loop_reads_crashing_not_a_clean_stop():
    problem = "restarting in 4s after: Handler 'katello_events': unknown OPTIONS key 'BATCHSIZE' (...)"
    row, now = _row(problem, heartbeat_age=0.5)
    entry = report.service_entry(row, now, 10.0, "1")
    assert entry["status"] == "FAIL"
    assert entry["message"] == f"crashing: {problem}"
    public = report.public_document({"status": "FAIL", "services": {"katello_events": entry}})
    assert public["services"]["katello_events"]["message"] == "crashing"


def test_a_crash_loop_whose_runner_died_reads_no_heartbeat():
    row, now = _row("restarting in 4s after: ValueError: x", heartbeat_age=30)
    entry = report.service_entry(row, now, 10.0, "1")
    assert entry["message"] == "Not running (no heartbeat for 30s)"


# -- 6. runserver: which process starts at once ---------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "environ", "child", "parent"),
    [
        (["manage.py", "runserver"], {"RUN_MAIN": "true"}, True, False),
        (["manage.py", "runserver"], {}, False, True),
        (["manage.py", "runserver", "--noreload"], {}, True, False),
        (["manage.py", "migrate"], {"RUN_MAIN": "true"}, False, False),
        (["gunicorn", "myproject.wsgi"], {}, False, False),
    ],
)
def test_runserver_processes(argv, environ, child, parent):
    assert serving_child(argv, environ) is child
    assert reloader_parent(argv, environ) is parent


# -- 8. hints link to the published documentation --------------------------------------------------


def test_one_documentation_url_everywhere():
    metadata = configparser.ConfigParser()
    metadata.read(ROOT / "setup.cfg")
    assert metadata["metadata"]["url"] == links.DOCS_URL
    assert links.DOCS_URL in metadata["metadata"]["project_urls"]
    assert f"site_url: {links.DOCS_URL}" in (ROOT / "mkdocs.yml").read_text()
    assert links.docs_url("candlepin", "options") == f"{links.DOCS_URL}candlepin/#options"


@pytest.mark.parametrize(
    "handlers",
    [
        {"x": "not a dict"},  # E001
        _handlers(candlepin_options={"BROKER_URL": "http://nope"}),  # E006
        _handlers(candlepin_options={"PREFETCH": -1}),  # E007
        _handlers(queue_options={"BATCHSIZE": 1}),  # E017
    ],
)
def test_hints_link_to_the_published_documentation_not_to_repository_paths(tmp_path, handlers):
    messages = _messages(tmp_path, handlers)
    assert messages
    for message in messages:
        assert not re.search(r"docs/\w+\.md", message.hint), message
    assert any(links.DOCS_URL in message.hint for message in messages)


# -- 3. send_test_message: Candlepin's message shape --------------------------------------------------


def test_send_test_message_shapes_the_message_as_candlepin_does():
    assert split_subject("pool.created") == ("POOL", "CREATED")
    assert split_subject("system_purpose_compliance.created") == ("SYSTEM_PURPOSE_COMPLIANCE", "CREATED")
    body = candlepin_body("POOL", "CREATED", {"entityId": "4028f9", "eventData": {"quantity": 10}})
    assert body["target"] == "POOL"
    assert body["type"] == "CREATED"
    assert body["entityId"] == "4028f9"
    assert json.loads(body["eventData"]) == {"quantity": 10}  # a JSON document inside a string
    assert {"id", "timestamp", "ownerId", "consumerUuid", "principal"} <= set(body)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["pool"], "SUBJECT must read TARGET.TYPE"),
        (["pool.created", "--body", "{nope"], "--body is not JSON"),
        (["pool.created", "--body", "[1]"], "--body must be a JSON object"),
        (["pool.created", "--handler", "katello_events"], "is not a Candlepin listener slot"),
    ],
)
def test_send_test_message_refuses_what_it_cannot_send(args, error):
    with pytest.raises(CommandError, match=re.escape(error)):
        call_command("send_test_message", *args)


# -- 6. runserver, for real: started without a request; Ctrl-C marks the rows stopped -----------------


@pytest.mark.process
def test_runserver_starts_at_once_and_a_ctrl_c_reads_not_running(start_server):
    server = start_server(manage_args("runserver", f"127.0.0.1:{free_port()}"))
    child = wait_for(lambda: len(kids := children(server.pid)) == 1 and next(iter(kids)), 60, "reloader child")
    names = set(get_config().HANDLERS)

    def claimed_by_child() -> bool:
        return set(HandlerStatus.objects.filter(running=True, pid=child).values_list("name", flat=True)) == names

    # No request is ever made: the serving child claims the rows by itself.
    wait_for(claimed_by_child, 60, "the serving child runs the handlers without a request")
    os.killpg(server.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group
    assert server.process.wait(60) == 0
    assert not alive(child)
    rows = HandlerStatus.objects.filter(name__in=names)
    assert {row.running for row in rows} == {False}, "the child stopped its runner before exiting"

    def messages() -> set[str]:
        return {s["message"] for s in report.collect_status()["services"].values()}

    # A clean stop: "handing over" for a second, then "Not running", never "no heartbeat".
    wait_for(lambda: messages() == {"Not running"}, 10, "the rows read a clean stop")
