"""Helpers for tests that run real processes: waiting on conditions, reading locks, servers."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example_project"
BIN = Path(sys.executable).parent


def wait_for(condition: Callable[[], Any], timeout: float, message: str, interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``message`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {message}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lock_holders(path: str | os.PathLike) -> set[int]:
    """Pids holding a POSIX lock on ``path``, read from /proc/locks (the kernel's own view)."""
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        return set()
    holders = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        # "1: POSIX  ADVISORY  WRITE 6527 fe:00:5358432 0 EOF" (blocked waiters have "->")
        if "->" in fields or len(fields) < 6 or fields[1] != "POSIX":
            continue
        if int(fields[5].rsplit(":", 1)[1]) == inode:
            holders.add(int(fields[4]))
    return holders


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no thread count for {pid}")


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(p) for p in text)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def server_env(database_name: str, lock_file: str | os.PathLike, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DJANGO_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        PYTHONPATH=f"{ROOT}{os.pathsep}{EXAMPLE}",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{database_name}",
        KATELLO_EVENTS_LOCK_FILE=str(lock_file),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Server:
    """A real server process group (gunicorn, runserver, a management command) for one test."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            args, cwd=EXAMPLE, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the process and wait for it; kill the whole group if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._kill_leftovers()
        self._log.close()
        return self.process.returncode

    def _kill_leftovers(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def gunicorn_args(port: int, workers: int = 4, *extra: str) -> list[str]:
    return [
        str(BIN / "gunicorn"),
        "-c",
        "gunicorn.conf.py",
        "-b",
        f"127.0.0.1:{port}",
        "-w",
        str(workers),
        "--no-control-socket",
        *extra,
        "example_project.wsgi:application",
    ]


def manage_args(*command: str) -> list[str]:
    return [sys.executable, "manage.py", *command]


def http_get(port: int, path: str = "/api/ping", timeout: float = 5.0) -> int:
    """Status code of a GET (0 when the connection fails)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        conn.close()


class DaemonFleet:
    """``run_event_daemon`` processes kept at ``count``: one that exits is replaced, as systemd's
    ``Restart=always`` would (each poison death or recycle costs a process), so a standby is
    always there. ``start_server`` is the fixture of tests/conftest.py."""

    def __init__(self, start_server: Callable[..., Server], count: int = 2, **env: str) -> None:
        self.start_server = start_server
        self.env = env
        self.running: list[Server] = []
        self.all: list[Server] = []
        self.exits: dict[int, int] = {}  # pid -> exit status of every daemon that ended
        for _ in range(count):
            self._add()

    def _add(self) -> None:
        server = self.start_server(manage_args("run_event_daemon"), **self.env)
        self.running.append(server)
        self.all.append(server)

    def keep_up(self) -> bool:
        """Replace the daemons that ended; True, so it can sit in a wait_for condition."""
        for server in [s for s in self.running if s.process.poll() is not None]:
            self.running.remove(server)
            self.exits[server.pid] = server.process.returncode
            self._add()
        return True

    def log(self) -> str:
        return "\n".join(server.log() for server in self.all)


def run_ping_command(*args: str) -> tuple[int, str]:
    """``manage.py ping ARGS`` in this process: (exit code, what it printed)."""
    from django.core.management import call_command

    out = io.StringIO()
    try:
        call_command("ping", *args, stdout=out)
    except SystemExit as exit_:
        return int(exit_.code or 0), out.getvalue()
    return 0, out.getvalue()
