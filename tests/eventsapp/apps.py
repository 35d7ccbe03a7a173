from django.apps import AppConfig


class EventsAppConfig(AppConfig):
    name = "tests.eventsapp"
    label = "eventsapp"
    default_auto_field = "django.db.models.BigAutoField"
