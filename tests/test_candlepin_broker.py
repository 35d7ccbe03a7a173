"""The Candlepin listener when the broker fails it: unreachable, refusing, TLS, restarted, and a
runner killed mid-stream. Real RabbitMQ (STOMP) and PostgreSQL, as in test_candlepin.py.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.candlepin_support import (
    BROKER_URL,
    DIRECT,
    can_control_broker,
    fake_management_api,
    messages_in_queue,
    port_open,
    problem,
    rabbitmqctl,
    run_listener,
    send,
    snapshot,
    status_row,
    subject_message,
    uid_of,
)
from tests.eventsapp.models import Handling
from tests.support import free_port, manage_args, wait_for
from tests.tls_support import have_openssl, make_certificates, tls_proxy

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(120),
    pytest.mark.usefixtures("candlepin_test_queues"),
]


def test_an_unreachable_broker_is_reported_without_its_password(runners, lock_file, destination, caplog):
    port = free_port()
    runner = run_listener(runners, lock_file, destination, BROKER_URL=f"stomp://guest:s3cr3t@127.0.0.1:{port}")
    text = wait_for(lambda: problem(runner), 10, "the problem is reported")
    assert text.startswith(f"broker unreachable: stomp://127.0.0.1:{port}: ")
    assert "refused" in text
    row = wait_for(lambda: (r := status_row()).problem and r, 10, "the status row says so")
    everything = json.dumps([row.problem, row.details, row.counters, row.last_error])
    assert "s3cr3t" not in everything + "".join(r.getMessage() for r in caplog.records)
    assert snapshot(runner).running, "the handler keeps running and retrying"


def test_bad_credentials_are_reported_and_failover_reaches_the_next_broker(runners, lock_file, destination):
    port = free_port()
    bad = run_listener(runners, lock_file, destination, BROKER_URL="stomp://guest:wrong@127.0.0.1:61613")
    text = wait_for(lambda: problem(bad), 10, "refused login reported")
    assert "broker error" in text
    assert "wrong" not in text
    bad.stop(10)
    bad.election.release()

    send(destination, [subject_message("pool.created")])
    urls = f"stomp://guest:guest@127.0.0.1:{port},{BROKER_URL}"
    run_listener(runners, lock_file, destination, BROKER_URL=urls)
    wait_for(lambda: Handling.objects.count() == 1, 20, "consumed through the second broker")
    wait_for(lambda: status_row().details.get("broker") == "stomp://127.0.0.1:61613", 10, "the broker in use shown")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    if not have_openssl():
        pytest.skip("needs the openssl command")
    return make_certificates(tmp_path_factory.mktemp("certificates"))


def test_tls_with_a_client_certificate_as_candlepins_artemis_wants_it(runners, lock_file, destination, certificates):
    send(destination, [subject_message("pool.created")])
    with tls_proxy(certificates, ("127.0.0.1", 61613)) as (port, clients):
        url = f"stomp+ssl://guest:guest@localhost:{port}"
        tls = {"SSL_CERT": certificates["client.crt"], "SSL_KEY": certificates["client.key"]}
        runner = run_listener(runners, lock_file, destination, BROKER_URL=url, SSL_CA=certificates["ca.crt"], **tls)
        wait_for(lambda: Handling.objects.count() == 1, 20, "consumed over TLS")
        assert clients == ["katello-client"], "the broker saw our client certificate"
        wait_for(lambda: messages_in_queue(destination) == 0, 20, "acked over TLS", interval=0.3)
        wait_for(lambda: status_row().details.get("broker") == f"stomp+ssl://localhost:{port}", 10, "shown")
        runner.stop(10)
        runner.election.release()

        # Without the client certificate the broker refuses us; with a wrong CA we refuse it.
        runner = run_listener(runners, lock_file, destination, BROKER_URL=url, SSL_CA=certificates["ca.crt"])
        assert wait_for(lambda: problem(runner), 10, "refused").startswith(
            f"broker unreachable: stomp+ssl://localhost:{port}"
        )
        runner.stop(10)
        runner.election.release()
        runner = run_listener(runners, lock_file, destination, BROKER_URL=url, SSL_CA=certificates["client.crt"], **tls)
        assert "CERTIFICATE_VERIFY_FAILED" in wait_for(lambda: problem(runner), 10, "the broker is not trusted")
    runner.stop(10)
    runner.election.release()
    runner = run_listener(runners, lock_file, destination, BROKER_URL=url, SSL_CERT="/no/such/client.crt")
    assert "cannot load SSL_CERT/SSL_KEY '/no/such/client.crt'" in wait_for(lambda: problem(runner), 10, "reported")


def test_the_depth_probe_reaches_the_status_row(runners, lock_file, destination, depth_server):
    run_listener(runners, lock_file, destination, DEPTH_PROBE_URL=depth_server, DEPTH_PROBE_INTERVAL=0.1)
    wait_for(lambda: status_row().queue_depth == 42, 10, "the probed depth is shown")


@pytest.fixture
def depth_server():
    with fake_management_api({"messages": 42}) as url:
        yield url


@pytest.mark.serial
@pytest.mark.skipif(not can_control_broker() or os.geteuid() != 0, reason="needs root and rabbitmqctl")
def test_a_broker_restart_mid_stream_loses_nothing_and_the_listener_reconnects_by_itself(
    runners, lock_file, destination
):
    messages = [subject_message("testing.record", sleep=0.01) for _ in range(150)]
    send(destination, messages)
    # The direct path: the inbox would store and ack the 150 messages before the broker stops.
    runner = run_listener(runners, lock_file, destination, **DIRECT)
    wait_for(lambda: Handling.objects.count() >= 20, 20, "handling has begun")
    rabbitmqctl("stop_app")
    try:
        wait_for(lambda: (problem(runner) or "").startswith("broker unreachable"), 30, "reported")
        assert Handling.objects.count() < len(messages), "stopped mid-stream"
    finally:
        rabbitmqctl("start_app")
        wait_for(port_open, 60, "RabbitMQ's STOMP port is back", interval=0.2)
    wait_for(lambda: {r.uid for r in Handling.objects.all()} == {uid_of(m) for m in messages}, 60, "all handled")
    wait_for(lambda: snapshot(runner).running and problem(runner) is None, 10, "recovered by itself")
    assert snapshot(runner).counters["reconnects"] >= 1
    assert snapshot(runner).crashes == 0


@pytest.mark.process
def test_kill_9_mid_stream_leaves_unacked_messages_to_the_next_runner(start_server, destination):
    messages = [subject_message("testing.record", sleep=0.02) for _ in range(200)]
    send(destination, messages)
    # The direct path: with the inbox, the first runner's stored messages may run first in the next.
    env = {"CANDLEPIN_QUEUE": destination, "CANDLEPIN_BROKER_URL": BROKER_URL}
    env["KATELLO_EVENTS_CANDLEPIN_INBOX"] = "false"
    first = start_server(manage_args("run_event_daemon"), **env)
    wait_for(lambda: Handling.objects.count() >= 30, 60, "the first runner is handling messages")
    os.kill(first.pid, signal.SIGKILL)
    first.process.wait(10)
    assert Handling.objects.count() < len(messages), "killed mid-stream"

    start_server(manage_args("run_event_daemon"), **env)
    wait_for(lambda: {r.uid for r in Handling.objects.all()} == {uid_of(m) for m in messages}, 60, "all handled")
    runs = list(Handling.objects.order_by("id"))
    assert len({run.pid for run in runs}) == 2
    second = [run for run in runs if run.pid != first.pid]
    assert second[0].metadata["redelivered"], "the killed runner's unacked messages came back to the next one"
    wait_for(lambda: messages_in_queue(destination) == 0, 20, "all acked", interval=0.5)
