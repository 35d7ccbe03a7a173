"""The domain's own operations: what the web application does before events take over."""

from __future__ import annotations

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

import katello_events
from katello.models import ContentView, ContentViewVersion, Erratum, Host

#: Seconds an auto-publish waits for more component publishes before it runs (a debounce:
#: the pair's pending events run once, when the first is due).
AUTO_PUBLISH_DELAY = 2.0


def publish(content_view: ContentView) -> ContentViewVersion:
    """Publish a new version; composites that auto-publish follow, once per burst."""
    with transaction.atomic():
        ContentView.objects.select_for_update().get(pk=content_view.pk)  # one version number at a time
        latest = content_view.versions.aggregate(number=Max("number"))["number"] or 0
        version = ContentViewVersion.objects.create(content_view=content_view, number=latest + 1)
        for composite in content_view.composites.filter(auto_publish=True):
            katello_events.push_event(
                "auto_publish_composite_view", composite.pk, {"component_version": version.pk}, delay=AUTO_PUBLISH_DELAY
            )
    return version


def set_installed_packages(host: Host, packages: list[str]) -> None:
    """A host reported its packages: its applicable errata must be recomputed."""
    with transaction.atomic():
        host.installed_packages = sorted(packages)
        host.save(update_fields=["installed_packages"])
        katello_events.push_event("generate_host_applicability", host.pk)


def recompute_applicability(host: Host) -> None:
    """An erratum applies when the host has one of its packages at an older version."""
    recompute_applicability_of([host])


def recompute_applicability_of(hosts: list[Host]) -> None:
    """:func:`recompute_applicability` for many hosts, reading the errata once."""
    errata = [
        (erratum, [(_split(p)[0], _version(_split(p)[1])) for p in erratum.packages])
        for erratum in Erratum.objects.all()
    ]
    now = timezone.now()
    for host in hosts:
        installed = {name: _version(version) for name, version in map(_split, host.installed_packages)}
        applicable = [
            erratum
            for erratum, packages in errata
            if any(name in installed and installed[name] < version for name, version in packages)
        ]
        host.applicable_errata.set(applicable)
        host.applicability_updated_at = now
    Host.objects.bulk_update(hosts, ["applicability_updated_at"])


def _split(package: str) -> tuple[str, str]:
    name, _, version = package.rpartition("-")
    return name, version


def _version(text: str) -> tuple[int | str, ...]:
    return tuple(int(part) if part.isdigit() else part for part in text.split("."))
