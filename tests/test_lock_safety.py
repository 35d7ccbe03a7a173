"""The election lock file's path: nobody but the server's user may hold or swap it, and a refusal
is said where operators look (status rows, /about/, /api/ping, ``manage.py ping``, ``check``)."""

from __future__ import annotations

import json
import os
import stat
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from katello_events import conf
from katello_events.checks.election import check_lock_file
from katello_events.election import FileLockElection, LockFileError
from katello_events.election.lock_path import path_problem
from katello_events.models import HandlerStatus
from katello_events.status.store import report_standby_problem
from tests.conftest import make_runner, start
from tests.support import wait_for

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing a folder's owner needs root")


def folder(base: Path, name: str, mode: int, owner: int | None = None) -> Path:
    path = base / name
    path.mkdir()
    os.chmod(path, mode)  # mkdir's mode obeys the umask; chmod does not
    if owner is not None:
        os.chown(path, owner, owner)
    return path


def own_file(path: Path, mode: int = 0o600, owner: int | None = None) -> Path:
    path.write_text("")
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, owner, owner)
    return path


# -- the rules, as a table ----------------------------------------------------------------------


def _cases(base: Path) -> list[tuple[str, Path, str | None]]:
    private, group, sticky = (
        folder(base, "private", 0o700),
        folder(base, "group", 0o770),
        folder(base, "sticky", 0o1777),
    )
    others = "writable by others"
    cases: list[tuple[str, Path, str | None]] = [
        ("our private folder", private / "runner.lock", None),
        ("a folder still to create", base / "missing" / "deeper" / "runner.lock", None),
        ("our folder writable by others", folder(base, "open", 0o777) / "runner.lock", others),
        ("our folder writable by its group", group / "runner.lock", "writable by its group"),
        ("a sticky shared folder with our file", own_file(sticky / "runner.lock"), None),
        ("our file writable by others", own_file(folder(base, "loose", 0o700) / "runner.lock", 0o666), others),
        ("a file in a folder others can write", folder(base, "open2", 0o777) / "x" / "runner.lock", others),
    ]
    link = folder(base, "links", 0o700) / "runner.lock"
    link.symlink_to(base / "elsewhere")
    cases.append(("a symlink", link, "is a symlink"))
    if os.geteuid() == 0:
        not_ours = f"owned by uid {NOBODY}"
        sticky2 = folder(base, "sticky2", 0o1777)
        cases += [
            ("a folder of nobody's, mode 0777", folder(base, "nobody777", 0o777, NOBODY) / "runner.lock", others),
            ("a folder of nobody's, mode 0755", folder(base, "nobody755", 0o755, NOBODY) / "runner.lock", not_ours),
            ("a sticky folder with nobody's file", own_file(sticky2 / "runner.lock", 0o600, NOBODY), not_ours),
        ]
    return cases


def test_path_rules_table(tmp_path):
    for label, path, expected in _cases(tmp_path):
        problem = path_problem(str(path))
        if expected is None:
            assert problem is None, f"{label}: {problem}"
        else:
            assert problem is not None, label
            assert expected in problem, f"{label}: {problem!r}"
            with pytest.raises(LockFileError, match=f"^election lock unusable: .*{expected}"):
                FileLockElection(str(path)).try_acquire()
            assert check_lock_file(str(path))[0].id == "katello_events.E003", label


@as_root
def test_a_folder_created_first_by_nobody_with_mode_0777_is_refused_and_left_alone(tmp_path):
    shared = folder(tmp_path, "katello_events", 0o777, NOBODY)
    path = shared / "runner.lock"
    with pytest.raises(LockFileError, match=f"election lock unusable: {shared} is writable by others"):
        FileLockElection(str(path)).try_acquire()
    assert not path.exists(), "nothing may be created in a folder another user controls"


def test_the_file_we_create_is_ours_and_private_even_under_a_loose_umask(tmp_path):
    path = tmp_path / "new" / "runner.lock"
    old = os.umask(0)
    try:
        election = FileLockElection(str(path))
        assert election.try_acquire()
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert path.stat().st_uid == os.geteuid()
    finally:
        election.release()


def test_holding_the_lock_refreshes_its_times_for_temp_cleaners(tmp_path):
    path = tmp_path / "lock" / "runner.lock"
    election = FileLockElection(str(path))
    assert election.try_acquire()
    try:
        os.utime(path, (1_000_000, 1_000_000))
        os.utime(path.parent, (1_000_000, 1_000_000))
        assert election.still_held()
        assert path.stat().st_mtime > time.time() - 60
        assert path.parent.stat().st_mtime > time.time() - 60
    finally:
        election.release()


def test_the_default_lock_file_lives_in_a_per_user_runtime_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert conf.runtime_folder().endswith(f"katello_events-{os.geteuid()}")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert conf.runtime_folder() == str(tmp_path / "katello_events")
    assert conf.default_lock_file().startswith(str(tmp_path / "katello_events") + os.sep)


# -- what the operator sees ------------------------------------------------------------------


def _unsafe_lock(tmp_path: Path) -> tuple[Path, Path]:
    """A lock folder another user could use: nobody's with mode 0777 as root, else ours with 0777."""
    owner = NOBODY if os.geteuid() == 0 else None
    shared = folder(tmp_path, "shared", 0o777, owner)
    return shared, shared / "runner.lock"


@pytest.mark.django_db(transaction=True)
def test_a_refused_lock_is_said_in_the_rows_about_ping_and_the_command(runners, tmp_path, client, admin_client):
    shared, path = _unsafe_lock(tmp_path)
    names = list(conf.get_config()["HANDLERS"])
    runner = make_runner(path, {name: ("CountingHandler", {}) for name in names})
    runners.append(runner)
    runner.start()
    expected = f"election lock unusable: {shared} is writable by others"
    wait_for(
        lambda: HandlerStatus.objects.filter(name__in=names, problem=expected).count() == len(names),
        10,
        "the refusal in every status row",
    )
    assert not runner.leading.is_set()

    detailed = admin_client.get("/api/ping").json()
    for name in names:
        assert detailed["services"][name]["status"] == "FAIL"
        assert detailed["services"][name]["message"] == expected
    public = client.get("/api/ping")
    assert public.status_code == 503
    assert {s["message"] for s in public.json()["services"].values()} == {"election lock unusable"}
    assert str(shared) not in json.dumps(public.json()), "paths are details, for trusted readers only"
    assert expected in admin_client.get("/about/").content.decode()

    out = StringIO()
    with pytest.raises(SystemExit):
        call_command("ping", stdout=out)
    assert expected in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_a_refusal_never_overwrites_the_rows_of_a_live_runner(runners, lock_file, tmp_path):
    runner = start(runners, make_runner(lock_file, {"count": ("CountingHandler", {})}))
    wait_for(lambda: HandlerStatus.objects.filter(name="count", running=True).exists(), 5, "the live runner's row")
    assert report_standby_problem(["count"], "election lock unusable: x", stale_after=5.0) == 0
    assert HandlerStatus.objects.get(name="count").problem == ""
    runner.stop(10)
    assert report_standby_problem(["count"], "election lock unusable: x", stale_after=5.0) == 1
    assert HandlerStatus.objects.get(name="count").problem == "election lock unusable: x"


@pytest.mark.django_db(transaction=True)
def test_an_election_error_of_any_kind_reaches_the_rows(runners, tmp_path):
    class BrokenElection:
        def try_acquire(self) -> bool:
            raise OSError(28, "No space left on device")

        def still_held(self) -> bool:
            return False

        def release(self) -> None:
            pass

        def describe(self) -> str:
            return "broken"

    runner = make_runner(tmp_path / "unused.lock", {"count": ("CountingHandler", {})})
    runner.election = BrokenElection()
    runners.append(runner)
    runner.start()
    row = wait_for(lambda: HandlerStatus.objects.filter(name="count").exclude(problem="").first(), 10, "a problem")
    assert row.problem == "election lock unusable: OSError: [Errno 28] No space left on device"
    assert not row.running
