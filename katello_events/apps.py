"""The app config. ``ready()`` only wires: it starts no thread and queries no database."""

from __future__ import annotations

from django.apps import AppConfig


class KatelloEventsConfig(AppConfig):
    name = "katello_events"
    verbose_name = "Katello events"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core.signals import request_started, setting_changed
        from django.utils.module_loading import autodiscover_modules

        from katello_events import checks  # noqa: F401  (registers the system checks)
        from katello_events.conf import reset_config
        from katello_events.lifecycle import start_on_first_request
        from katello_events.log import redact_third_party_loggers

        redact_third_party_loggers()  # no thread, no query: a filter on three loggers
        setting_changed.connect(reset_config, dispatch_uid="katello_events.reset_config")
        request_started.connect(start_on_first_request, dispatch_uid="katello_events.autostart")
        # Event handlers register themselves when their apps' events.py modules are imported.
        autodiscover_modules("events")
