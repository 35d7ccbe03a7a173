"""Fencing tokens: the runner's epoch, taken when it wins the role and checked before any commit.

The election (a lock file or an advisory lock) decides who *should* run the handlers; it cannot
stop a runner that lost the role without knowing it (its lock file deleted, its fence session
killed) from committing work for a moment more. The epoch can: one row,
``katello_events_fence``, holds a number that every new runner increments when it takes the
role, and every transaction that commits handled work (an event batch, a burst of messages, a
status heartbeat) first reads that row ``FOR SHARE`` and goes on only if the number is still its
own. The share lock is held to the commit, so a successor's increment waits for a batch in
flight to end, and every batch of the deposed runner after it fails instead of committing.

Lives in the event queue's database (the alias a router names for ``Event``), so the check is
part of the batch's own transaction. Imports nothing of the package but ``models``.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connections, router, transaction

from katello_events.models import Event, RunnerFence

#: The one fence row every runner of this database competes on.
FENCE_NAME = "runner"

#: A ``WITH`` clause that yields one row only while ``epoch`` is current, locking it FOR SHARE.
#: Used inside the claim query of a batch, so the check costs no round trip of its own.
#: (S608: built from the constant above; the epoch is a query parameter.)
FENCE_CTE = "fence AS (SELECT 1 FROM katello_events_fence WHERE name = '" + FENCE_NAME + "' AND epoch = %s FOR SHARE)"  # noqa: S608


class Deposed(Exception):
    """Another runner has taken the role since this one did: nothing more may be committed here."""


def queue_alias() -> str:
    """The database alias of the event queue (and of the fence): where routers send ``Event``."""
    return router.db_for_write(Event)


@dataclass(frozen=True)
class Fence:
    """One runner's term in the role, as its handlers see it.

    ``epoch`` is None outside a runner (``drain_events()``, a handler built by a test): nothing
    is checked then. ``after_unclean_end`` says the previous runner did not stop cleanly (it was
    killed, or a handler of it never returned): the event queue then handles its first batches
    one group at a time, committing each attempt before the handler runs (see
    ``event_queue/consumer.py``).
    """

    epoch: int | None = None
    after_unclean_end: bool = False

    @property
    def active(self) -> bool:
        return self.epoch is not None

    @property
    def alias(self) -> str:
        """The database the fence lives in (the event queue's)."""
        return queue_alias()

    def check(self, using: str | None = None) -> None:
        """Raise :class:`Deposed` unless ``epoch`` is still current; call inside the transaction
        that is about to commit (the row stays share-locked until then)."""
        if self.epoch is None:
            return
        alias = using or queue_alias()
        connection = connections[alias]
        share = " FOR SHARE" if connection.vendor == "postgresql" else ""  # SQLite: one writer at a time
        with connection.cursor() as cursor:
            # S608: ``share`` is one of our two literals above; the name is a query parameter.
            cursor.execute(f"SELECT epoch FROM katello_events_fence WHERE name = %s{share}", [FENCE_NAME])  # noqa: S608
            row = cursor.fetchone()
        if row is None or row[0] != self.epoch:
            raise Deposed(f"runner epoch {self.epoch} was superseded by {row[0] if row else 'none'}")


#: Handlers built outside a runner get this one: nothing is checked.
UNFENCED = Fence()


def take_epoch(hostname: str, pid: int, lock_timeout: float, using: str | None = None) -> int:
    """Start a new term: increment the epoch (creating the row if needed) and return it.

    Waits up to ``lock_timeout`` seconds for a deposed runner's batch in flight to commit or
    roll back (it holds the row FOR SHARE); raises the database's error past that.
    """
    alias = using or queue_alias()
    connection = connections[alias]
    with transaction.atomic(using=alias):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('lock_timeout', %s, true)", [str(int(lock_timeout * 1000))])
        RunnerFence.objects.using(alias).get_or_create(name=FENCE_NAME)
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE katello_events_fence SET epoch = epoch + 1, hostname = %s, pid = %s,"
                " taken_at = CURRENT_TIMESTAMP WHERE name = %s",
                [hostname, pid, FENCE_NAME],
            )
        return RunnerFence.objects.using(alias).values_list("epoch", flat=True).get(name=FENCE_NAME)
