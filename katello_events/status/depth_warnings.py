"""Queue-depth warnings: one log line and one signal per crossing of the threshold, not per poll."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from katello_events.conf import queue_depth_threshold
from katello_events.log import get_logger
from katello_events.signals import queue_depth_exceeded, queue_depth_recovered
from katello_events.status.snapshot import SlotSnapshot

logger = get_logger(__name__)

#: A queue counts as recovered once it is back to this fraction of its threshold (hysteresis,
#: so a depth hovering at the threshold does not warn on every heartbeat).
RECOVERY_RATIO = 0.8


class QueueDepthMonitor:
    """Watches the runner's snapshots, in its control thread, at every heartbeat.

    The state is the runner's: a new runner announces a queue that is still too deep once more.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config
        self.exceeded: set[str] = set()

    def observe(self, snapshots: list[SlotSnapshot]) -> None:
        for snap in snapshots:
            depth = snap.gauges.get("queue_depth")
            threshold = queue_depth_threshold(snap.name, self.config)
            if depth is None or threshold is None:
                continue
            if snap.name not in self.exceeded and depth > threshold:
                self.exceeded.add(snap.name)
                logger.warning(
                    "queue of %s is %d deep, above its threshold of %d", snap.name, depth, threshold,
                    extra={"handler": snap.name, "depth": depth, "threshold": threshold},
                )  # fmt: skip
                self._send(queue_depth_exceeded, snap.name, depth, threshold)
            elif snap.name in self.exceeded and depth <= threshold * RECOVERY_RATIO:
                self.exceeded.discard(snap.name)
                logger.info(
                    "queue of %s is back to %d, below its threshold of %d", snap.name, depth, threshold,
                    extra={"handler": snap.name, "depth": depth, "threshold": threshold},
                )  # fmt: skip
                self._send(queue_depth_recovered, snap.name, depth, threshold)

    def _send(self, signal: Any, handler: str, depth: int, threshold: int) -> None:
        for receiver, result in signal.send_robust(sender=None, handler=handler, depth=depth, threshold=threshold):
            if isinstance(result, Exception):
                logger.error("queue-depth signal receiver %r failed: %s", receiver, result)
