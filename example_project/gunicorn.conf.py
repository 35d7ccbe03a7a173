"""gunicorn config of the example project: several sync workers, each a runner candidate.

Run from inside example_project/: ``gunicorn -c gunicorn.conf.py example_project.wsgi:application``.
"""

import os

from katello_events.contrib.gunicorn import post_worker_init, worker_exit  # noqa: F401

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "4"))
preload_app = os.environ.get("GUNICORN_PRELOAD", "") == "1"
graceful_timeout = 30
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
control_socket_disable = True  # several servers may share a host (tests, the example)
