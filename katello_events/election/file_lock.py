"""Election by an exclusive POSIX record lock on a file (fasteners' ``InterProcessLock``).

Facts this module is built on:

- ``fcntl.lockf`` locks belong to a process: they are not inherited across ``fork`` and are
  released when the process dies or closes *any* descriptor of the file. So the lock is taken
  after fork, inside a worker, and nothing else in this process may open and close the file
  while it is held.
- Whoever can open the file for writing can take the lock, and whoever can write to a folder on
  its path can swap the file. So before competing, the path is judged (``lock_path``): every
  folder up to ``/`` root's or ours and writable by nobody else (unless sticky), the file ours
  and writable by nobody else. Otherwise the election raises :class:`LockFileError` saying why.
- fasteners opens the file with ``open(path, "a")``, which follows symlinks and obeys the umask.
  Only fasteners' public API is used (``acquire``, ``release``, ``acquired``, ``lockfile``):
  the file is created first, here, with ``O_EXCL | O_NOFOLLOW`` and mode 0600, in a folder
  nobody else can write to, so the file fasteners opens is the one we made; the descriptor it
  opened is checked again once locked. Tested with fasteners 0.19 and 0.20 (``setup.cfg``).
- Every thread of a process "holds" its lockf lock, so whether *this process* is the runner is
  decided by pid (see ``Runner``), never by asking the lock again.
"""

from __future__ import annotations

import contextlib
import os

import fasteners

from katello_events.election.lock_path import UNUSABLE, file_problem, path_problem


class LockFileError(RuntimeError):
    """The lock file cannot be used safely; the message starts with "election lock unusable"."""


def open_lock_file(path: str) -> int:
    """Judge the path, create what is missing, and return a descriptor of the lock file.

    The folder is created with mode 0700 when missing (Katello failed where its tmp folder was
    missing). A symlink at ``path``, a file of another user, or a folder others can write to is
    refused with :class:`LockFileError`. The caller closes the descriptor (never while this
    process holds the lock: that would release it).
    """
    problem = path_problem(path)
    if problem:
        raise LockFileError(f"{UNUSABLE}: {problem}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd = _open_or_create(path)
    except OSError as exc:
        if os.path.islink(path):
            raise LockFileError(f"{UNUSABLE}: {path} is a symlink") from exc
        raise LockFileError(f"{UNUSABLE}: cannot open {path}: {exc.strerror}") from exc
    problem = file_problem(path, os.fstat(fd))
    if problem:
        os.close(fd)
        raise LockFileError(f"{UNUSABLE}: {problem}")
    return fd


def _open_or_create(path: str) -> int:
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return os.open(path, flags)


class FileLockElection:
    """One runner per host (per lock file). Used from one thread: the runner's control thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = fasteners.InterProcessLock(path)

    def describe(self) -> str:
        return f"file lock {self.path}"

    def try_acquire(self) -> bool:
        """Take the lock if it is free; never blocks. Raises :class:`LockFileError` when the
        path is unsafe (see the module's docstring). The file stays open between attempts."""
        if self._lock.acquired:
            return True
        os.close(open_lock_file(self.path))  # judged and created before fasteners opens it
        if not self._lock.acquire(blocking=False):
            return False
        problem = file_problem(self.path, os.fstat(self._lock.lockfile.fileno()))
        if problem:
            self._lock.release()
            raise LockFileError(f"{UNUSABLE}: {problem}")
        if not self.still_held():
            # We locked a file that was deleted or replaced since we opened it: drop it so
            # the next attempt opens the file now at the path.
            self._lock.release()
            return False
        return True

    def still_held(self) -> bool:
        """Fencing: False when the lock file we hold was removed or replaced.

        A lock on a deleted inode would let a second process lock a new file at the same path
        and become a second runner; the runner checks this at every heartbeat and steps down.
        While held, the file's and its folder's times are refreshed, so temp cleaners
        (systemd-tmpfiles, tmpreaper) never age them out.
        """
        if not self._lock.acquired or self._lock.lockfile is None:
            return False
        try:
            on_disk = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        fd = self._lock.lockfile.fileno()
        held = os.fstat(fd)
        if (on_disk.st_dev, on_disk.st_ino) != (held.st_dev, held.st_ino):
            return False
        with contextlib.suppress(OSError):  # a read-only mount: nothing to age out there
            os.utime(fd)
            os.utime(os.path.dirname(os.path.abspath(self.path)))
        return True

    def release(self) -> None:
        """Give the role up (idempotent). Closing the file releases the lockf lock."""
        if self._lock.acquired:
            self._lock.release()
