"""Every status combination on every surface: /api/ping, /about/, ``manage.py ping`` and /metrics.

A scenario writes real status rows (or makes the database really unreachable); a surface reads
them the way its users do (HTTP client, command output, Prometheus parser). The matrix test
checks each surface's code, per-service status and message; the surfaces meant for anonymous
readers must never name a host.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

from tests.factories import make_row
from tests.support import free_port, run_ping_command

KE, CP = "katello_events", "candlepin_events"
BROKER_PROBLEM = "broker unreachable: [Errno 111] Connection refused (broker.example:61613)"


@contextlib.contextmanager
def unreachable_database() -> Iterator[None]:
    """Point the default connection at a closed port: every query fails to connect, for real."""
    connection = connections["default"]
    connection.close()
    port = connection.settings_dict["PORT"]
    connection.settings_dict["PORT"] = str(free_port())
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["PORT"] = port


# -- scenarios -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """Rows to write, and what every surface must then say."""

    rows: Callable[[], object]
    overall: str
    statuses: dict[str, str]
    #: Per service, a fragment of the full message (staff, the command).
    messages: dict[str, str]
    #: Per service, a fragment of the public message; None: not checked (see database_down).
    public: dict[str, str | None]
    #: Expected Prometheus samples, metric -> {handler: value}; {} means "absent for every handler".
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    database_down: bool = False


def both(**fields) -> Callable[[], None]:
    return lambda: [make_row(KE, **fields.get(KE, {})), make_row(CP, **fields.get(CP, {}))]


COUNTS = "12 Processed, 1 Failed"
NEVER = "Not running (never started)"

SCENARIOS = {
    "running": Scenario(
        rows=both(katello_events={"queue_depth": 3}),
        overall="ok",
        statuses={KE: "ok", CP: "ok"},
        messages={KE: f"{COUNTS}, 3 in queue", CP: COUNTS},
        public={KE: f"{COUNTS}, 3 in queue", CP: COUNTS},
        metrics={
            "katello_events_up": {KE: 1, CP: 1},
            "katello_events_running": {KE: 1, CP: 1},
            "katello_events_processed_total": {KE: 12, CP: 12},
            "katello_events_failed_total": {KE: 1, CP: 1},
            "katello_events_queue_depth": {KE: 3},
        },
    ),
    "stale_heartbeat": Scenario(
        rows=both(katello_events={"age": 60}),
        overall="FAIL",
        statuses={KE: "FAIL", CP: "ok"},
        messages={KE: "Not running (no heartbeat for 60s)", CP: COUNTS},
        public={KE: "Not running (no heartbeat for 60s)", CP: COUNTS},
        metrics={"katello_events_up": {KE: 0, CP: 1}, "katello_events_running": {KE: 0, CP: 1}},
    ),
    "broker_down": Scenario(
        rows=both(candlepin_events={"problem": BROKER_PROBLEM}),
        overall="FAIL",
        statuses={KE: "ok", CP: "FAIL"},
        messages={KE: COUNTS, CP: BROKER_PROBLEM},
        public={KE: COUNTS, CP: "broker unreachable"},
        # The runner is alive (running 1); its broker is not (up 0).
        metrics={"katello_events_up": {KE: 1, CP: 0}, "katello_events_running": {KE: 1, CP: 1}},
    ),
    "database_down": Scenario(
        rows=both(),
        overall="FAIL",
        statuses={KE: "FAIL", CP: "FAIL"},
        messages={KE: "database unreachable: ", CP: "database unreachable: "},
        public={KE: "database unreachable", CP: "database unreachable"},
        metrics={
            "katello_events_up": {KE: 0, CP: 0},
            "katello_events_running": {},
            "katello_events_processed_total": {},
        },
        database_down=True,
    ),
    "warn_threshold": Scenario(
        rows=both(katello_events={"queue_depth": 1500}),
        overall="ok",
        statuses={KE: "WARN", CP: "ok"},
        messages={KE: f"{COUNTS}, 1500 in queue (queue deeper than 1000)", CP: COUNTS},
        public={KE: f"{COUNTS}, 1500 in queue (queue deeper than 1000)", CP: COUNTS},
        metrics={"katello_events_up": {KE: 1, CP: 1}, "katello_events_queue_depth": {KE: 1500}},
    ),
    "no_status_row": Scenario(
        rows=lambda: None,
        overall="FAIL",
        statuses={KE: "FAIL", CP: "FAIL"},
        messages={KE: NEVER, CP: NEVER},
        public={KE: NEVER, CP: NEVER},
        metrics={
            "katello_events_up": {KE: 0, CP: 0},
            "katello_events_running": {KE: 0, CP: 0},
            "katello_events_processed_total": {},
            "katello_events_heartbeat_age_seconds": {},
        },
    ),
}


@pytest.fixture(params=list(SCENARIOS), ids=list(SCENARIOS))
def scenario(request) -> Iterator[Scenario]:
    chosen = SCENARIOS[request.param]
    # Closing the connection inside a test transaction would break its rollback: the database
    # outage gets a committed (flushed) database instead.
    request.getfixturevalue("transactional_db" if chosen.database_down else "db")
    chosen.rows()
    with unreachable_database() if chosen.database_down else contextlib.nullcontext():
        yield chosen


# -- surfaces --------------------------------------------------------------------------------


@dataclass
class Observed:
    code: int
    statuses: dict[str, str]
    messages: dict[str, str]
    raw: str


class TableRows(HTMLParser):
    """The text of each cell of each body row of the page's tables."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._in_body = self._in_cell = False

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag in ("td", "th") and self._in_body:
            self._in_cell = True
            self.rows[-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_body = False
        elif tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.rows[-1][-1] += data.strip()


@contextlib.contextmanager
def audience(detailed: bool) -> Iterator[None]:
    if not detailed:
        yield
        return
    with override_settings(KATELLO_EVENTS={**settings.KATELLO_EVENTS, "DETAILS_VISIBLE_TO": "everyone"}):
        yield


def read_ping(client, detailed: bool) -> Observed:
    with audience(detailed):
        response = client.get("/api/ping")
    assert response["Content-Type"] == "application/json"
    services = response.json()["services"]
    return Observed(
        response.status_code,
        {name: s["status"] for name, s in services.items()},
        {name: s["message"] for name, s in services.items()},
        response.content.decode(),
    )


def read_about(client, detailed: bool) -> Observed:
    with audience(detailed):
        response = client.get("/about/")
    html = response.content.decode()
    assert "Backend System Status" in html
    parser = TableRows()
    parser.feed(html)
    return Observed(
        response.status_code,
        {row[0]: row[1] for row in parser.rows},
        {row[0]: row[2] for row in parser.rows},
        html,
    )


def read_command_text(client, detailed: bool) -> Observed:
    code, text = run_ping_command()
    statuses, messages, name = {}, {}, ""
    for line in text.splitlines():
        stripped = line.strip()
        if not line.startswith(" ") and stripped.endswith(":"):  # hammer ping: a service at column 0
            name = stripped[:-1]
        elif stripped.startswith("Status:"):
            statuses[name] = stripped.split(":", 1)[1].strip()
        elif stripped.startswith("message:"):
            messages[name] = stripped.split(":", 1)[1].strip()
    assert "Server Response: Duration:" in text
    return Observed(code, statuses, messages, text)


def read_command_json(client, detailed: bool) -> Observed:
    code, text = run_ping_command("--json")
    services = json.loads(text)["services"]
    return Observed(
        code, {n: s["status"] for n, s in services.items()}, {n: s["message"] for n, s in services.items()}, text
    )


def scrape(client, detailed: bool = False) -> tuple[int, dict[str, dict[str, float]], str]:
    """/metrics as Prometheus reads it: metric name -> {handler: value} (runner_info: pid as value)."""
    with audience(detailed):
        response = client.get("/metrics")
    text = response.content.decode()
    samples: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            value = float(sample.labels["pid"]) if sample.name.endswith("_info") else sample.value
            samples.setdefault(sample.name, {})[sample.labels["handler"]] = value
    return response.status_code, samples, text


def read_metrics(client, detailed: bool) -> Observed:
    code, samples, text = scrape(client, detailed)
    # Metrics carry no messages; up tells FAIL (0) from ok and WARN (1).
    return Observed(code, {name: str(int(up)) for name, up in samples["katello_events_up"].items()}, {}, text)


@dataclass(frozen=True)
class Surface:
    read: Callable[..., Observed]
    detailed: bool
    #: The code (HTTP status or exit status) when the document is ok, and when it is FAIL.
    codes: tuple[int, int]
    shows_messages: bool = True
    #: How an expected status reads on this surface.
    # RUF009: one shared function that nothing mutates; staticmethod keeps it from binding as a method.
    shown: Callable[[str], str] = staticmethod(lambda status: status)  # noqa: RUF009


SURFACES = {
    "ping-anonymous": Surface(read_ping, False, (200, 503)),
    "ping-details": Surface(read_ping, True, (200, 503)),
    "about-anonymous": Surface(read_about, False, (200, 503)),
    "about-details": Surface(read_about, True, (200, 503)),
    "command-text": Surface(read_command_text, True, (0, 1)),
    "command-json": Surface(read_command_json, True, (0, 1)),
    # A scrape succeeds whatever it reports: Prometheus alerts on the values, not on the code.
    "metrics": Surface(read_metrics, False, (200, 200), False, lambda status: "0" if status == "FAIL" else "1"),
}


@pytest.mark.parametrize("surface_name", list(SURFACES))
def test_every_surface_reports_every_status(scenario: Scenario, surface_name: str, client) -> None:
    surface = SURFACES[surface_name]
    observed = surface.read(client, surface.detailed)

    assert observed.code == surface.codes[scenario.overall == "FAIL"]
    assert observed.statuses == {name: surface.shown(status) for name, status in scenario.statuses.items()}
    if surface.shows_messages:
        expected = scenario.messages if surface.detailed else scenario.public
        for name, fragment in expected.items():
            if fragment is not None:
                assert fragment in observed.messages[name], (name, observed.messages)
    if not surface.detailed:
        assert "host-a" not in observed.raw
        assert "broker.example" not in observed.raw


def test_metrics_values_in_every_scenario(scenario: Scenario, client) -> None:
    code, samples, _ = scrape(client)
    assert code == 200
    for metric, expected in scenario.metrics.items():
        assert samples.get(metric, {}) == expected, metric
    assert "katello_events_runner_info" not in samples, "hosts and pids are details"


def test_about_page_summarises_the_overall_status(scenario: Scenario, client) -> None:
    html = client.get("/about/").content.decode()
    if scenario.overall == "FAIL":
        assert "Some services are failing." in html
    elif "WARN" in scenario.statuses.values():
        assert "some need attention" in html
    else:
        assert "All services are running." in html


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/api/ping", "/about/", "/metrics"])
def test_a_signed_in_staff_user_still_gets_an_answer_when_the_database_is_down(admin_client, path) -> None:
    # The session and user of a signed-in caller are loaded from the database; the outage must
    # still be reported (as to an anonymous caller), never turn into a server error.
    with unreachable_database():
        response = admin_client.get(path)
    assert response.status_code == (200 if path == "/metrics" else 503)
