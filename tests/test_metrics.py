"""/metrics specifics: content negotiation, runner info for trusted readers, no caching, no
global state, and a clear 501 when the optional prometheus_client is missing."""

from __future__ import annotations

import sys

import prometheus_client
import pytest
from django.test import override_settings

from katello_events import metrics
from tests.factories import make_row
from tests.test_surfaces import CP, KE, scrape

pytestmark = pytest.mark.django_db


@pytest.fixture
def rows() -> None:
    make_row(KE, queue_depth=3)
    make_row(CP)


def test_text_exposition_never_cached(client, rows):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert "no-cache" in response["Cache-Control"]
    assert "max-age=0" in response["Cache-Control"]
    text = response.content.decode()
    assert "# TYPE katello_events_processed_total counter" in text
    assert f'katello_events_processed_total{{handler="{KE}"}} 12.0' in text


def test_openmetrics_when_asked(client, rows):
    response = client.get("/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().endswith("# EOF\n")


def test_runner_info_only_for_readers_allowed_the_details(client, admin_client, rows):
    assert "katello_events_runner_info" not in scrape(client)[1]
    staff = scrape(admin_client)[1]
    assert staff["katello_events_runner_info"] == {KE: 4242, CP: 4242}
    assert 'hostname="host-a"' in admin_client.get("/metrics").content.decode()


def test_heartbeat_age_is_read_from_the_rows(client, rows):
    ages = scrape(client)[1]["katello_events_heartbeat_age_seconds"]
    assert set(ages) == {KE, CP}
    assert all(0 <= age < 5 for age in ages.values())


def test_every_scrape_reads_afresh_and_leaves_no_global_state(client, rows):
    first = scrape(client)[1]["katello_events_processed_total"][KE]
    from katello_events.models import HandlerStatus

    HandlerStatus.objects.filter(name=KE).update(processed_count=13)
    assert scrape(client)[1]["katello_events_processed_total"][KE] == first + 1
    assert not [name for name in prometheus_client.REGISTRY._names_to_collectors if name.startswith("katello")]


def test_without_prometheus_client_the_endpoint_explains_itself(client, rows, monkeypatch):
    # None in sys.modules makes `import prometheus_client` fail as if it were not installed.
    for name in [m for m in sys.modules if m == "prometheus_client" or m.startswith("prometheus_client.")]:
        monkeypatch.setitem(sys.modules, name, None)
    response = client.get("/metrics")
    assert response.status_code == 501
    assert response.content.decode() == metrics.MISSING_CLIENT
    assert response.content.decode().count("\n") == 1
    assert "no-cache" in response["Cache-Control"]


@override_settings(KATELLO_EVENTS={"QUEUE_DEPTH_WARNING": None})
def test_no_threshold_no_threshold_metric(client, rows):
    assert "katello_events_queue_depth_threshold" not in scrape(client)[1]


@pytest.mark.parametrize(
    ("audience", "anonymous", "staff"), [("everyone", 200, 200), ("staff", 403, 200), ("nobody", 404, 404)]
)
def test_metrics_can_be_restricted_or_turned_off(client, admin_client, rows, audience, anonymous, staff):
    with override_settings(KATELLO_EVENTS={"METRICS_VISIBLE_TO": audience}):
        assert client.get("/metrics").status_code == anonymous
        assert admin_client.get("/metrics").status_code == staff


def test_the_runner_identity_can_be_shown_to_an_anonymous_prometheus(client, rows):
    with override_settings(KATELLO_EVENTS={"METRICS_INCLUDE_RUNNER": True}):
        assert scrape(client)[1]["katello_events_runner_info"] == {KE: 4242, CP: 4242}
