"""Election by an exclusive POSIX record lock on a file (fasteners).

Facts this module is built on:

- ``fcntl.lockf`` locks belong to a process: they are not inherited across ``fork`` and are
  released when the process dies or closes *any* descriptor of the file. So the lock is taken
  after fork, inside a worker, and nothing else in this process may open and close the file.
- fasteners opens the file with ``open(path, "a")``, which follows symlinks and obeys the umask.
  We open it ourselves with ``O_NOFOLLOW`` and mode 0600 and refuse anything but a regular file.
- Every thread of a process "holds" its lockf lock, so whether *this process* is the runner is
  decided by pid (see ``Runner``), never by asking the lock again.
"""

from __future__ import annotations

import os
import stat
from typing import TextIO

import fasteners


class LockFileError(RuntimeError):
    """The lock file cannot be used safely (a symlink, not a regular file, not writable)."""


class _SafeInterProcessLock(fasteners.InterProcessLock):
    """fasteners' lock, with the file opened by :func:`open_lock_file` instead of ``open(path, "a")``."""

    # fasteners is untyped: this is the attribute its lock keeps the open file in.
    lockfile: TextIO | None

    def _do_open(self) -> None:
        if self.lockfile is None or self.lockfile.closed:
            self.lockfile = os.fdopen(open_lock_file(self.path), "a")


def open_lock_file(path: str) -> int:
    """Open (creating if needed) the lock file safely and return its descriptor.

    The folder is created with mode 0700 when missing (Katello failed where its tmp folder was
    missing). A symlink at ``path`` is refused rather than followed.
    """
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, mode=0o700, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if os.path.islink(path):
            raise LockFileError(f"refusing to use the lock file {path!r}: it is a symlink") from exc
        raise LockFileError(f"cannot open the lock file {path!r}: {exc.strerror}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LockFileError(f"refusing to use the lock file {path!r}: it is not a regular file")
    return fd


class FileLockElection:
    """One runner per host (per lock file). Used from one thread: the runner's control thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = _SafeInterProcessLock(path)

    def describe(self) -> str:
        return f"file lock {self.path}"

    def try_acquire(self) -> bool:
        """Take the lock if it is free; never blocks. The file stays open between attempts."""
        if self._lock.acquired:
            return True
        if not self._lock.acquire(blocking=False):
            return False
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
        """
        if not self._lock.acquired or self._lock.lockfile is None:
            return False
        try:
            on_disk = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        held = os.fstat(self._lock.lockfile.fileno())
        return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        """Give the role up (idempotent). Closing the file releases the lockf lock."""
        if self._lock.acquired:
            self._lock.release()
