"""docs/quickstart.md, followed by the letter: a new project, its snippets, gunicorn, real work.

Every fenced block of the quickstart preceded by ``<!-- quickstart-test: KIND [PATH] -->`` is run
here, in the page's order, in a fresh folder, with the packages installed in this virtualenv:

- ``new-project``: shell commands run in the folder (``django-admin startproject ...``);
- ``append PATH`` / ``create PATH``: Python added to, or written as, a file of the project;
- ``run``: shell commands run in the project (``migrate``, ``check``), each must succeed;
- ``server``: the server's command line, run as printed, on a free port;
- ``send``: shell commands that give the handlers work.

Only values a reader would change are substituted, each found exactly where the page has it:
the database name, the broker destination (so no other run reads our messages) and the port.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from katello_events import pgdriver
from tests.support import ROOT, free_port, wait_for

QUICKSTART = ROOT / "docs" / "quickstart.md"
BLOCK = re.compile(r"<!-- quickstart-test: (?P<kind>[\w-]+)(?: (?P<path>\S+))? -->\n```\w*\n(?P<code>.*?)\n```", re.S)
KINDS = {"new-project", "append", "create", "run", "server", "send"}


def snippets() -> list[tuple[str, str | None, str]]:
    """The marked blocks of the quickstart: (kind, path, code), in the page's order."""
    text = QUICKSTART.read_text()
    found = [(m["kind"], m["path"], m["code"]) for m in BLOCK.finditer(text)]
    # A marker whose block the pattern missed would be a step silently not tested.
    assert len(found) == text.count("<!-- quickstart-test:"), "a marker is not right above a fenced block"
    return found


def substitute(code: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        code = code.replace(old, new)
    return code


@pytest.fixture
def fresh_database() -> Iterator[str]:
    name = f"katello_events_quickstart_{uuid.uuid4().hex[:8]}"
    admin = pgdriver.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    try:
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def shell_env() -> dict[str, str]:
    """A user's shell with this virtualenv activated: no pytest or Django variables of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DJANGO_", "KATELLO_EVENTS"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_shell(code: str, cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, f"{code}\n---- stdout\n{result.stdout}\n---- stderr\n{result.stderr}"
    return result.stdout + result.stderr


def http(port: int, path: str) -> tuple[int, str]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    except OSError:
        return 0, ""
    finally:
        conn.close()


def ping(port: int) -> dict:
    status, body = http(port, "/api/ping")
    return json.loads(body) if status in (200, 503) else {}


def processed(port: int, service: str) -> int:
    return (ping(port).get("services", {}).get(service) or {}).get("processed_count") or 0


@pytest.mark.process
def test_the_quickstart_builds_a_project_whose_handlers_run_under_gunicorn(tmp_path, fresh_database):
    blocks = snippets()
    assert {kind for kind, _, _ in blocks} == KINDS, "every kind of step is on the page"
    port = free_port()
    destination = f"/queue/katello_events.quickstart.{uuid.uuid4().hex[:8]}"
    replacements = {
        '"NAME": "myproject"': f'"NAME": "{fresh_database}"',
        "/queue/katello.candlepin": destination,
        "127.0.0.1:8000": f"127.0.0.1:{port}",
    }
    page = QUICKSTART.read_text()
    for old in replacements:
        assert old in page, f"the quickstart no longer says {old!r}: update this test"
    admin = pgdriver.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{fresh_database}"')
    admin.close()

    env = shell_env()
    project = tmp_path / "myproject"
    server: subprocess.Popen | None = None
    log_path = tmp_path / "gunicorn.log"
    try:
        for kind, path, code in blocks:
            code = substitute(code, replacements)
            if kind == "new-project":
                run_shell(code, tmp_path, env)
            elif kind == "append":
                with open(project / path, "a") as file:
                    file.write(f"\n\n{code}\n")
            elif kind == "create":
                (project / path).write_text(f"{code}\n")
            elif kind == "run":
                output = run_shell(code, project, env)
                assert not re.search(r"katello_events\.[EW]\d{3}", output), f"the project passes every check:\n{output}"
            elif kind == "server":
                (line,) = code.splitlines()
                with open(log_path, "wb") as log:
                    server = subprocess.Popen(
                        shlex.split(line), cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )  # fmt: skip
                wait_for(lambda: ping(port).get("status") == "ok", 60, f"both services ok:\n{log_path.read_text()}")
            elif kind == "send":
                output = run_shell(code, project, env)
                assert f"to {destination} on stomp://127.0.0.1:61613" in output

        assert server is not None
        wait_for(lambda: processed(port, "candlepin_events") >= 1, 30, "the test message is counted")
        wait_for(lambda: processed(port, "katello_events") >= 2, 30, "the event and the stored message are counted")
        log = log_path.read_text()
        assert "this process is now the katello_events runner" in log
        assert "hello event for object 42, metadata {'from': 'the quickstart'}" in log
        assert "Candlepin created pool 4028f9" in log
        document = ping(port)
        assert document["status"] == "ok"
        assert {name: s["failed_count"] for name, s in document["services"].items()} == {
            "katello_events": 0,
            "candlepin_events": 0,
        }
        status, about = http(port, "/about/")
        assert status == 200
        assert "1 Processed, 0 Failed" in about
        assert "2 Processed, 0 Failed" in about
        result = subprocess.run(
            [sys.executable, "manage.py", "ping"], cwd=project, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 Processed, 0 Failed" in result.stdout
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(10)
            print(log_path.read_text(errors="replace"))
