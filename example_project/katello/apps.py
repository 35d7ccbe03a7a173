from django.apps import AppConfig


class KatelloConfig(AppConfig):
    """A small Katello-like domain that exercises every handler path of katello_events."""

    name = "katello"
    verbose_name = "Katello (example domain)"
    default_auto_field = "django.db.models.BigAutoField"
