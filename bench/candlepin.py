"""Candlepin listener benchmark: our listener vs a raw stomp.py consumer, same broker, one run.

    DJANGO_SETTINGS_MODULE=tests.settings PYTHONPATH=.:example_project \\
        .venv/bin/python bench/candlepin.py [--messages 20000] [--rounds 3]

Each round fills one queue with the same number of persistent, realistic Candlepin messages
(``pool.created``, about 700 bytes), then drains it twice, once per contender, with the same
prefetch (100), heart-beats and ``ack: client-individual``:

- raw stomp.py: acks each frame inside stomp.py's receiver thread (``on_message``), nothing else:
  the fastest a client-individual consumer goes here;
- katello_events: a real :class:`CandlepinHandler` with a no-op ``@message_handler``: frames
  handed to its thread, parsed, dispatched (the handler runs in a transaction), acked, counted.

Prints messages/s of each, per round and the median, and the ratio (target: at least 0.7).
Needs the broker of ``CANDLEPIN_BROKER_URL`` (default RabbitMQ on localhost) and PostgreSQL
(only connected to: the no-op handler's transaction sends no query).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "example_project")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
# Nothing is written: any existing database will do for the handler's (empty) transactions.
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")

import django  # noqa: E402
import stomp  # noqa: E402

BROKER_URL = os.environ.get("CANDLEPIN_BROKER_URL", "stomp://guest:guest@127.0.0.1:61613")
DESTINATION = "/queue/katello_events.bench"
PREFETCH = 100
HEARTBEATS = (30000, 30000)


def body(n: int) -> str:
    return json.dumps(
        {
            "id": uuid.uuid4().hex,
            "type": "CREATED",
            "target": "POOL",
            "targetName": f"Pool {n}",
            "timestamp": int(time.time() * 1000),
            "entityId": uuid.uuid4().hex,
            "ownerId": "8a8d01f77c5f4a5b017c5f4e9ee70003",
            "consumerUuid": None,
            "referenceId": None,
            "referenceType": None,
            "eventData": json.dumps({"subscriptionId": f"sub-{n}", "productId": "RH00004", "quantity": 10}),
            "messageText": None,
            "principal": {"type": "trusteduser", "name": "foreman_admin"},
        }
    )


def stomp_connection(settings) -> tuple[stomp.Connection12, object]:
    address = settings.brokers[0]
    connection = stomp.Connection12(
        [(address.host, address.port)], heartbeats=HEARTBEATS, vhost=settings.vhost, auto_decode=False
    )
    return connection, address


def fill(settings, count: int) -> None:
    connection, address = stomp_connection(settings)
    connection.connect(address.username, address.password, wait=True)
    headers = {"persistent": "true", "EVENT_TARGET": "POOL", "EVENT_TYPE": "CREATED"}
    for n in range(count):
        connection.send(DESTINATION, body(n), headers=headers)
    # A receipt on the last frame: every message is in the queue when this returns.
    receipt = threading.Event()

    class Receipts(stomp.ConnectionListener):
        def on_receipt(self, frame) -> None:
            receipt.set()

    connection.set_listener("receipts", Receipts())
    connection.send(DESTINATION, body(count), headers={**headers, "EVENT_TARGET": "BENCH"}, receipt="filled")
    receipt.wait(60)
    connection.disconnect(receipt=uuid.uuid4().hex)  # waits until the broker has let go of it


def purge(settings) -> int:
    """Take whatever an earlier, interrupted run left in the queue; the number of messages."""
    connection, address = stomp_connection(settings)
    received = threading.Event()
    seen = {"n": 0}

    class Drain(stomp.ConnectionListener):
        def on_message(self, frame) -> None:
            seen["n"] += 1
            received.set()

    connection.set_listener("drain", Drain())
    connection.connect(address.username, address.password, wait=True)
    connection.subscribe(DESTINATION, id="purge", ack="auto")
    while received.wait(0.5):  # until half a second passes without a message
        received.clear()
    connection.disconnect(receipt=uuid.uuid4().hex)  # waits until the broker has let go of it
    return seen["n"]


def raw_consumer(settings, count: int) -> float:
    """Seconds to drain ``count`` messages (and the marker) acking in the receiver thread."""
    connection, address = stomp_connection(settings)
    done = threading.Event()
    seen = {"n": 0}

    class Acker(stomp.ConnectionListener):
        def on_message(self, frame) -> None:
            connection.ack(frame.headers["ack"])
            seen["n"] += 1
            if seen["n"] >= count + 1:
                done.set()

    connection.set_listener("acker", Acker())
    started = time.perf_counter()
    connection.connect(address.username, address.password, wait=True)
    connection.subscribe(DESTINATION, id="bench", ack="client-individual", headers={"prefetch-count": str(PREFETCH)})
    if not done.wait(300):
        raise SystemExit("raw consumer: timed out")
    elapsed = time.perf_counter() - started
    connection.disconnect(receipt=uuid.uuid4().hex)  # waits until the broker has let go of it
    return elapsed


def our_listener(count: int) -> float:
    """Seconds for a real CandlepinHandler to drain ``count`` messages (and the marker)."""
    from katello_events.handlers.base import HandlerStats
    from katello_events.handlers.candlepin import CandlepinHandler
    from katello_events.registry import message_handlers

    done = threading.Event()
    seen = {"n": 0}

    def noop(message) -> None:
        seen["n"] += 1

    def marker(message) -> None:
        done.set()

    previous = message_handlers.reset({"pool.created": noop, "bench.created": marker})
    stats = HandlerStats()
    options = {"BROKER_URL": BROKER_URL, "DESTINATION": DESTINATION, "PREFETCH": PREFETCH, "HEARTBEATS": HEARTBEATS}
    handler = CandlepinHandler("candlepin_events", options, stats)
    thread = threading.Thread(target=handler.run, name="katello-events:candlepin_events")
    started = time.perf_counter()
    thread.start()
    try:
        if not done.wait(300):
            raise SystemExit(f"our listener: timed out ({stats.counters()}, problem {handler.status().problem})")
        elapsed = time.perf_counter() - started
    finally:
        handler.stop()
        thread.join(30)
        message_handlers.reset(previous)
    if seen["n"] != count:
        raise SystemExit(f"our listener handled {seen['n']} of {count}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    django.setup()
    from katello_events.candlepin.settings import parse_options

    settings = parse_options({"BROKER_URL": BROKER_URL})
    print(f"{args.messages} persistent messages per drain, prefetch {PREFETCH}, broker {settings.brokers[0]}")
    leftovers = purge(settings)
    if leftovers:
        print(f"(removed {leftovers} messages an earlier run left in {DESTINATION})")
    raw_rates, our_rates = [], []
    for round_number in range(1, args.rounds + 1):
        # Alternate who goes first, so neither always meets a warmer broker.
        order = [("raw", raw_rates), ("ours", our_rates)]
        for name, rates in order if round_number % 2 else reversed(order):
            fill(settings, args.messages)
            seconds = raw_consumer(settings, args.messages) if name == "raw" else our_listener(args.messages)
            rates.append((args.messages + 1) / seconds)
        print(
            f"round {round_number}: raw stomp.py {raw_rates[-1]:8.0f} msg/s   katello_events {our_rates[-1]:8.0f} msg/s"
        )
    raw, ours = statistics.median(raw_rates), statistics.median(our_rates)
    print(f"median:  raw stomp.py {raw:8.0f} msg/s   katello_events {ours:8.0f} msg/s   ratio {ours / raw:.2f}")


if __name__ == "__main__":
    main()
