"""URLs of the django-health-check test: the check wired as a django-health-check 4 site would."""

from django.urls import path
from health_check.views import HealthCheckView

urlpatterns = [
    path("ht/", HealthCheckView.as_view(checks=["katello_events.contrib.health_check.KatelloEventsHealthCheck"])),
]
