"""The app config. ``ready()`` wires: it queries no database and starts no thread, except in
runserver's serving process, which never forks (see ``lifecycle.start_in_serving_child``)."""

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
        from katello_events.conf import config_error, reset_config
        from katello_events.lifecycle import let_the_serving_child_stop, start_in_serving_child, start_on_first_request
        from katello_events.log import get_logger, redact_third_party_loggers

        redact_third_party_loggers()  # no thread, no query: a filter on three loggers
        setting_changed.connect(reset_config, dispatch_uid="katello_events.reset_config")
        request_started.connect(start_on_first_request, dispatch_uid="katello_events.autostart")
        # Event handlers register themselves when their apps' events.py modules are imported.
        autodiscover_modules("events")
        problem = config_error()
        if problem:
            # Said once per process, where an operator looks first; the status surfaces say it too.
            get_logger(__name__).error("KATELLO_EVENTS is refused; no event handler runs: %s", problem)
        start_in_serving_child()  # runserver's serving process only
        let_the_serving_child_stop()  # runserver's reloader parent only: a SIGINT handler
