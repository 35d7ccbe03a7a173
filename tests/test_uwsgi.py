"""The uWSGI start hooks with real uWSGI servers, with and without lazy-apps.

Skipped when the uwsgi binary is not installed (it is built from source by pip).
"""

from __future__ import annotations

import shutil

import pytest

from katello_events.models import HandlerStatus
from tests.support import BIN, alive, children, free_port, lock_holders, wait_for
from tests.test_processes import assert_one_runner_for, rows_name, the_runner

UWSGI = shutil.which("uwsgi", path=str(BIN))

pytestmark = [
    pytest.mark.process,
    pytest.mark.timeout(180),
    pytest.mark.skipif(UWSGI is None, reason="uWSGI is not installed (pip install uwsgi)"),
]


def uwsgi_args(port: int, processes: int, lazy: bool) -> list[str]:
    return [
        str(UWSGI),
        "--module=example_project.wsgi:application",
        "--master",
        f"--processes={processes}",
        "--enable-threads",
        *(["--lazy-apps"] if lazy else []),
        "--import=katello_events.contrib.uwsgi",
        f"--http-socket=127.0.0.1:{port}",
        "--die-on-term",
        "--worker-reload-mercy=30",
    ]


def workers_of(server, count: int) -> set[int]:
    def booted():
        assert server.process.poll() is None, server.log()
        return len(kids := children(server.pid)) == count and kids

    return wait_for(booted, 60, f"{count} uWSGI workers")


@pytest.mark.parametrize("lazy", [False, True], ids=["preloading-master", "lazy-apps"])
def test_uwsgi_elects_exactly_one_worker_and_never_the_master(start_server, lock_file, lazy):
    server = start_server(uwsgi_args(free_port(), 3, lazy))
    workers = workers_of(server, 3)
    runner = the_runner(lock_file, among=workers)  # started by the hooks: no HTTP request made
    rows_name(runner)
    assert_one_runner_for(lock_file, 1.0)
    assert server.pid not in lock_holders(lock_file)
    assert server.stop() == 0
    assert not any(row.running for row in HandlerStatus.objects.all()), "the runner stopped at worker exit"


def test_uwsgi_recycles_the_runner_worker_after_a_memory_handover(start_server, lock_file, tmp_path):
    server = start_server(
        uwsgi_args(free_port(), 2, lazy=False),
        KATELLO_EVENTS_GROW_FLAG=str(tmp_path / "grown"),
        KATELLO_EVENTS_MAX_RSS_MB="250",
    )
    first_workers = workers_of(server, 2)
    first = the_runner(lock_file, among=first_workers)
    wait_for(lambda: not alive(first), 30, "the runner's worker was recycled")
    second = the_runner(lock_file, timeout=15)
    assert second != first
    rows_name(second)
    replaced = wait_for(
        lambda: len(kids := children(server.pid)) == 2 and first not in kids and kids, 30, "a replacement worker"
    )
    assert len(replaced - first_workers) == 1
    assert HandlerStatus.objects.get(name="katello_events").counters["handovers"] == 1
