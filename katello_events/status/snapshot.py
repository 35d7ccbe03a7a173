"""What the runner knows of one handler slot at a heartbeat: the unit the status rows are written from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The category of a stalled slot's problem: what every reader of the status sees.
STALLED = "stalled"


@dataclass(frozen=True)
class SlotSnapshot:
    """What the status store writes for one slot."""

    name: str
    running: bool
    problem: str | None
    counters: dict[str, int]
    gauges: dict[str, Any]
    details: dict[str, Any]
    crashes: int
    last_error: str | None
