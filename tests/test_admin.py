"""The Django admin: events and handler status, read-only, with the requeue action."""

from __future__ import annotations

import select
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.utils import timezone

from katello_events.event_queue.listener import libpq_params
from katello_events.event_queue.maintenance import requeue_dead
from katello_events.event_queue.push import NOTIFY_CHANNEL
from katello_events.models import Event, HandlerStatus
from katello_events.pgdriver import NotifyConnection

pytestmark = pytest.mark.django_db

EVENTS = "/admin/katello_events/event/"
STATUSES = "/admin/katello_events/handlerstatus/"


@pytest.fixture
def events() -> dict[str, Event]:
    """One event of each readiness: ready now, deferred for an hour, dead after five attempts."""
    hour = timezone.now() + timedelta(hours=1)
    return {
        "ready": Event.objects.create(event_type="host.updated", object_id="7"),
        "deferred": Event.objects.create(event_type="host.updated", object_id="8", run_after=hour),
        "dead": Event.objects.create(
            event_type="pool.imported", object_id="9", state=Event.DEAD, attempts=5, last_error="boom"
        ),
    }


def listed_ids(response) -> list[int]:
    return [event.id for event in response.context["cl"].result_list]


def readiness_of(response) -> dict[str, str]:
    return {event.object_id: event.readiness for event in response.context["cl"].result_list}


def staff_with(client, *codenames: str) -> None:
    user, _ = User.objects.get_or_create(username="operator", defaults={"is_staff": True})
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client.force_login(User.objects.get(pk=user.pk))  # a fresh object: permissions are cached per instance


def test_event_list_shows_each_events_readiness(admin_client, events):
    response = admin_client.get(EVENTS)
    assert response.status_code == 200
    assert readiness_of(response) == {"7": "ready", "8": "deferred", "9": "dead"}
    html = response.content.decode()
    for column in ("Event type", "Object id", "State", "Readiness", "Attempts", "Run after", "Created at"):
        assert column in html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("readiness=ready", ["ready"]),
        ("readiness=deferred", ["deferred"]),
        ("readiness=dead", ["dead"]),
        ("state__exact=pending", ["ready", "deferred"]),
        ("event_type=pool.imported", ["dead"]),
        ("q=8", ["deferred"]),
    ],
)
def test_event_list_filters_and_exact_search(admin_client, events, query, expected):
    response = admin_client.get(f"{EVENTS}?{query}")
    assert response.status_code == 200
    assert listed_ids(response) == [events[name].id for name in expected]


def test_events_cannot_be_added_changed_or_deleted(admin_client, events):
    dead = events["dead"]
    assert admin_client.get(f"{EVENTS}add/").status_code == 403
    assert admin_client.post(f"{EVENTS}{dead.id}/delete/").status_code == 403
    page = admin_client.get(f"{EVENTS}{dead.id}/change/")
    assert page.status_code == 200
    assert "boom" in page.content.decode()
    assert 'name="_save"' not in page.content.decode(), "the detail page is read-only"
    assert admin_client.post(f"{EVENTS}{dead.id}/change/", {"attempts": 0}).status_code == 403
    choices = admin_client.get(EVENTS).context["action_form"].fields["action"].choices
    assert [value for value, _ in choices if value] == ["requeue_selected"], "no bulk delete"


def test_requeue_action_moves_only_the_selected_dead_events_back(admin_client, events):
    other_dead = Event.objects.create(event_type="pool.imported", object_id="10", state=Event.DEAD, attempts=5)
    selected = [events["dead"].id, events["ready"].id]
    response = admin_client.post(
        EVENTS, {"action": "requeue_selected", "_selected_action": selected, "index": 0}, follow=True
    )
    assert response.status_code == 200
    texts = [str(message) for message in response.context["messages"]]
    assert texts == ["1 dead event(s) requeued.", "1 selected event(s) were not dead; left as they were."]
    requeued = Event.objects.get(pk=events["dead"].pk)
    assert (requeued.state, requeued.attempts) == (Event.PENDING, 0)
    assert requeued.run_after <= timezone.now()
    assert Event.objects.get(pk=other_dead.pk).state == Event.DEAD, "not selected: left dead"


def test_requeue_needs_the_change_permission_viewing_does_not(client, events):
    staff_with(client, "view_event")
    page = client.get(EVENTS)
    assert page.status_code == 200
    assert "requeue_selected" not in page.content.decode()
    client.post(EVENTS, {"action": "requeue_selected", "_selected_action": [events["dead"].id], "index": 0})
    assert Event.objects.get(pk=events["dead"].pk).state == Event.DEAD

    staff_with(client, "view_event", "change_event")
    assert "requeue_selected" in client.get(EVENTS).content.decode()


def test_handler_status_is_read_only_and_judged_like_the_ping(admin_client):
    now = timezone.now()
    HandlerStatus.objects.create(name="katello_events", running=True, hostname="host-a", pid=1, heartbeat_at=now)
    stale = now - timedelta(minutes=5)
    HandlerStatus.objects.create(name="candlepin_events", running=True, hostname="host-a", pid=1, heartbeat_at=stale)
    page = admin_client.get(STATUSES)
    assert page.status_code == 200
    html = page.content.decode()
    assert "ok: 0 Processed, 0 Failed" in html
    assert "FAIL: Not running (no heartbeat for 300s)" in html, "running=True, yet stale"
    assert admin_client.get(f"{STATUSES}add/").status_code == 403
    assert admin_client.post(f"{STATUSES}katello_events/delete/").status_code == 403
    assert 'name="_save"' not in admin_client.get(f"{STATUSES}katello_events/change/").content.decode()


@pytest.mark.django_db(transaction=True)
def test_requeue_dead_wakes_the_consumer_once_committed():
    Event.objects.create(event_type="pool.imported", object_id="9", state=Event.DEAD, attempts=5)
    listener = NotifyConnection(libpq_params(connection.settings_dict), NOTIFY_CHANNEL)
    try:
        assert requeue_dead() == 1
        ready, _, _ = select.select([listener], [], [], 5)
        assert ready
        assert listener.take() == [NOTIFY_CHANNEL]
        assert requeue_dead() == 0, "nothing dead is left"
    finally:
        listener.close()
