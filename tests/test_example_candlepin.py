"""The example project's Candlepin behaviours end to end: a real broker, a real runner, the
example domain's message handlers, and the original load test."""

from __future__ import annotations

import re
import subprocess

import pytest

from katello import candlepin_events
from katello import candlepin_simulator as simulator
from katello.models import Host, Pool
from katello_events.registry import message_handlers
from tests.conftest import make_runner, start
from tests.support import EXAMPLE, manage_args, server_env, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("candlepin_test_queues")]

BROKER_URL = "stomp://guest:guest@127.0.0.1:61613"
QUEUE = "katello_events.handlers.event_queue.EventQueueHandler"
CANDLEPIN = "katello_events.handlers.candlepin.CandlepinHandler"


@pytest.fixture
def example_handlers():
    """The example domain's message handlers in place of the test suite's own."""
    previous = message_handlers.reset(candlepin_events.HANDLERS)
    yield
    message_handlers.reset(previous)


@pytest.fixture
def listening(example_handlers, runners, lock_file, destination):
    handlers = {
        "katello_events": (QUEUE, {"POLL_INTERVAL": 0.2, "RETRY_BACKOFF": 0.2}),
        "candlepin_events": (CANDLEPIN, {"BROKER_URL": BROKER_URL, "DESTINATION": destination}),
    }
    runner = start(runners, make_runner(lock_file, handlers))
    wait_for(lambda: _connected(runner), 30, "the listener subscribed")
    return runner


def _connected(runner) -> bool:
    supervisor = runner.supervisor
    return bool(supervisor) and all(s.running and not s.problem for s in supervisor.snapshots())


def publish(destination: str, *messages: simulator.SimulatedMessage) -> None:
    with simulator.Publisher(BROKER_URL, destination) as publisher:
        for message in messages:
            publisher.send(message)


def test_compliance_and_system_purpose_update_the_host(listening, destination):
    host = Host.objects.create(name="web-1", consumer_uuid="uuid-1")
    publish(
        destination,
        simulator.compliance_created("uuid-1", "invalid", ["Not covered by a valid subscription."]),
        simulator.system_purpose_compliance_created("uuid-1", "mismatched", non_compliant_role="RHEL Workstation"),
    )

    def updated():
        host.refresh_from_db()
        return host.subscription_status == "invalid" and host.purpose_status == "mismatched"

    wait_for(updated, 20, "statuses updated")
    assert host.subscription_reasons == ["Not covered by a valid subscription."]
    assert (host.purpose_role_status, host.purpose_usage_status) == ("mismatched", "not specified")


def test_pools_are_imported_linked_unlinked_and_deleted_twice_harmlessly(listening, destination):
    host = Host.objects.create(name="web-2", consumer_uuid="uuid-2")
    publish(
        destination,
        simulator.pool_created("pool-a", "RHEL Server", "RHEL Premium", 25),
        simulator.entitlement_created("pool-a", "uuid-2"),
    )
    wait_for(lambda: host.pools.filter(candlepin_id="pool-a").exists(), 20, "entitled")
    assert Pool.objects.get(candlepin_id="pool-a").quantity == 25

    publish(destination, simulator.entitlement_deleted("pool-a", "uuid-2"))
    wait_for(lambda: not host.pools.exists(), 20, "unlinked")

    publish(
        destination,
        simulator.entitlement_created("pool-a", "uuid-2"),
        simulator.pool_deleted("pool-a"),
        simulator.pool_deleted("pool-a"),
        simulator.entitlement_created("pool-a", "uuid-2"),  # late news about a deleted pool
        simulator.compliance_created("uuid-2", "invalid"),
    )
    wait_for(lambda: Host.objects.get(pk=host.pk).subscription_status == "invalid", 20, "all handled")
    assert Pool.objects.get(candlepin_id="pool-a").deleted_at is not None
    assert not host.pools.exists(), "a deleted pool is never attached again"


@pytest.mark.process
@pytest.mark.timeout(420)
def test_the_original_load_test_with_2000_hosts_verifies_clean(start_server, database_name, lock_file, destination):
    env = {"DJANGO_SETTINGS_MODULE": "example_project.settings", "CANDLEPIN_QUEUE": destination}
    daemon = start_server(manage_args("run_event_daemon"), **env)
    wait_for(lambda: "is the runner" in daemon.log(), 60, "the runner leads")
    result = subprocess.run(
        manage_args("loadtest", "--hosts", "2000", "--timeout", "240"),
        cwd=EXAMPLE, env=server_env(database_name, lock_file, **env), capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    report = result.stdout.replace("\r", "\n")
    print(report[-2000:])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "verification:     OK" in report
    handled = int(re.search(r"messages handled: (\d+) of 10002 published", report).group(1))
    assert handled >= 10002, "every message handled at least once"
