"""Counts of the chaos scenarios: kept for the terminal summary and written to artifacts/chaos.json."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any

ARTIFACT = Path(__file__).resolve().parent.parent / "artifacts" / "chaos.json"

#: scenario -> counts, in the order the scenarios ran in this process (conftest passes them on
#: to the terminal summary).
RESULTS: dict[str, dict[str, Any]] = {}


def record(scenario: str, **counts: Any) -> None:
    """Keep one scenario's counts and merge them into the artifact (other scenarios' stay)."""
    RESULTS[scenario] = counts
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    # Two pytest workers may record at once: one read-modify-write at a time.
    with open(ARTIFACT.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            document = json.loads(ARTIFACT.read_text())
        except (FileNotFoundError, ValueError):
            document = {}
        document[scenario] = counts
        ARTIFACT.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    print(summary_line(scenario, counts))


def summary_line(scenario: str, counts: dict[str, Any]) -> str:
    return f"chaos {scenario}: " + ", ".join(f"{key}={value}" for key, value in counts.items())
