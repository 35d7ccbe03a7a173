"""``manage.py loadtest --hosts N``: the load test this design was first proposed with.

Register N hosts with an activation key that provides a subscription (each gets an entitlement,
a compliance and a system-purpose message from Candlepin, and an applicability event), then
remove the product that provides the subscription (the pool is deleted, every entitlement is
removed, every host becomes non-compliant). Reports what was handled, how fast, the runner's
memory, and verifies the final state; exit status 1 when it is inconsistent.

It needs a running runner (the example project under gunicorn, or ``run_event_daemon``) unless
``--start-runner`` starts one in this process.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

import katello_events
from katello import candlepin_simulator as simulator
from katello.management.commands.simulate_candlepin import candlepin_options
from katello.models import ActivationKey, Host, Pool, Product, Subscription
from katello_events.models import Event
from katello_events.status.report import collect_status

PACKAGES = ["bash-5.2.15", "openssl-3.0.7", "kernel-6.1.10"]


class Command(BaseCommand):
    help = "Register N subscribed hosts, remove the product behind their subscription, verify the outcome."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--hosts", type=int, default=500)
        parser.add_argument("--timeout", type=float, default=600.0, help="Seconds each phase may take.")
        parser.add_argument("--start-runner", action="store_true", help="Run the handlers in this process.")

    def handle(self, *args: Any, **options: Any) -> None:
        hosts, timeout = options["hosts"], options["timeout"]
        if options["start_runner"]:
            katello_events.start()
        before = self._wait_for_runner(timeout)
        run = uuid.uuid4().hex[:8]
        rss_before = runner_rss_mb(before)
        dead_before = Event.objects.filter(state=Event.DEAD).count()
        started = time.monotonic()

        pool_id = f"pool-{run}"
        product, key = self._setup(run)
        uuids = self._register(run, key, hosts)
        with self._publisher() as publisher:
            # Candlepin's shape: the pool's id, product name and subscription id; no quantity.
            publisher.send(simulator.pool_created(pool_id, subscription_id(run), product.name))
            self._publish_each(publisher, uuids, "register", lambda u: [
                simulator.entitlement_created(pool_id, u),
                simulator.compliance_created(u, "valid"),
                simulator.system_purpose_compliance_created(u, "matched", role="Red Hat Enterprise Linux Server"),
            ])  # fmt: skip
        in_run = Host.objects.filter(consumer_uuid__startswith=f"{run}-")
        self._wait("entitled", timeout, lambda: in_run.filter(pools__candlepin_id=pool_id).count(), hosts)
        self._wait("compliant", timeout, lambda: in_run.filter(subscription_status="valid").count(), hosts)

        product.delete()  # the subscription goes with it; Candlepin then tells us the rest
        with self._publisher() as publisher:
            publisher.send(simulator.pool_deleted(pool_id, product.name))
            self._publish_each(publisher, uuids, "remove", lambda u: [
                simulator.entitlement_deleted(pool_id, u),
                simulator.compliance_created(u, "invalid", ["Not covered by a valid subscription."]),
            ])  # fmt: skip
        self._wait("non-compliant", timeout, lambda: in_run.filter(subscription_status="invalid").count(), hosts)
        self._wait("queue drained", timeout, lambda: hosts - Event.objects.filter(state=Event.PENDING).count(), hosts)
        elapsed = time.monotonic() - started

        messages = 1 + 3 * hosts + 1 + 2 * hosts
        after = self._wait_for_counts(before, hosts, messages, timeout)
        problems = verify(in_run, pool_id, hosts, dead_before, subscription=subscription_id(run), product=product.name)
        self._report(hosts, elapsed, before, after, rss_before, runner_rss_mb(after), messages, problems)
        if problems:
            sys.exit(1)

    # -- phases ----------------------------------------------------------------------------

    def _setup(self, run: str) -> tuple[Product, ActivationKey]:
        product = Product.objects.create(name=f"Loadtest product {run}")
        subscription = Subscription.objects.create(
            name=f"Loadtest subscription {run}", product=product, candlepin_id=subscription_id(run)
        )
        return product, ActivationKey.objects.create(name=f"loadtest-{run}", subscription=subscription)

    def _register(self, run: str, key: ActivationKey, count: int) -> list[str]:
        uuids = [f"{run}-{n:06d}" for n in range(count)]
        for start in range(0, count, 500):
            with transaction.atomic():
                chunk = Host.objects.bulk_create(
                    Host(name=f"host-{u}.example.com", consumer_uuid=u, activation_key=key, installed_packages=PACKAGES)
                    for u in uuids[start : start + 500]
                )
                for host in chunk:
                    katello_events.push_event("generate_host_applicability", host.pk)
            self._progress("registered", min(start + 500, count), count)
        return uuids

    def _publisher(self) -> simulator.Publisher:
        options = candlepin_options()
        return simulator.Publisher(options["BROKER_URL"], options["DESTINATION"])

    def _publish_each(self, publisher: simulator.Publisher, uuids: list[str], phase: str, build: Callable) -> None:
        for n, consumer_uuid in enumerate(uuids, 1):
            for message in build(consumer_uuid):
                publisher.send(message)
            if n % 500 == 0 or n == len(uuids):
                self._progress(f"{phase}: published for", n, len(uuids))

    def _wait(self, what: str, timeout: float, count: Callable[[], int], target: int) -> None:
        deadline = time.monotonic() + timeout
        while (done := count()) < target:
            self._progress(what, done, target)
            if time.monotonic() > deadline:
                raise CommandError(f"timed out after {timeout:.0f}s waiting for hosts {what}: {done}/{target}")
            time.sleep(0.5)
        self._progress(what, target, target)

    def _wait_for_runner(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + min(timeout, 60)
        while True:
            document = collect_status()
            services = document["services"]
            if all(services.get(name, {}).get("running") for name in ("katello_events", "candlepin_events")):
                return document
            if time.monotonic() > deadline:
                raise CommandError(
                    "no running runner: start the example project (./dev.sh example) or "
                    "`manage.py run_event_daemon`, or pass --start-runner"
                )
            time.sleep(0.5)

    def _wait_for_counts(self, before: dict, events: int, messages: int, timeout: float) -> dict[str, Any]:
        """Counters are flushed with the heartbeat: wait until they include this run."""
        deadline = time.monotonic() + min(timeout, 60)
        while True:
            after = collect_status()
            handled = delta(before, after, "candlepin_events", "processed_count")
            if handled >= messages and delta(before, after, "katello_events", "processed_count") >= 1:
                return after
            if time.monotonic() > deadline:
                return after
            time.sleep(0.5)

    def _progress(self, what: str, done: int, total: int) -> None:
        end = "\n" if done >= total else "\r"
        self.stdout.write(f"  {what}: {done}/{total}", ending=end)
        self.stdout.flush()

    def _report(self, hosts, elapsed, before, after, rss_before, rss_after, messages, problems) -> None:
        events = delta(before, after, "katello_events", "processed_count")
        handled = delta(before, after, "candlepin_events", "processed_count")
        failed = delta(before, after, "katello_events", "failed_count") + delta(
            before, after, "candlepin_events", "failed_count"
        )
        skipped = counter_delta(before, after, "katello_events", "skipped") + counter_delta(
            before, after, "candlepin_events", "skipped"
        )
        rss = f"{rss_before:.1f} MB -> {rss_after:.1f} MB" if rss_before and rss_after else "unknown (runner elsewhere)"
        lines = [
            f"hosts:            {hosts}",
            f"wall time:        {elapsed:.1f} s",
            f"events handled:   {events} (applicability and coalesced runs)",
            f"messages handled: {handled} of {messages} published",
            f"failed:           {failed}",
            f"skipped:          {skipped} (messages about hosts this application does not have)",
            f"throughput:       {(events + handled) / elapsed:.0f} handled/s",
            f"runner RSS:       {rss}",
            "verification:     " + ("OK" if not problems else "INCONSISTENT"),
            *(f"  - {problem}" for problem in problems),
        ]
        self.stdout.write("\n".join(lines))


def delta(before: dict, after: dict, service: str, counter: str) -> int:
    return (after["services"][service].get(counter) or 0) - (before["services"][service].get(counter) or 0)


def counter_delta(before: dict, after: dict, service: str, counter: str) -> int:
    """The growth of one of a service's ``counters`` (``skipped``...)."""

    def value(document: dict) -> int:
        return int((document["services"][service].get("counters") or {}).get(counter) or 0)

    return value(after) - value(before)


def subscription_id(run: str) -> str:
    """The Candlepin id of the run's subscription (what ``pool.created`` names)."""
    return f"sub-{run}"


def runner_rss_mb(document: dict[str, Any]) -> float | None:
    """The runner's resident memory, when it runs on this host."""
    import socket

    runner = document["services"]["katello_events"].get("runner") or {}
    if runner.get("hostname") != socket.gethostname() or not runner.get("pid"):
        return None
    try:
        with open(f"/proc/{runner['pid']}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def verify(
    hosts,
    pool_id: str,
    count: int,
    dead_before: int = 0,
    *,
    subscription: str | None = None,
    product: str | None = None,
) -> list[str]:
    """What is wrong with the final state (empty: consistent)."""
    problems = []
    pool = Pool.objects.filter(candlepin_id=pool_id).first()
    if pool is not None and subscription is not None and pool.candlepin_subscription_id != subscription:
        problems.append(f"pool {pool_id} names subscription {pool.candlepin_subscription_id!r}, not {subscription!r}")
    if pool is not None and product is not None and pool.product_name != product:
        problems.append(f"pool {pool_id} names product {pool.product_name!r}, not {product!r}")
    attached = hosts.filter(pools__candlepin_id=pool_id).count()
    if attached:
        problems.append(f"{attached} host(s) still attached to the removed pool {pool_id}")
    if not Pool.objects.filter(candlepin_id=pool_id, deleted_at__isnull=False).exists():
        problems.append(f"pool {pool_id} is not marked deleted")
    not_invalid = hosts.exclude(subscription_status="invalid").count()
    if not_invalid:
        problems.append(f"{not_invalid} host(s) whose compliance does not reflect the removal")
    if hosts.count() != count:
        problems.append(f"{hosts.count()} hosts registered, {count} expected")
    if hosts.filter(applicability_updated_at__isnull=True).exists():
        problems.append("host(s) whose applicability was never computed")
    pending = Event.objects.filter(state=Event.PENDING).count()
    if pending:
        problems.append(f"{pending} event(s) left pending")
    dead = Event.objects.filter(state=Event.DEAD).count() - dead_before
    if dead > 0:
        problems.append(f"{dead} new dead event(s)")
    return problems
