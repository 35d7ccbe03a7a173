"""Event handlers of the tests (discovered like any installed app's events.py)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from django.db import connection

from katello_events import RetryLater, event_handler, message_handler
from tests.eventsapp.models import Handling, Switch


def record(event) -> Handling:
    metadata = event.metadata or {}
    return Handling.objects.create(
        uid=str(metadata.get("uid", "")) if isinstance(metadata, dict) else "",
        event_type=event.event_type,
        object_id=event.object_id,
        metadata=event.metadata,
        attempts=event.attempts,
        coalesced=event.coalesced,
        pid=os.getpid(),
    )


@event_handler("test.record")
def handle_record(event) -> None:
    """Records the run; metadata may ask it to touch a file ("mark") and then "sleep" seconds."""
    record(event)
    metadata = event.metadata if isinstance(event.metadata, dict) else {}
    if metadata.get("mark"):
        Path(metadata["mark"]).touch()
    if metadata.get("sleep"):
        time.sleep(metadata["sleep"])


@event_handler("test.span")
def handle_span(event) -> None:
    """Records when its run started and ended, and in which thread (concurrency tests).

    Metadata may ask it to touch a file ("mark") once started, then to sleep ("sleep" seconds).
    """
    started = time.time()
    metadata = dict(event.metadata) if isinstance(event.metadata, dict) else {}
    if metadata.get("mark"):
        Path(metadata["mark"]).touch()
    time.sleep(metadata.get("sleep", 0))
    Handling.objects.create(
        uid=str(metadata.get("uid", "")),
        event_type=event.event_type,
        object_id=event.object_id,
        metadata={**metadata, "start": started, "end": time.time(), "thread": threading.current_thread().name},
        attempts=event.attempts,
        coalesced=event.coalesced,
        pid=os.getpid(),
    )


@event_handler("test.batch", batch_size=5)
def handle_batch(events) -> None:
    """A batch handler: one Handling row per event, all naming the call. Metadata may ask an
    event to fail alone ("fail": PartialFailure) or to fail the whole call ("explode")."""
    import uuid

    from katello_events import PartialFailure

    call = uuid.uuid4().hex
    for event in events:
        metadata = event.metadata if isinstance(event.metadata, dict) else {}
        Handling.objects.create(
            uid=str(metadata.get("uid", "")),
            event_type=event.event_type,
            object_id=event.object_id,
            metadata={**metadata, "call": call, "size": len(events)},
            attempts=event.attempts,
            coalesced=event.coalesced,
            pid=os.getpid(),
        )
    if any((e.metadata or {}).get("explode") for e in events):
        raise RuntimeError("the whole call failed")
    failed = [e.object_id for e in events if (e.metadata or {}).get("fail")]
    if failed:
        raise PartialFailure(failed, "these hosts were not found")


@event_handler("test.inspect")
def handle_inspect(event) -> None:
    """Records what another session sees of this event's row while its handler runs."""
    from django.db import connections

    from katello_events.models import Event

    other = connections.create_connection("default")  # not this transaction: what is committed
    try:
        with other.cursor() as cursor:
            cursor.execute(
                "SELECT attempts, attempt_started_at IS NOT NULL FROM katello_events_event WHERE id = %s", [event.id]
            )
            committed = cursor.fetchone()
    finally:
        other.close()
    in_atomic = {alias: connections[alias].in_atomic_block for alias in connections}
    Handling.objects.create(
        uid=str(event.id),
        event_type=event.event_type,
        object_id=event.object_id,
        metadata={
            "committed": committed,
            "in_atomic": in_atomic,
            "pending": Event.objects.filter(id=event.id).exists(),
        },
        attempts=event.attempts,
        coalesced=event.coalesced,
        pid=os.getpid(),
    )


@event_handler("test.fail")
def handle_fail(event) -> None:
    record(event)  # rolled back with the failure: tests can check nothing leaked
    raise RuntimeError(f"cannot handle {event.object_id} (token=abc123)")


@event_handler("test.fail_until_switched")
def handle_fail_until_switched(event) -> None:
    if not Switch.objects.filter(name=event.object_id).exists():
        raise RuntimeError(f"switch {event.object_id} is off")
    record(event)


@event_handler("test.retry_later_until_switched")
def handle_retry_later_until_switched(event) -> None:
    if not Switch.objects.filter(name=event.object_id).exists():
        raise RetryLater(float(event.metadata["seconds"]), "busy")
    record(event)


# -- Candlepin message handlers --------------------------------------------------------------

#: Every subject Candlepin sends Katello (see ../shared/REFERENCE.md).
CANDLEPIN_SUBJECTS = (
    "pool.created",
    "pool.deleted",
    "entitlement.created",
    "entitlement.deleted",
    "compliance.created",
    "system_purpose_compliance.created",
    "owner_content_access_mode.modified",
)


def record_message(message) -> Handling:
    """One Handling row per run: uid = the body's id, object_id = the pool or consumer it is about."""
    body = message.body
    return Handling.objects.create(
        uid=str(body.get("id", "")),
        event_type=message.subject,
        object_id=str(body.get("referenceId") or body.get("entityId") or body.get("consumerUuid") or ""),
        metadata={"event_data": message.event_data, "redelivered": message.redelivered},
        attempts=0,
        coalesced=1,
        pid=os.getpid(),
    )


#: What the inbox coalesces these subjects by: the example domain's keys (katello/candlepin_events.py).
CANDLEPIN_COALESCE_BY = {
    "pool.created": lambda message: message.body.get("entityId"),
    "pool.deleted": lambda message: message.body.get("entityId"),
    "compliance.created": lambda message: message.body.get("consumerUuid"),
    "system_purpose_compliance.created": lambda message: message.body.get("consumerUuid"),
    "owner_content_access_mode.modified": lambda message: message.body.get("entityId"),
}

for _subject in CANDLEPIN_SUBJECTS:
    message_handler(_subject, coalesce_by=CANDLEPIN_COALESCE_BY.get(_subject))(record_message)


@message_handler("testing.record")
def handle_testing_record(message) -> None:
    """Records the run; the body's "sleep" (seconds) makes it slow, after recording."""
    record_message(message)
    if message.body.get("sleep"):
        time.sleep(message.body["sleep"])


@message_handler("testing.where")
def handle_testing_where(message) -> None:
    """Records the run with the name of the thread it ran in: the listener's, or the event queue's."""
    run = record_message(message)
    run.metadata = {**run.metadata, "thread": threading.current_thread().name}
    run.save(update_fields=["metadata"])


@message_handler("testing.fail")
def handle_testing_fail(message) -> None:
    raise RuntimeError(f"cannot handle message {message.body.get('id')} (password=hunter2)")


@message_handler("testing.fail_until_switched")
def handle_testing_fail_until_switched(message) -> None:
    """Fails until a Switch named after the body's id exists; then records the run."""
    if not Switch.objects.filter(name=message.body["id"]).exists():
        raise RuntimeError(f"switch {message.body['id']} is off")
    record_message(message)


@message_handler("testing.retry_later")
def handle_testing_retry_later(message) -> None:
    raise RetryLater(float(message.body.get("seconds", 60)), "busy")


@message_handler("testing.lose_connection")
def handle_testing_lose_connection(message) -> None:
    """Ends its own database session, as a database restart would, and fails with it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")


# -- chaos suite (tests/test_chaos.py) ---------------------------------------------------------


def _chaos_uid(value) -> str:
    return str(value)[:100]  # fuzzed input may carry anything: keep the row writable


@event_handler("chaos.record")
def handle_chaos_event(event) -> None:
    """Records the run with the metadata's "uid" and nothing else (fuzzed metadata stays inert)."""
    metadata = event.metadata if isinstance(event.metadata, dict) else {}
    Handling.objects.create(
        uid=_chaos_uid(metadata.get("uid", "")),
        event_type=event.event_type,
        object_id=event.object_id,
        metadata=None,
        attempts=event.attempts,
        coalesced=event.coalesced,
        pid=os.getpid(),
    )


@message_handler("chaos.record")
def handle_chaos_message(message) -> None:
    """Records the run with the body's "id" as uid, in its burst's transaction like any message handler."""
    Handling.objects.create(
        uid=_chaos_uid(message.body.get("id", "")),
        event_type=f"message:{message.subject}",
        object_id="",
        metadata={"redelivered": message.redelivered},
        attempts=0,
        coalesced=1,
        pid=os.getpid(),
    )


# -- poison handlers (tests/test_poison.py): each notes its try in a file first --------------


def note_try(path: str | None, label: str) -> None:
    """Append ``<label> <pid>`` to ``path``: counts handler calls across processes that die."""
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, f"{label} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


def _tries_log(metadata) -> str | None:
    return metadata.get("tries_log") if isinstance(metadata, dict) else None


@event_handler("test.sigkill")
def handle_sigkill(event) -> None:
    """Takes its process down as the OOM killer would."""
    note_try(_tries_log(event.metadata), event.object_id)
    os.kill(os.getpid(), signal.SIGKILL)


@event_handler("test.os_exit")
def handle_os_exit(event) -> None:
    """Ends its process with status 3, which gunicorn reads as "worker failed to boot"."""
    note_try(_tries_log(event.metadata), event.object_id)
    os._exit(3)


@event_handler("test.db_error")
def handle_db_error(event) -> None:
    """Fails with a database error (the query names a table that does not exist)."""
    note_try(_tries_log(event.metadata), event.object_id)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM no_such_table")


@event_handler("test.block")
def handle_block(event) -> None:
    """Never returns (a call without a timeout)."""
    note_try(_tries_log(event.metadata), event.object_id)
    threading.Event().wait()


@event_handler("test.base_exception")
def handle_base_exception(event) -> None:
    """Raises what metadata["raise"] names: SystemExit, KeyboardInterrupt or GeneratorExit."""
    note_try(_tries_log(event.metadata), event.object_id)
    kind = {"SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt, "GeneratorExit": GeneratorExit}
    raise kind[event.metadata["raise"]](3)


@message_handler("testing.sigkill")
def handle_testing_sigkill(message) -> None:
    """Notes the delivery in body["tries_log"], then takes the process down."""
    note_try(message.body.get("tries_log"), str(message.body.get("id")))
    os.kill(os.getpid(), signal.SIGKILL)


@message_handler("testing.base_exception")
def handle_testing_base_exception(message) -> None:
    raise SystemExit(3)
