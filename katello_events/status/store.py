"""The runner's side of the status rows: claim them, heartbeat them, hand them back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

from django.db import connections, router, transaction
from django.db.models import F, Q
from django.db.models.functions import Now

from katello_events.fencing import UNFENCED, Fence
from katello_events.models import HandlerStatus
from katello_events.status.snapshot import SlotSnapshot

#: Counters that have a column of their own; any other counter goes to the ``counters`` JSON.
COLUMN_COUNTERS = {"processed": "processed_count", "failed": "failed_count"}

#: Longest wait for a row lock, and longest statement, in the runner's own writes (claim,
#: heartbeat, release), in milliseconds: well under a heartbeat's worth of supervision.
LOCK_TIMEOUT_MS = 2000
STATEMENT_TIMEOUT_MS = 5000

#: Ends every problem a runner writes when its handlers did not stop: the next runner reads it
#: (or a row still marked running) as an unclean end, and takes its first batches carefully.
HELD_UNTIL_EXIT = "the runner lock is held until this process exits"


@dataclass(frozen=True)
class RunnerIdentity:
    hostname: str
    pid: int


class StatusStore:
    """Writes one runner's status rows. Used from the runner's control thread only.

    Counters are flushed as deltas (``F() + n``) in one transaction per heartbeat, so totals
    survive restarts and changes of runner; a failed flush keeps its deltas for the next one.
    """

    def __init__(self, identity: RunnerIdentity, names: list[str]) -> None:
        self.identity = identity
        self.names = names
        self._flushed: dict[str, dict[str, int]] = {name: {} for name in names}
        self._extra_base: dict[str, dict[str, int]] = {name: {} for name in names}
        self._restarts_flushed: dict[str, int] = {name: 0 for name in names}
        self._last_error_seen: dict[str, str | None] = {name: None for name in names}
        #: This runner's term: every heartbeat checks it, so a deposed runner writes nothing.
        self.fence: Fence = UNFENCED

    def claim(self) -> bool:
        """Mark this process as the runner of every slot (raises on any database error).

        Returns True when the previous runner ended uncleanly: a row still said running (it was
        killed) or that its handlers never stopped.
        """
        unclean = False
        alias = router.db_for_write(HandlerStatus)
        with transaction.atomic(using=alias):
            _bound_waits(alias)
            for name in self.names:
                row, _ = HandlerStatus.objects.select_for_update().get_or_create(name=name)
                unclean = unclean or row.running or HELD_UNTIL_EXIT in row.problem
                self._extra_base[name] = {k: int(v) for k, v in (row.counters or {}).items()}
                HandlerStatus.objects.filter(name=name).update(
                    running=True,
                    hostname=self.identity.hostname,
                    pid=self.identity.pid,
                    since=Now(),
                    heartbeat_at=Now(),
                    problem="",
                )
        return unclean

    def heartbeat(
        self,
        snapshots: list[SlotSnapshot],
        *,
        running: bool = True,
        problem: str | None = None,
        error: str | None = None,
    ) -> None:
        """Write every slot's state and counter deltas in one transaction (raises on error).

        ``problem`` overrides every row's problem; ``error`` is recorded as every row's last error.
        Raises :class:`~katello_events.fencing.Deposed`, writing nothing, once another runner
        has taken the role: the fence row stays share-locked until the rows are written, so a
        successor's claim always comes after this heartbeat, never before it.
        """
        pending = []
        alias = router.db_for_write(HandlerStatus)
        with transaction.atomic(using=self.fence.alias), transaction.atomic(using=alias):
            for bounded in {self.fence.alias, alias}:  # one statement when both are one database
                _bound_waits(bounded)
            self.fence.check(self.fence.alias)
            for snap in snapshots:
                fields, flushed = self._row_update(snap, running)
                if problem:
                    fields["problem"] = problem
                if error:
                    fields.update(last_error=error, last_error_at=Now())
                HandlerStatus.objects.filter(name=snap.name).update(**fields)
                pending.append((snap, flushed))
        for snap, flushed in pending:  # only once committed
            self._flushed[snap.name] = flushed
            self._restarts_flushed[snap.name] = snap.crashes
            self._last_error_seen[snap.name] = _newest_error(snap)

    def _row_update(self, snap: SlotSnapshot, running: bool) -> tuple[dict, dict[str, int]]:
        flushed = self._flushed[snap.name]
        fields: dict = {
            "running": running and snap.running,
            "hostname": self.identity.hostname,
            "pid": self.identity.pid,
            "heartbeat_at": Now(),
            "problem": (snap.problem or "") if running else "",
            "queue_depth": snap.gauges.get("queue_depth"),
            "details": _json_safe({**snap.gauges, **snap.details}),
            "restarts": F("restarts") + (snap.crashes - self._restarts_flushed[snap.name]),
        }
        extra = dict(self._extra_base[snap.name])
        for counter, value in snap.counters.items():
            if counter in COLUMN_COUNTERS:
                column = COLUMN_COUNTERS[counter]
                fields[column] = F(column) + (value - flushed.get(counter, 0))
            else:
                extra[counter] = extra.get(counter, 0) + value
        fields["counters"] = extra
        error = _newest_error(snap)
        if error and error != self._last_error_seen[snap.name]:
            fields.update(last_error=error, last_error_at=Now())
        return fields, dict(snap.counters)

    def release(self, snapshots: list[SlotSnapshot], problem: str | None = None, handover: str | None = None) -> None:
        """Final flush when stepping down: the rows say "not running" at once (and why, if
        ``problem`` is given).

        ``handover`` is the reason this runner gave the role away on purpose (the memory
        watchdog): it becomes the problem and the last error, and ``counters["handovers"]``
        (cumulative, like every counter) grows by one.
        """
        if handover:
            for base in self._extra_base.values():
                base["handovers"] = base.get("handovers", 0) + 1
        self.heartbeat(snapshots, running=False, problem=problem or handover, error=handover)


def _bound_waits(alias: str) -> None:
    """Bound this transaction's lock waits and statements (PostgreSQL): a row locked by another
    session or a hung database fails one heartbeat, never freezes supervision and fencing."""
    connection = connections[alias]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                [str(LOCK_TIMEOUT_MS), str(STATEMENT_TIMEOUT_MS)],
            )


def _json_safe(value: dict) -> dict:
    """Handler-provided details as plain JSON (anything else becomes its ``str``)."""
    return json.loads(json.dumps(value, default=str))


def _newest_error(snap: SlotSnapshot) -> str | None:
    # A slot waiting to restart describes its countdown in `problem`; its error is the crash.
    return snap.problem if snap.running else (snap.last_error or snap.problem)


def report_standby_problem(names: list[str], problem: str, stale_after: float) -> int:
    """A candidate that cannot compete (its election lock is unusable) says why in the rows.

    Only rows no live runner holds are written (not running, or no heartbeat for
    ``stale_after`` seconds): a healthy runner elsewhere keeps its rows. Missing rows are
    created. Returns the number of rows written; raises on database errors.
    """
    alias = router.db_for_write(HandlerStatus)
    with transaction.atomic(using=alias):
        _bound_waits(alias)
        for name in names:
            HandlerStatus.objects.get_or_create(name=name, defaults={"running": False, "heartbeat_at": None})
        live = Q(running=True, heartbeat_at__gt=Now() - timedelta(seconds=stale_after))
        return HandlerStatus.objects.filter(name__in=names).exclude(live).update(running=False, problem=problem)
