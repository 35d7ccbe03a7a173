"""Candlepin listener benchmark: our listener vs a raw stomp.py consumer, same broker, one run.

    DJANGO_SETTINGS_MODULE=tests.settings PYTHONPATH=.:example_project \\
        .venv/bin/python bench/candlepin.py [--messages 20000] [--rounds 3]

Each round fills one queue with the same number of persistent, realistic Candlepin messages
(``pool.created``, about 700 bytes), then drains it twice, once per contender, with the same
prefetch (100), heart-beats and ``ack: client-individual``:

- raw stomp.py: acks each frame inside stomp.py's receiver thread (``on_message``), nothing else:
  the fastest a client-individual consumer goes here;
- katello_events: a real :class:`CandlepinHandler` with a no-op ``@message_handler``, fenced as
  under a runner: frames handed to its thread, parsed, run in bursts (one transaction per burst,
  which first checks the runner's fence row ``FOR SHARE``), acked once committed, counted.

Prints messages/s of each, per round and the median, and the ratio (target: at least 0.7).
Needs the broker of ``CANDLEPIN_BROKER_URL`` (default RabbitMQ on localhost) and PostgreSQL:
by default the database ``katello_events_bench``, created if missing and migrated, whose fence
row the listener checks. With ``DATABASE_URL`` set, that database is used as it is; without a
fence table there (not migrated), or with ``--unfenced``, the listener runs unfenced, as outside
a runner (no query at all for a no-op handler).
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
DATABASE = "katello_events_bench"
#: Whether the database is this bench's own (created and migrated here) or one given by the caller.
OWN_DATABASE = "DATABASE_URL" not in os.environ
os.environ.setdefault("DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{DATABASE}")

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


def purge(settings, destination: str = DESTINATION) -> int:
    """Take (auto-ack) whatever waits in ``destination`` (an earlier, interrupted run's
    messages); the number of messages."""
    connection, address = stomp_connection(settings)
    received = threading.Event()
    seen = {"n": 0}

    class Drain(stomp.ConnectionListener):
        def on_message(self, frame) -> None:
            seen["n"] += 1
            received.set()

    connection.set_listener("drain", Drain())
    connection.connect(address.username, address.password, wait=True)
    connection.subscribe(destination, id="purge", ack="auto")
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


def prepare_database() -> None:
    """Create the bench's own database if missing, and migrate it (it holds the fence row)."""
    from django.core.management import call_command

    from katello_events import pgdriver

    admin = pgdriver.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    with admin.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE])
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE DATABASE "{DATABASE}"')
    admin.close()
    call_command("migrate", verbosity=0)


def bench_fence():
    """A runner's term in the database, as the supervisor hands it to handlers; None (unfenced)
    when the database has no fence table."""
    from django.db import DatabaseError, connection

    from katello_events.fencing import Fence, take_epoch

    try:
        epoch = take_epoch("bench", os.getpid(), lock_timeout=5.0)
    except DatabaseError:
        return None
    finally:
        connection.close()  # the listener's thread opens its own
    return Fence(epoch)


def our_listener(count: int, fence=None) -> float:
    """Seconds for a real CandlepinHandler to drain ``count`` messages (and the marker); with
    ``fence`` (a ``katello_events.fencing.Fence``), it checks it as under a runner."""
    from katello_events.candlepin.options import DEFAULT_OPTIONS
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
    if "INBOX" in DEFAULT_OPTIONS:
        # Handlers run in the listener, as this bench has always measured; with the inbox (the
        # default) they would be stored for an event queue this bench does not run.
        options["INBOX"] = False
    handler = CandlepinHandler("candlepin_events", options, stats)
    if fence is not None:
        handler.fence = fence
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
    parser.add_argument("--unfenced", action="store_true", help="run the listener as outside a runner")
    args = parser.parse_args()
    django.setup()
    from katello_events.candlepin.options import parse_options

    if OWN_DATABASE and not args.unfenced:
        prepare_database()
    fence = None if args.unfenced else bench_fence()
    settings = parse_options({"BROKER_URL": BROKER_URL})
    fencing = f"fenced (epoch {fence.epoch})" if fence else "unfenced"
    print(f"{args.messages} messages per drain, prefetch {PREFETCH}, broker {settings.brokers[0]}, {fencing}")
    leftovers = purge(settings)
    if leftovers:
        print(f"(removed {leftovers} messages an earlier run left in {DESTINATION})")
    raw_rates, our_rates = [], []
    for round_number in range(1, args.rounds + 1):
        # Alternate who goes first, so neither always meets a warmer broker.
        order = [("raw", raw_rates), ("ours", our_rates)]
        for name, rates in order if round_number % 2 else reversed(order):
            fill(settings, args.messages)
            seconds = raw_consumer(settings, args.messages) if name == "raw" else our_listener(args.messages, fence)
            rates.append((args.messages + 1) / seconds)
        print(
            f"round {round_number}: raw stomp.py {raw_rates[-1]:8.0f} msg/s   katello_events {our_rates[-1]:8.0f} msg/s"
        )
    raw, ours = statistics.median(raw_rates), statistics.median(our_rates)
    print(f"median:  raw stomp.py {raw:8.0f} msg/s   katello_events {ours:8.0f} msg/s   ratio {ours / raw:.2f}")


if __name__ == "__main__":
    main()
