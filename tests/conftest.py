from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import Server, server_env


@pytest.fixture
def lock_file(tmp_path: Path) -> Path:
    return tmp_path / "run" / "runner.lock"


@pytest.fixture
def database_name(transactional_db: None) -> str:
    """The test database, committed to (servers started by a test must see its rows)."""
    from django.db import connection

    return connection.settings_dict["NAME"]


@pytest.fixture
def start_server(database_name: str, lock_file: Path, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start real server processes against the test database; all are stopped at teardown."""
    started: list[Server] = []

    def start(args: list[str], **env: str) -> Server:
        log = tmp_path / f"server-{len(started)}.log"
        server = Server(args, server_env(database_name, env.pop("lock_file", lock_file), **env), log)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    for server in started:
        print(f"---- {' '.join(server.args)} (exit {server.process.returncode})\n{server.log()}")
