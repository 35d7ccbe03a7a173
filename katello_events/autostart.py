"""Whether this process may start the runner on its own (first request, server hooks).

Threads must not start in a master that preloads the app and forks, in ordinary management
commands (``migrate``, ``shell``, ``test``, ``check``...), in test runs, or in runserver's
reloader parent. The start hooks only ever fire in processes that serve requests, which rules
out forking masters by construction; this module rules out the rest. Pure functions of
``argv`` and the environment, so they are unit-tested directly.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from django.utils.autoreload import DJANGO_AUTORELOAD_ENV

#: Management commands that serve HTTP requests in their own process.
SERVING_COMMANDS = frozenset({"runserver", "runserver_plus"})

_MANAGE_SCRIPTS = frozenset({"manage.py", "django-admin", "django-admin.py"})


def management_command(argv: Sequence[str]) -> str | None:
    """The subcommand when this process is ``manage.py``/``django-admin``, else None."""
    if not argv:
        return None
    script = os.path.basename(argv[0])
    is_django_main = script == "__main__.py" and os.path.basename(os.path.dirname(argv[0])) == "django"
    if script not in _MANAGE_SCRIPTS and not is_django_main:
        return None
    return argv[1] if len(argv) > 1 else "help"


def in_test_run(argv: Sequence[str]) -> bool:
    """True under Django's test runner or pytest(-django)."""
    from django.core import mail

    # setup_test_environment() (both runners call it) installs mail.outbox.
    if hasattr(mail, "outbox"):
        return True
    return bool(argv) and os.path.basename(argv[0]) in {"pytest", "py.test"}


def serving_child(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """True in ``runserver``'s serving process: the reloader's child (``RUN_MAIN``), or the only
    process with ``--noreload``. It never forks, so it may start its runner as soon as Django is
    ready, without waiting for a first request."""
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    if management_command(argv) not in SERVING_COMMANDS:
        return False
    return environ.get(DJANGO_AUTORELOAD_ENV) == "true" or "--noreload" in argv


def reloader_parent(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """True in ``runserver``'s reloader parent, which starts the serving child and restarts it."""
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    return management_command(argv) in SERVING_COMMANDS and not serving_child(argv, environ)


def autostart_blocker(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    autostart: bool = True,
    testing: bool | None = None,
) -> str | None:
    """Why this process must not start the runner by itself, or None when it may."""
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    if not autostart:
        return "KATELLO_EVENTS['AUTOSTART'] is False"
    if in_test_run(argv) if testing is None else testing:
        return "running tests"
    command = management_command(argv)
    if command is None:
        return None
    if command not in SERVING_COMMANDS:
        return f"management command {command!r}"
    if environ.get(DJANGO_AUTORELOAD_ENV) != "true" and "--noreload" not in argv:
        return "runserver's reloader parent (the child serves requests)"
    return None
