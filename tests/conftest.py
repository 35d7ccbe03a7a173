from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from katello_events.conf import get_config
from katello_events.runner import Runner
from tests.support import Server, server_env


@pytest.fixture
def lock_file(tmp_path: Path) -> Path:
    return tmp_path / "run" / "runner.lock"


@pytest.fixture
def database_name(transactional_db: None) -> str:
    """The test database, committed to (servers started by a test must see its rows)."""
    from django.db import connection

    return connection.settings_dict["NAME"]


@pytest.fixture
def start_server(database_name: str, lock_file: Path, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start real server processes against the test database; all are stopped at teardown."""
    started: list[Server] = []

    def start(args: list[str], **env: str) -> Server:
        log = tmp_path / f"server-{len(started)}.log"
        server = Server(args, server_env(database_name, env.pop("lock_file", lock_file), **env), log)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    for server in started:
        print(f"---- {' '.join(server.args)} (exit {server.process.returncode})\n{server.log()}")


def make_runner(lock_file, handlers: dict, **overrides) -> Runner:
    """An in-process runner with fast intervals; ``handlers`` maps name -> (class, OPTIONS).

    A class name without a dot is one of ``tests.probe``'s.
    """
    config = {
        **get_config(),
        "LOCK_FILE": str(lock_file),
        "HANDLERS": {
            name: {"BACKEND": cls if "." in cls else f"tests.probe.{cls}", "OPTIONS": opts}
            for name, (cls, opts) in handlers.items()
        },
        "HEARTBEAT_INTERVAL": 0.1,
        "STANDBY_INTERVAL": 0.05,
        "RESTART_BACKOFF": 0.2,
        "RESTART_BACKOFF_MAX": 0.4,
        "START_RETRY_DELAY": 0.2,
        "STOP_TIMEOUT": 2.0,
        **overrides,
    }
    return Runner(config)


@pytest.fixture
def runners():
    started: list[Runner] = []
    yield started
    for runner in started:
        runner.stop(10)
        runner.election.release()


def start(runners, runner: Runner) -> Runner:
    runners.append(runner)
    runner.start()
    assert runner.leading.wait(10), "the runner never took the lead"
    return runner


#: Chaos counts reported by the tests of this run, in the process that prints the summary (with
#: pytest-xdist, the controller: a worker attaches its counts to the test's report).
_CHAOS_SEEN: dict[str, dict] = {}
_CHAOS_SENT: set[str] = set()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    from tests.chaos_results import RESULTS

    outcome = yield
    report = outcome.get_result()
    for scenario in [name for name in RESULTS if name not in _CHAOS_SENT]:
        report.user_properties.append(("chaos", [scenario, RESULTS[scenario]]))
        _CHAOS_SENT.add(scenario)


def pytest_runtest_logreport(report) -> None:
    for name, value in report.user_properties:
        if name == "chaos":
            _CHAOS_SEEN[value[0]] = value[1]


def pytest_terminal_summary(terminalreporter) -> None:
    """The chaos scenarios' counts, in CI's log whether they passed or not (-ra hides passing output)."""
    from tests.chaos_results import summary_line

    if _CHAOS_SEEN:
        terminalreporter.section("chaos results (also in artifacts/chaos.json)")
        for scenario, counts in _CHAOS_SEEN.items():
            terminalreporter.write_line(summary_line(scenario, counts))


@pytest.fixture(scope="module")
def candlepin_test_queues():
    """Delete the broker's test destinations once a module that used them is done."""
    from tests.candlepin_support import can_control_broker, delete_test_queues

    yield
    if can_control_broker():
        delete_test_queues()


@pytest.fixture
def destination() -> str:
    """A STOMP destination of its own for one test."""
    from tests.candlepin_support import new_destination

    return new_destination()
