"""/api/ping (JSON) and /about/ (HTML): two renderings of one status document."""

from __future__ import annotations

from typing import Any

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from katello_events.conf import setting
from katello_events.status.report import (
    FAIL,
    WARN,
    UnknownServices,
    collect_status,
    public_document,
    select_services,
)


def details_visible(request: HttpRequest) -> bool:
    """Whether this caller may see error texts, hostnames and pids (``DETAILS_VISIBLE_TO``)."""
    return audience_admits(request, setting("DETAILS_VISIBLE_TO"))


def audience_admits(request: HttpRequest, audience: str) -> bool:
    """Whether ``audience`` ("staff", "authenticated", "everyone", "nobody") takes this caller in."""
    if audience not in ("authenticated", "staff"):
        return audience == "everyone"
    try:
        user = getattr(request, "user", None)
        if not (user and user.is_authenticated):
            return False
        return audience == "authenticated" or bool(user.is_staff)
    except DatabaseError:
        # A signed-in caller's session and user are loaded from the database. When it is down,
        # the caller reads as anonymous: the ping must report the outage, not fail with a 500.
        return False


def overall_with_warnings(document: dict[str, Any]) -> str:
    """``FAIL``, ``WARN`` when a service warns (the document's own status stays ``ok`` then, as
    Katello's ping did), or ``ok``."""
    if document["status"] == FAIL:
        return FAIL
    return WARN if any(s["status"] == WARN for s in document["services"].values()) else document["status"]


def _document_for(request: HttpRequest, services: list[str] | None = None) -> tuple[dict[str, Any], bool]:
    document = collect_status(services)
    detailed = details_visible(request)
    return (document if detailed else public_document(document)), detailed


def http_status(document: dict[str, Any]) -> int:
    """200, or ``PING_FAIL_STATUS`` (503 unless set; Katello answered 200) when a service is FAIL."""
    return int(setting("PING_FAIL_STATUS")) if document["status"] == FAIL else 200


@never_cache
def ping(request: HttpRequest) -> JsonResponse:
    """Katello-compatible ping: HTTP 200 unless a service is FAIL, then ``PING_FAIL_STATUS``.

    ``?services=a,b`` answers for those services only (Katello's ``ping(services: [...])``);
    an unknown name is a 400 that lists the services.
    """
    requested = [name.strip() for name in request.GET.get("services", "").split(",") if name.strip()]
    try:
        services = select_services(requested)
    except UnknownServices as exc:
        return JsonResponse({"error": str(exc), "services": exc.known}, status=400)
    document, _ = _document_for(request, services)
    return JsonResponse(document, status=http_status(document))


@never_cache
def about(request: HttpRequest) -> HttpResponse:
    """The "Backend System Status" page (template ``katello_events/about.html``)."""
    document, detailed = _document_for(request)
    context = {
        "document": document,
        "services": document["services"],
        "detailed": detailed,
        "overall": overall_with_warnings(document),
        "heartbeat_interval": setting("HEARTBEAT_INTERVAL"),
    }
    return render(request, "katello_events/about.html", context, status=http_status(document))
