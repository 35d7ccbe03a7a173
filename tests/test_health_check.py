"""The optional django-health-check check (katello_events.contrib.health_check)."""

from __future__ import annotations

import asyncio
import importlib
import sys
import types

import pytest
from health_check.exceptions import HealthCheckException, ServiceUnavailable

from katello_events.contrib import health_check as contrib
from tests.factories import make_row
from tests.test_surfaces import BROKER_PROBLEM, CP, KE

# django-health-check 4 runs checks in executor threads, whose connections see committed rows only.
pytestmark = pytest.mark.django_db(transaction=True)


def result_of_check():
    return asyncio.run(contrib.KatelloEventsHealthCheck().get_result())


def test_passes_when_every_service_is_ok_or_warns():
    make_row(KE, queue_depth=5000)  # WARN: the ping does not fail on it, neither does the check
    make_row(CP)
    assert result_of_check().error is None


def test_fails_naming_the_failing_services_without_their_details():
    make_row(KE)
    make_row(CP, problem=BROKER_PROBLEM)
    error = result_of_check().error
    assert isinstance(error, ServiceUnavailable)
    assert error.message == f"{CP}: broker unreachable"
    assert "broker.example" not in str(error), "health-check pages are often public"


def test_no_status_row_fails_every_service():
    with pytest.raises(ServiceUnavailable, match=f"{KE}: Not running.*; {CP}: Not running"):
        contrib.check_katello_events()


@pytest.mark.urls("tests.health_check_urls")
def test_the_health_check_view_answers_500_on_fail(client):
    make_row(KE)
    make_row(CP, running=False, age=30)
    response = client.get("/ht/?format=json")
    assert response.status_code == 500
    assert "KatelloEventsHealthCheck" in next(iter(response.json()))


def test_django_health_check_3_gets_a_backend(monkeypatch):
    # Versions 3 and 4 cannot be installed side by side: stand in for version 3's API (a base
    # class with check_status/identifier in health_check.backends, no health_check.base).
    backends = types.ModuleType("health_check.backends")

    class BaseHealthCheckBackend:
        def run_check(self):
            self.errors = []
            try:
                self.check_status()
            except HealthCheckException as exc:
                self.errors.append(exc)

    backends.BaseHealthCheckBackend = BaseHealthCheckBackend
    monkeypatch.setitem(sys.modules, "health_check.base", None)
    monkeypatch.setitem(sys.modules, "health_check.backends", backends)
    try:
        v3 = importlib.reload(contrib)
        backend = v3.KatelloEventsHealthCheck()
        backend.run_check()
        assert isinstance(backend, BaseHealthCheckBackend)
        assert backend.identifier() == "katello_events"
        assert [type(e) for e in backend.errors] == [ServiceUnavailable]
    finally:
        monkeypatch.undo()
        importlib.reload(contrib)
