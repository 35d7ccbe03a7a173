"""The example project's Katello behaviours driven through the real queue (PostgreSQL)."""

from __future__ import annotations

import pytest

from katello import services
from katello.models import ContentView, Erratum, Host
from katello_events.models import Event
from tests.conftest import make_runner, start
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "katello_events.handlers.event_queue.EventQueueHandler"


@pytest.fixture
def queue_runner(runners, lock_file):
    return start(runners, make_runner(lock_file, {"katello_events": (QUEUE, {"POLL_INTERVAL": 0.2})}))


def drained() -> bool:
    return not Event.objects.exists()


def test_ten_quick_publishes_end_in_one_composite_publish(queue_runner):
    component = ContentView.objects.create(name="RHEL 9 base")
    composite = ContentView.objects.create(name="RHEL 9 composite", composite=True, auto_publish=True)
    manual = ContentView.objects.create(name="manual composite", composite=True, auto_publish=False)
    composite.components.add(component)
    manual.components.add(component)

    for _ in range(10):
        services.publish(component)
    assert component.versions.count() == 10
    wait_for(lambda: composite.versions.exists() and drained(), 30, "the composite published")
    assert composite.versions.count() == 1, "coalesced: one composite publish for ten component publishes"
    assert not manual.versions.exists(), "composites without auto-publish are left alone"


def test_errata_applicability_follows_installed_packages(queue_runner):
    Erratum.objects.create(errata_id="RHSA-2026:0001", packages=["bash-5.2.26"])
    Erratum.objects.create(errata_id="RHBA-2026:0002", packages=["kernel-6.1.10"])
    host = Host.objects.create(name="web-1", consumer_uuid="uuid-web-1")

    services.set_installed_packages(host, ["bash-5.2.15", "kernel-6.1.10"])
    wait_for(lambda: drained() and Host.objects.get(pk=host.pk).applicability_updated_at, 15, "computed")
    assert list(host.applicable_errata.values_list("errata_id", flat=True)) == ["RHSA-2026:0001"]

    services.set_installed_packages(host, ["bash-5.2.26", "kernel-6.1.9"])
    wait_for(lambda: drained() and host.applicable_errata.filter(errata_id="RHBA-2026:0002").exists(), 15, "again")
    assert list(host.applicable_errata.values_list("errata_id", flat=True)) == ["RHBA-2026:0002"]
