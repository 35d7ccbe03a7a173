"""The example project's Candlepin behaviours end to end: a real broker (RabbitMQ), a real runner,
real PostgreSQL, the example domain's message handlers, Candlepin's real message shapes
(``tests/fixtures/candlepin_messages/``), and the original load test.

Every end-to-end test runs twice: with the listener's inbox (the default: the event queue runs
the handlers) and with ``INBOX: False`` (the listener runs them): both must end the same.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

import pytest
import stomp

from katello import candlepin_events
from katello import candlepin_simulator as simulator
from katello.candlepin_api import PoolFacts
from katello.models import Host, Organization, Pool, Subscription
from katello_events import CandlepinMessage, RetryLater, SkipMessage
from katello_events.models import Event, HandlerStatus
from katello_events.registry import message_coalescing, message_handlers
from tests.conftest import make_runner, start
from tests.support import EXAMPLE, manage_args, server_env, wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(180),
    pytest.mark.usefixtures("candlepin_test_queues"),
]

BROKER_URL = "stomp://guest:guest@127.0.0.1:61613"
QUEUE = "katello_events.handlers.event_queue.EventQueueHandler"
CANDLEPIN = "katello_events.handlers.candlepin.CandlepinHandler"
FIXTURES = Path(__file__).parent / "fixtures" / "candlepin_messages"
SUBJECTS = sorted(path.name.removesuffix(".json") for path in FIXTURES.glob("*.json"))


def fixture(subject: str) -> dict[str, Any]:
    """Candlepin's body of ``subject``, as captured (a fresh copy)."""
    return json.loads((FIXTURES / f"{subject}.json").read_text())


class FakeCandlepinApi:
    """The test's Candlepin API (``KATELLO_CANDLEPIN_API``): answers from :attr:`pools`, records
    what it was asked. Class-level: the runner's threads build their own instances."""

    pools: ClassVar[dict[str, PoolFacts]] = {}
    asked: ClassVar[list[str]] = []

    def pool(self, pool_id: str) -> PoolFacts | None:
        self.asked.append(pool_id)
        return self.pools.get(pool_id)


@pytest.fixture
def example_handlers(settings):
    """The example domain's message handlers in place of the test suite's own, and the fake API."""
    previous = message_handlers.reset(candlepin_events.HANDLERS)
    previous_keys = message_coalescing.reset(candlepin_events.COALESCE_BY)
    settings.KATELLO_CANDLEPIN_API = f"{__name__}.FakeCandlepinApi"
    settings.KATELLO_UNKNOWN_CONSUMER_GRACE = 10.0  # the example's default
    FakeCandlepinApi.pools.clear()
    FakeCandlepinApi.asked.clear()
    yield
    message_handlers.reset(previous)
    message_coalescing.reset(previous_keys)


@pytest.fixture(params=[True, False], ids=["inbox", "direct"])
def inbox(request) -> bool:
    return request.param


@pytest.fixture
def listening(example_handlers, runners, lock_file, destination, inbox):
    handlers = {
        "katello_events": (QUEUE, {"POLL_INTERVAL": 0.2, "RETRY_BACKOFF": 0.2}),
        "candlepin_events": (CANDLEPIN, {"BROKER_URL": BROKER_URL, "DESTINATION": destination, "INBOX": inbox}),
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


def publish_bodies(destination: str, *bodies: dict[str, Any]) -> None:
    """Send bodies as Candlepin does: its two headers, the body as it is."""
    publish(destination, *(simulator.SimulatedMessage(_headers(body), body) for body in bodies))


def _headers(body: dict[str, Any]) -> dict[str, str]:
    return {"EVENT_TARGET": body["target"], "EVENT_TYPE": body["type"]}


def counter(service: str, name: str) -> int:
    row = HandlerStatus.objects.filter(name=service).first()
    if row is None:
        return 0
    if name in ("processed", "failed"):
        return getattr(row, f"{name}_count")
    return int(row.counters.get(name) or 0)


def totals(name: str) -> int:
    """``name`` summed over both services (the one that ran a handler depends on INBOX)."""
    return counter("katello_events", name) + counter("candlepin_events", name)


def assert_nothing_failed() -> None:
    for name in ("failed", "dead", "deferred", "deaths"):
        assert totals(name) == 0, f"{name}: {totals(name)}"
    assert not Event.objects.filter(state=Event.DEAD).exists()


# -- Candlepin's shapes, and the simulator -----------------------------------------------------------


def test_the_fixtures_are_candlepins_event_json():
    keys = list(fixture("pool.created"))
    for subject in SUBJECTS:
        body = fixture(subject)
        assert list(body) == keys, subject  # one Event class: the same keys for every subject
        assert body["id"] is None, subject
        assert isinstance(body["principalStore"], str), subject
        assert f"{body['target']}.{body['type']}".lower() == subject
        assert body["eventData"] is None or isinstance(body["eventData"], str), "a JSON document inside a string"
    assert json.loads(fixture("pool.created")["eventData"]).keys() == {"subscriptionId"}
    assert fixture("pool.deleted")["eventData"] is None
    reasons = json.loads(fixture("compliance.created")["eventData"])["reasons"]
    assert all(reason.keys() == {"productName", "message"} for reason in reasons)


SIMULATED = {
    "pool.created": lambda: simulator.pool_created("pool-1", "sub-1", "RHEL"),
    "pool.deleted": lambda: simulator.pool_deleted("pool-1", "RHEL"),
    "entitlement.created": lambda: simulator.entitlement_created("pool-1", "uuid-1"),
    "entitlement.deleted": lambda: simulator.entitlement_deleted("pool-1", "uuid-1"),
    "compliance.created": lambda: simulator.compliance_created("uuid-1", "invalid", ["Not covered."]),
    "system_purpose_compliance.created": lambda: simulator.system_purpose_compliance_created(
        "uuid-1", "mismatched", non_compliant_role="RHEL Workstation"
    ),
    "owner_content_access_mode.modified": lambda: simulator.owner_content_access_mode_modified("org_environment"),
}


@pytest.mark.parametrize("subject", SUBJECTS)
def test_the_simulator_sends_exactly_these_shapes(subject):
    real, simulated = fixture(subject), SIMULATED[subject]()
    assert simulated.subject == subject
    assert simulated.headers == _headers(real), "EVENT_TARGET and EVENT_TYPE, nothing else"
    assert list(simulated.body) == list(real)
    for key, value in real.items():
        assert (simulated.body[key] is None) == (value is None), f"{subject}: {key}"
        assert value is None or type(simulated.body[key]) is type(value), f"{subject}: {key}"
    if real["eventData"] is not None:
        assert json.loads(simulated.body["eventData"]).keys() == json.loads(real["eventData"]).keys()


def test_the_simulator_sends_no_header_candlepin_does_not(destination):
    """Through RabbitMQ: a consumer sees EVENT_TARGET and EVENT_TYPE, no content-type."""
    received: list[dict[str, str]] = []
    arrived = threading.Event()

    class Taker(stomp.ConnectionListener):
        def on_message(self, frame) -> None:
            received.append(frame.headers)
            arrived.set()

    connection = stomp.Connection12([("127.0.0.1", 61613)], vhost="/")
    connection.set_listener("taker", Taker())
    connection.connect("guest", "guest", wait=True)
    try:
        connection.subscribe(destination, id="taker", ack="auto")
        publish(destination, simulator.pool_created("pool-1", "sub-1"))
        assert arrived.wait(20), "the message never came"
    finally:
        connection.disconnect()
    headers = received[0]
    assert (headers["EVENT_TARGET"], headers["EVENT_TYPE"]) == ("POOL", "CREATED")
    assert "content-type" not in headers


# -- every real shape, end to end ---------------------------------------------------------------------

OWNER_ID = fixture("pool.created")["ownerId"]
OWNER_KEY = fixture("owner_content_access_mode.modified")["targetName"]
POOL_ID = fixture("pool.created")["entityId"]
SUBSCRIPTION_ID = json.loads(fixture("pool.created")["eventData"])["subscriptionId"]
CONSUMER = fixture("compliance.created")["consumerUuid"]


def test_every_real_shape_updates_the_example_domain(listening, destination):
    organization = Organization.objects.create(name="ACME", label=OWNER_KEY, candlepin_id=OWNER_ID)
    subscription = Subscription.objects.create(
        name="RHEL Standard", product=_product(), candlepin_id=SUBSCRIPTION_ID
    )  # fmt: skip
    host = Host.objects.create(name="host-1.example.com", consumer_uuid=CONSUMER)
    FakeCandlepinApi.pools[POOL_ID] = PoolFacts(quantity=100, consumed=1)

    publish_bodies(destination, *(fixture(subject) for subject in (
        "pool.created", "entitlement.created", "compliance.created", "system_purpose_compliance.created",
        "owner_content_access_mode.modified",
    )))  # fmt: skip

    def settled() -> bool:
        host.refresh_from_db()
        organization.refresh_from_db()
        pool = Pool.objects.filter(candlepin_id=POOL_ID).first()
        return bool(
            pool and pool.quantity == 100 and host.pools.filter(pk=pool.pk).exists()
            and host.subscription_status == "invalid" and host.purpose_status == "mismatched"
            and organization.content_access_mode == "org_environment"
        )  # fmt: skip

    wait_for(settled, 30, "every message handled")
    pool = Pool.objects.get(candlepin_id=POOL_ID)
    # What the message carries: its id, product name, subscription and owner; the rest from the API.
    assert pool.product_name == fixture("pool.created")["targetName"]
    assert (pool.candlepin_subscription_id, pool.subscription, pool.organization) == (
        SUBSCRIPTION_ID, subscription, organization,
    )  # fmt: skip
    assert (pool.quantity, pool.consumed) == (100, 1)
    assert host.subscription_reasons == ["Red Hat Enterprise Linux Server: Not supported by a valid subscription."]
    assert (host.purpose_role_status, host.purpose_usage_status, host.purpose_sla_status) == (
        "mismatched", "not specified", "not specified",
    )  # fmt: skip
    wait_for(lambda: not Event.objects.exists(), 20, "nothing left to run (the pool refresh included)")

    # entitlement.deleted: the pool is refreshed, as Katello did (its consumed count changed).
    FakeCandlepinApi.pools[POOL_ID] = PoolFacts(quantity=100, consumed=0)
    asked = len(FakeCandlepinApi.asked)
    publish_bodies(destination, fixture("entitlement.deleted"))
    wait_for(lambda: not host.pools.exists(), 20, "unlinked")
    wait_for(lambda: Pool.objects.get(candlepin_id=POOL_ID).consumed == 0, 20, "the pool refreshed")
    assert len(FakeCandlepinApi.asked) > asked

    # Deleted twice (harmless), then late news about the deleted pool: it is never attached again.
    publish_bodies(destination, fixture("pool.deleted"), fixture("pool.deleted"))
    wait_for(lambda: Pool.objects.get(candlepin_id=POOL_ID).deleted_at is not None, 20, "deleted")
    publish_bodies(destination, fixture("entitlement.created"))
    wait_for(lambda: counter("candlepin_events", "processed") >= 9, 20, "the listener counted every message")
    wait_for(lambda: not Event.objects.exists(), 20, "nothing left to run")
    assert not host.pools.exists(), "a deleted pool is never attached again"
    assert_nothing_failed()
    assert totals("skipped") == 0
    assert totals("retried_later") == 0


def test_the_example_api_stand_in_invents_nothing(listening, destination, settings):
    """Without a Candlepin to ask (the example's default), a pool has what its message carried."""
    settings.KATELLO_CANDLEPIN_API = "katello.candlepin_api.NoCandlepinApi"
    publish(destination, simulator.pool_created("pool-x", "sub-x", "RHEL Server"))
    pool = wait_for(lambda: Pool.objects.filter(candlepin_id="pool-x", product_name="RHEL Server").first(), 20, "pool")
    assert (pool.quantity, pool.consumed, pool.candlepin_subscription_id) == (None, None, "sub-x")


def _product():
    from katello.models import Product

    return Product.objects.create(name="Red Hat Enterprise Linux Server")


# -- what this application does not have: skipped, never failed -----------------------------------------

ABOUT_NOBODY = ("entitlement.created", "entitlement.deleted", "compliance.created",
                "system_purpose_compliance.created", "owner_content_access_mode.modified")  # fmt: skip


def test_messages_about_unknown_hosts_and_organizations_are_skipped_never_failed(listening, destination, inbox):
    """Candlepin's captured messages are long past the grace: skipped at once, with no retry,
    counted by the service that ran their handlers."""
    publish_bodies(destination, *(fixture(subject) for subject in ABOUT_NOBODY))

    wait_for(lambda: totals("skipped") == len(ABOUT_NOBODY), 30, "every message skipped")
    ran, other = ("katello_events", "candlepin_events") if inbox else ("candlepin_events", "katello_events")
    assert (counter(ran, "skipped"), counter(other, "skipped")) == (len(ABOUT_NOBODY), 0)
    wait_for(lambda: not Event.objects.exists(), 20, "nothing left to run (nothing dead either)")
    assert_nothing_failed()
    assert totals("retried_later") == 0, "no retry for a message past the grace"
    assert not Host.objects.exists()
    assert not Organization.objects.exists()


def test_a_host_registered_within_the_grace_gets_its_status(listening, destination):
    """The registration race: Candlepin's first message about a host may come before the host's
    registration commits here. It is retried (RetryLater, not a failure) within the grace."""
    consumer = f"late-{uuid.uuid4().hex[:8]}"
    publish(destination, simulator.compliance_created(consumer, "valid"))
    wait_for(lambda: totals("retried_later") >= 1, 20, "retried within the grace")
    host = Host.objects.create(name=f"{consumer}.example.com", consumer_uuid=consumer)

    wait_for(lambda: Host.objects.get(pk=host.pk).subscription_status == "valid", 20, "the status applied")
    wait_for(lambda: not Event.objects.exists(), 20, "nothing left to run")
    assert_nothing_failed()
    assert totals("skipped") == 0


def test_past_the_grace_an_unknown_host_is_skipped_never_dead(listening, destination, settings):
    settings.KATELLO_UNKNOWN_CONSUMER_GRACE = 1.0
    publish(destination, simulator.compliance_created("nobody", "valid"), simulator.entitlement_created("p", "nobody"))

    wait_for(lambda: totals("skipped") == 2, 30, "skipped once the grace is over")
    wait_for(lambda: not Event.objects.exists(), 20, "nothing left to run")
    assert totals("retried_later") >= 1
    assert_nothing_failed()


# -- the grace, without a broker ----------------------------------------------------------------------


def _message(subject: str = "compliance.created", **body: Any) -> CandlepinMessage:
    document = {**fixture(subject), **body}
    return CandlepinMessage(subject, _headers(document), document)


@pytest.mark.parametrize(
    "timestamp",
    [1571143403127, "1571143403127", "2019-10-15T12:43:23.127+0000", "2019-10-15T12:43:23.127Z", "2019-10-15T12:43:23"],
)
def test_the_send_time_is_read_as_epoch_milliseconds_or_an_iso_date(timestamp):
    assert candlepin_events.sent_at(_message(timestamp=timestamp)) == pytest.approx(1571143403.127, abs=1)


@pytest.mark.parametrize("timestamp", [None, "", "yesterday", True, -5, {}])
def test_an_unreadable_send_time_is_unknown(timestamp):
    assert candlepin_events.sent_at(_message(timestamp=timestamp)) is None


def test_the_broker_timestamp_header_stands_in_for_the_body():
    message = _message(timestamp=None)
    message.headers["timestamp"] = "1571143403127"
    assert candlepin_events.sent_at(message) == pytest.approx(1571143403.127)


def test_within_the_grace_retry_later_after_it_or_unknown_skip(settings):
    settings.KATELLO_UNKNOWN_CONSUMER_GRACE = 10.0
    now_ms = int(time.time() * 1000)
    with pytest.raises(RetryLater) as retry:
        candlepin_events.unknown(_message(timestamp=now_ms - 3000), "no host")
    assert 0 < retry.value.seconds <= candlepin_events.GRACE_RETRY_INTERVAL
    for timestamp in (now_ms - 11_000, now_ms + 60_000, None):  # past it, a clock far ahead, unknown
        with pytest.raises(SkipMessage, match="no host"):
            candlepin_events.unknown(_message(timestamp=timestamp), "no host")
    settings.KATELLO_UNKNOWN_CONSUMER_GRACE = 0
    with pytest.raises(SkipMessage):
        candlepin_events.unknown(_message(timestamp=now_ms), "no host")


def test_reasons_read_as_katello_words_them():
    words = candlepin_events._reason_text
    assert words({"productName": "RHEL", "message": "Not covered."}) == "RHEL: Not covered."
    assert words({"attributes": {"name": "RHEL"}, "message": "Not covered."}) == "RHEL: Not covered."  # the API's shape
    assert words({"message": "Not covered."}) == "Not covered."
    assert words("Not covered.") == "Not covered."


def test_a_content_access_mode_message_without_a_mode_is_malformed():
    from katello_events import MalformedMessage

    body = copy.deepcopy(fixture("owner_content_access_mode.modified"))
    body["eventData"] = "{}"
    with pytest.raises(MalformedMessage):
        candlepin_events.update_content_access_mode(_message("owner_content_access_mode.modified", **body))


# -- the original load test ----------------------------------------------------------------------------


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
    assert "failed:           0" in report
    assert "skipped:          0" in report


# -- pool locks between the event queue's threads ------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_pool_deleted_while_another_thread_unlinks_then_links_that_pool_does_not_deadlock(example_handlers):
    """Found by the 2,000-host load test with CONCURRENCY 4: one thread's batch unlinked a host
    from a pool, then linked another host to it; meanwhile another thread deleted the pool."""
    from django.db import connection, connections, transaction

    pool = Pool.objects.create(candlepin_id="pool-locks")
    first = Host.objects.create(name="first", consumer_uuid="uuid-first")
    Host.objects.create(name="second", consumer_uuid="uuid-second")
    first.pools.add(pool)
    unlinked, deleter_pid, errors = threading.Event(), [], []
    unlink = _message("entitlement.deleted", consumerUuid="uuid-first", referenceId="pool-locks")
    link = _message("entitlement.created", consumerUuid="uuid-second", referenceId="pool-locks")

    def unlink_then_link() -> None:  # one consumer thread's batch: a transaction
        try:
            with transaction.atomic():
                candlepin_events.detach_pool(unlink)
                unlinked.set()
                wait_for(lambda: _waits_for_a_lock(deleter_pid), 10, "the pool's deletion waits")
                candlepin_events.attach_pool(link)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connections.close_all()

    def delete_pool() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                deleter_pid.append(cursor.fetchone()[0])
            assert unlinked.wait(10)
            candlepin_events.remove_pool(_message("pool.deleted", entityId="pool-locks"))
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=unlink_then_link), threading.Thread(target=delete_pool)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    pool.refresh_from_db()
    assert pool.deleted_at is not None
    assert not pool.hosts.exists(), "the deletion, which waited for the links, has the last word"


def _waits_for_a_lock(pid: list[int]) -> bool:
    from django.db import connection

    if not pid:
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid[0]])
        row = cursor.fetchone()
    return row is not None and row[0] == "Lock"
