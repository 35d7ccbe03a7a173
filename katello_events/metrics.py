"""``/metrics``: the status document in Prometheus' format (needs the ``metrics`` extra).

Read from the shared status rows at scrape time (:func:`collect_status`) into a registry made for
the request, so every worker of every host serves the same numbers, with no global registry to
keep in sync and no multiprocess directory to manage. A scrape costs one status read, the same as
a ping.

Per handler (label ``handler``)::

    katello_events_processed_total          counter  events handled, cumulative across runners
    katello_events_failed_total             counter  events that failed, cumulative across runners
    katello_events_queue_depth              gauge    events ready to run now (omitted when unknown)
    katello_events_queue_depth_threshold    gauge    the WARN threshold (omitted when none)
    katello_events_running                  gauge    1 when a runner with a fresh heartbeat runs it
    katello_events_heartbeat_age_seconds    gauge    seconds since the runner's last heartbeat
    katello_events_up                       gauge    1 when the service is ok or WARN, 0 when FAIL
    katello_events_runner_info              info     hostname and pid of the runner (see below)

A metric whose value is unknown (no status row yet, database unreachable) is left out rather
than reported as 0, so a rate() never sees a fake reset; ``katello_events_up`` is always there.
``runner_info`` names hosts and pids, so it is only served to the readers that
``DETAILS_VISIBLE_TO`` names, like the details of ``/api/ping``, unless ``METRICS_INCLUDE_RUNNER``
serves it to every reader ``METRICS_VISIBLE_TO`` admits (``"nobody"`` turns /metrics off).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache

from katello_events.conf import setting
from katello_events.status.report import FAIL, collect_status
from katello_events.views import audience_admits, details_visible

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

PREFIX = "katello_events"
LABELS = ["handler"]

MISSING_CLIENT = "prometheus_client is not installed: install katello_events[metrics] to serve /metrics\n"

#: (metric suffix, document key, help text) of the gauges read straight from a service entry.
_GAUGES = [
    ("queue_depth", "queue_depth", "Events ready to run now (omitted when unknown)."),
    ("queue_depth_threshold", "queue_depth_threshold", "Queue depth above which the service reads WARN."),
    ("heartbeat_age_seconds", "heartbeat_age_s", "Seconds since the runner's last heartbeat."),
]


@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    """The Prometheus exposition of the status document; 501 without prometheus_client."""
    try:
        import prometheus_client  # noqa: F401  (only asks whether the optional extra is there)
    except ImportError:
        return HttpResponse(MISSING_CLIENT, status=501, content_type="text/plain; charset=utf-8")
    # setting(): a refused KATELLO_EVENTS (an unknown key) still answers, with every service down.
    audience = setting("METRICS_VISIBLE_TO")
    if audience == "nobody":
        raise Http404("/metrics is turned off (KATELLO_EVENTS['METRICS_VISIBLE_TO'] is 'nobody')")
    if not audience_admits(request, audience):
        return HttpResponse("not allowed to read the metrics\n", status=403, content_type="text/plain; charset=utf-8")
    include_runner = bool(setting("METRICS_INCLUDE_RUNNER")) or details_visible(request)
    body, content_type = render(collect_status(), request.headers.get("Accept", ""), include_runner)
    return HttpResponse(body, content_type=content_type)


def render(document: dict[str, Any], accept: str = "", include_runner: bool = False) -> tuple[bytes, str]:
    """The exposition of ``document`` in the format ``accept`` asks for (text or OpenMetrics)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families(document, include_runner=include_runner)))
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def families(document: dict[str, Any], *, include_runner: bool = False) -> list[Metric]:
    """The metric families of a status document (see the module docstring)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

    services = document["services"]
    processed = CounterMetricFamily(f"{PREFIX}_processed", "Events handled.", labels=LABELS)
    failed = CounterMetricFamily(f"{PREFIX}_failed", "Events whose handling failed.", labels=LABELS)
    running = GaugeMetricFamily(f"{PREFIX}_running", "1 when the handler runs with a fresh heartbeat.", labels=LABELS)
    up = GaugeMetricFamily(f"{PREFIX}_up", "1 when the service is ok or WARN, 0 when FAIL.", labels=LABELS)
    gauges = [(key, GaugeMetricFamily(f"{PREFIX}_{suffix}", text, labels=LABELS)) for suffix, key, text in _GAUGES]
    runner = InfoMetricFamily(f"{PREFIX}_runner", "The runner of the handler.", labels=LABELS)
    for name, entry in services.items():
        _add_known(processed, name, entry.get("processed_count"))
        _add_known(failed, name, entry.get("failed_count"))
        _add_known(running, name, None if entry.get("running") is None else int(entry["running"]))
        up.add_metric([name], 0 if entry["status"] == FAIL else 1)
        for key, family in gauges:
            _add_known(family, name, entry.get(key))
        if include_runner and (info := entry.get("runner")) and info.get("hostname"):
            runner.add_metric([name], {"hostname": info["hostname"], "pid": str(info.get("pid") or "")})
    tasks = GaugeMetricFamily(
        f"{PREFIX}_task_results",
        "Django Tasks results kept, by backend, queue and status (waiting: READY).",
        labels=["backend", "queue", "status"],
    )
    for entry in services.values():
        for queue in entry.get("task_queues") or []:
            for status in ("waiting", "successful", "failed"):
                tasks.add_metric([queue["backend"], queue["queue_name"], status], queue[status])
    return [processed, failed, *(family for _, family in gauges), running, up, runner, tasks]


def _add_known(family: Any, handler: str, value: float | None) -> None:
    if value is not None:
        family.add_metric([handler], value)


class _Families:
    """A collector that yields metric families built beforehand (one registry per scrape)."""

    def __init__(self, built: Iterable[Metric]) -> None:
        self._built = list(built)

    def collect(self) -> Iterator[Metric]:
        return iter(self._built)
