"""Settings of the example project. Environment variables:

- ``DATABASE_URL``: read by dj-database-url, e.g. ``postgres://user:password@host:port/name`` or
  ``sqlite:///file`` (default: ``sqlite:///db.sqlite3``; a relative SQLite path is inside the
  project, whatever the current folder).
- ``CANDLEPIN_BROKER_URL``: ``stomp://user:password@host:port`` (default: RabbitMQ's STOMP on
  localhost with guest/guest).
- ``CANDLEPIN_QUEUE``: the STOMP destination (default ``/queue/katello.candlepin``).
- ``KATELLO_EVENTS_LOCK_FILE``: the election lock file (default: inside ``var/``).
- ``KATELLO_UNKNOWN_CONSUMER_GRACE``: seconds a message about an unknown host is retried before
  it is skipped (default 10; see ``KATELLO_UNKNOWN_CONSUMER_GRACE`` below).
"""

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-project-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "katello_events",
    "katello",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database(url: str) -> dict:
    """``DATABASES`` entry of a URL; relative SQLite paths are anchored at the project, as documented."""
    database = dj_database_url.parse(url)
    name = database.get("NAME")
    if database["ENGINE"] == "django.db.backends.sqlite3" and name and name != ":memory:":
        database["NAME"] = str(BASE_DIR / name)  # an absolute path stays as it is
    return database


DATABASES = {"default": _database(os.environ.get("DATABASE_URL", "sqlite:///db.sqlite3"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_TZ = True
STATIC_URL = "static/"

KATELLO_EVENTS = {
    "LOCK_FILE": os.environ.get("KATELLO_EVENTS_LOCK_FILE", str(BASE_DIR / "var" / "katello_events.lock")),
    "HANDLERS": {
        "katello_events": {"BACKEND": "katello_events.handlers.event_queue.EventQueueHandler"},
        "candlepin_events": {
            "BACKEND": "katello_events.handlers.candlepin.CandlepinHandler",
            "OPTIONS": {
                "BROKER_URL": os.environ.get("CANDLEPIN_BROKER_URL", "stomp://guest:guest@127.0.0.1:61613"),
                "DESTINATION": os.environ.get("CANDLEPIN_QUEUE", "/queue/katello.candlepin"),
            },
        },
    },
}

# The example domain's Candlepin handlers (katello/candlepin_events.py, docs/candlepin.md):
# - a message about a host (or an organization) this application does not have is retried for
#   this many seconds after Candlepin sent it (its registration may not have committed yet), then
#   skipped: counted "skipped", logged at DEBUG, never failed or dead. 0: skipped at once.
KATELLO_UNKNOWN_CONSUMER_GRACE = float(os.environ.get("KATELLO_UNKNOWN_CONSUMER_GRACE", "10"))
# - what the messages do not carry (a pool's quantity) is asked of this class (dotted path): the
#   example has no Candlepin, and its stand-in knows nothing. A real project names its own.
KATELLO_CANDLEPIN_API = "katello.candlepin_api.NoCandlepinApi"

# Error pages (DEBUG) hide settings by name; this filter also hides the password inside
# CANDLEPIN_BROKER_URL, which sits in a value.
DEFAULT_EXCEPTION_REPORTER_FILTER = "katello_events.redaction.SecretRedactingReporterFilter"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "katello_events": {"handlers": ["console"], "level": os.environ.get("KATELLO_EVENTS_LOG_LEVEL", "INFO")}
    },
}
