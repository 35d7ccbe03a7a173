"""The file-lock election, against real processes (locks are per process)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from katello_events.election import FileLockElection, LockFileError
from tests.support import lock_holders, wait_for

HOLDER = """
import sys, time
from katello_events.election import FileLockElection
election = FileLockElection(sys.argv[1])
print("acquired" if election.try_acquire() else "busy", flush=True)
time.sleep(60)
"""


def hold_in_child(path) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    with child.stdout:
        assert child.stdout.readline().strip() == "acquired"
    return child


def test_lock_file_and_folder_are_created_private(tmp_path):
    path = tmp_path / "missing" / "folder" / "runner.lock"
    election = FileLockElection(str(path))
    assert election.try_acquire()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert lock_holders(path) == {os.getpid()}
    election.release()
    assert lock_holders(path) == set()


def test_symlink_is_refused(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep me")
    link = tmp_path / "runner.lock"
    link.symlink_to(target)
    with pytest.raises(LockFileError, match="symlink"):
        FileLockElection(str(link)).try_acquire()
    assert target.read_text() == "keep me"


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(LockFileError):
        FileLockElection(str(tmp_path)).try_acquire()


def test_only_one_process_holds_it_and_death_releases_it(tmp_path):
    path = tmp_path / "runner.lock"
    child = hold_in_child(path)
    try:
        election = FileLockElection(str(path))
        assert not election.try_acquire()
        assert not election.try_acquire()  # repeated attempts keep failing, nothing leaks
        assert lock_holders(path) == {child.pid}
    finally:
        child.kill()
        child.wait()
    assert wait_for(election.try_acquire, 5, "lock released by the dead holder")
    assert election.still_held()
    election.release()


def test_fencing_detects_a_removed_or_replaced_lock_file(tmp_path):
    path = tmp_path / "runner.lock"
    election = FileLockElection(str(path))
    assert election.try_acquire()
    assert election.still_held()
    path.unlink()
    assert not election.still_held()
    path.write_text("")  # a new file at the same path: another inode
    assert not election.still_held()
    election.release()
    assert election.try_acquire()
    assert election.still_held()
    election.release()


def test_a_standby_holding_a_stale_descriptor_reopens_the_path(tmp_path):
    path = tmp_path / "runner.lock"
    child = hold_in_child(path)
    election = FileLockElection(str(path))
    try:
        assert not election.try_acquire()  # the standby now has the old inode open
        path.unlink()
    finally:
        child.kill()
        child.wait()
    # The old inode is free now, but locking it would not exclude a process that opens the
    # path afresh: the standby must refuse it and lock the file now at the path.
    assert not election.try_acquire()
    assert election.try_acquire()
    assert election.still_held()
    assert lock_holders(path) == {os.getpid()}
    election.release()
