"""Include with ``path("", include("katello_events.urls"))``."""

from django.urls import path

from katello_events import metrics, views

app_name = "katello_events"

urlpatterns = [
    path("about/", views.about, name="about"),
    path("api/ping", views.ping, name="ping"),
    path("metrics", metrics.metrics, name="metrics"),
]
