"""``manage.py ping`` in hammer ping's layout, ``--services`` / ``?services=``, and PING_FAIL_STATUS.

``tests/fixtures/hammer_ping.txt`` is the two event services' part of a real ``hammer ping``
(Satellite 6.x, Katello 4.x), as published in a public operations guide.
"""

from __future__ import annotations

import re
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from katello_events.conf import get_config
from katello_events.models import HandlerStatus
from tests.support import run_ping_command

pytestmark = pytest.mark.django_db

HAMMER = (Path(__file__).parent / "fixtures" / "hammer_ping.txt").read_text()


def healthy_rows() -> None:
    from django.utils import timezone

    for name in get_config()["HANDLERS"]:
        HandlerStatus.objects.create(name=name, running=True, hostname="h", pid=1, heartbeat_at=timezone.now())


def shape(text: str) -> list[str]:
    """Each line with its numbers and its service name blanked: the layout alone."""
    lines = []
    for line in text.strip().splitlines():
        line = re.sub(r"\d+", "N", line)
        lines.append("SERVICE:" if not line.startswith(" ") else line)
    return lines


def test_the_text_is_hammer_pings_layout_line_for_line():
    healthy_rows()
    code, text = run_ping_command("--services", "katello_events", "candlepin_events")
    assert code == 0
    assert shape(text) == shape(HAMMER)
    assert text.startswith("katello_events:\n    Status:          ok\n")


def test_services_restricts_the_answer_and_an_unknown_one_is_refused(client):
    healthy_rows()
    code, text = run_ping_command("--services", "katello_events")
    assert (code, [line for line in text.splitlines() if not line.startswith(" ")]) == (0, ["katello_events:"])
    with pytest.raises(CommandError, match=r"unknown service.*nope.*the services are: katello_events") as raised:
        call_command("ping", "--services", "katello_events,nope", stdout=StringIO())
    assert raised.value.returncode == 2

    document = client.get("/api/ping?services=candlepin_events").json()
    assert list(document["services"]) == ["candlepin_events"]
    refused = client.get("/api/ping?services=nope")
    assert refused.status_code == 400
    assert "nope" in refused.json()["error"]


def test_a_fail_answers_503_by_default_or_200_as_katello_did(client):
    HandlerStatus.objects.all().delete()  # never started: FAIL
    assert client.get("/api/ping").status_code == 503
    with override_settings(KATELLO_EVENTS={"PING_FAIL_STATUS": 200}):
        response = client.get("/api/ping")
        assert (response.status_code, response.json()["status"]) == (200, "FAIL")
        assert client.get("/about/").status_code == 200
    with override_settings(KATELLO_EVENTS={"PING_FAIL_STATUS": 404}):
        from django.core.checks import run_checks

        assert "katello_events.E018" in {m.id for m in run_checks()}
