"""What a claimed batch is made of: rows grouped by (event_type, object_id), the handler calls
they make (a chunk of groups per batch-handler call), and the retry policy."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from katello_events.event_queue.types import QueuedEvent


@dataclass(frozen=True)
class RetryPolicy:
    """How failed events are retried: ``max_attempts`` attempts, exponential backoff."""

    max_attempts: int = 5
    backoff: float = 10.0  # seconds before the second attempt; doubles each time
    backoff_max: float = 3600.0  # seconds

    def delay_after(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failure."""
        return min(self.backoff * 2 ** max(attempts - 1, 0), self.backoff_max)


@dataclass
class Group:
    """The claimed pending events of one (event_type, object_id): handled once, newest metadata."""

    event_type: str
    object_id: str
    rows: list[tuple] = field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        return [row[0] for row in self.rows]

    @property
    def attempts(self) -> int:
        """Attempts already made (the most of any of its rows: they are folded on failure)."""
        rows = self.rows
        return rows[0][4] if len(rows) == 1 else max(row[4] for row in rows)

    @property
    def newest(self) -> tuple:
        rows = self.rows
        return rows[0] if len(rows) == 1 else max(rows, key=operator.itemgetter(0))

    def event(self) -> QueuedEvent:
        rows = self.rows
        newest = self.newest
        created_at = rows[0][5] if len(rows) == 1 else min(row[5] for row in rows)
        return QueuedEvent(
            id=newest[0], event_type=self.event_type, object_id=self.object_id, metadata=newest[3],
            attempts=self.attempts, created_at=created_at, coalesced=len(rows),
        )  # fmt: skip


def group_rows(rows: Iterable[tuple]) -> list[Group]:
    """Rows grouped by (event_type, object_id), in the order of each group's oldest row."""
    groups: dict[tuple[str, str], Group] = {}
    for row in sorted(rows, key=operator.itemgetter(0)):
        key = (row[1], row[2])
        if key not in groups:
            groups[key] = Group(event_type=row[1], object_id=row[2])
        groups[key].rows.append(row)
    return list(groups.values())


@dataclass
class Chunk:
    """Groups of one event type whose handler takes many events per call (a batch handler)."""

    event_type: str
    function: Callable[[list[QueuedEvent]], Any]
    groups: list[Group] = field(default_factory=list)

    def events(self) -> list[QueuedEvent]:
        return [group.event() for group in self.groups]


def plan_calls(
    groups: list[Group], batch_handler_of: Callable[[str], tuple[Callable[[list[QueuedEvent]], Any], int] | None]
) -> list[Group | Chunk]:
    """The handler calls a batch makes, in order: one per group, except for event types with a
    batch handler (``batch_handler_of`` gives its function and size, else None), whose groups go
    in chunks of at most that size, each placed where its first group was."""
    calls: list[Group | Chunk] = []
    open_chunks: dict[str, Chunk] = {}
    for group in groups:
        batch_handler = batch_handler_of(group.event_type)
        if batch_handler is None:
            calls.append(group)
            continue
        function, size = batch_handler
        chunk = open_chunks.get(group.event_type)
        if chunk is None or len(chunk.groups) >= size:
            chunk = open_chunks[group.event_type] = Chunk(group.event_type, function)
            calls.append(chunk)
        chunk.groups.append(group)
    return calls
