"""Whether a lock file's path is safe to compete on: nobody but this server's user can hold or swap it.

A POSIX record lock is only as private as the file: whoever can open it for writing can take
the lock (and hold it forever), and whoever can write to a folder on its path can replace the
file or the folder under us. So, the way OpenSSH's StrictModes judges a key file:

- every folder from the lock file's up to ``/`` is owned by this user or by root, and is not
  writable by group or others unless it has the sticky bit (``/tmp``: others cannot rename or
  remove what is ours in it);
- the lock file's own folder may be such a sticky, world-writable folder only when the file in it
  is ours;
- the file, when it exists, is a regular file owned by this user and writable by nobody else.

:func:`path_problem` says what is wrong (or None) without creating anything: the system check and
the election both ask it. Imports nothing from the package.
"""

from __future__ import annotations

import os
import stat

#: Starts every reason the election lock cannot be used, so readers can tell it apart.
UNUSABLE = "election lock unusable"


def path_problem(path: str) -> str | None:
    """Why ``path`` is not a safe lock file for this process's user, or None when it is.

    A folder that does not exist yet is judged by its nearest existing ancestor (it will be
    created with mode 0700, ours).
    """
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    problem = _ancestors_problem(existing)
    if problem:
        return problem
    if existing != folder:
        return None if os.access(existing, os.W_OK | os.X_OK) else f"{existing} is not writable by this server's user"
    return _file_problem(path, folder)


def _ancestors_problem(folder: str) -> str | None:
    """The first folder from ``folder`` up to ``/`` that others could change, or None.

    Both the path as written and the path it resolves to are walked: a symlink on the way
    (``/var/run``) must be root's or ours, and so must every folder it leads to.
    """
    for path, look in ((os.path.abspath(folder), os.lstat), (os.path.realpath(folder), os.stat)):
        current = path
        while True:
            try:
                info = look(current)
            except OSError as exc:
                return f"{current} cannot be read: {exc.strerror}"
            problem = _folder_problem(current, info)
            if problem:
                return problem
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
    return None


def _folder_problem(path: str, info: os.stat_result) -> str | None:
    if stat.S_ISLNK(info.st_mode):
        return _owner_problem(path, info)
    if not stat.S_ISDIR(info.st_mode):
        return f"{path} is not a folder"
    # Others may write to a sticky folder (/tmp): they cannot rename or remove what is ours there.
    writable = None if info.st_mode & stat.S_ISVTX else _writable_problem(path, info)
    return writable or _owner_problem(path, info)


def _file_problem(path: str, folder: str) -> str | None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        # The election creates it with O_EXCL | O_NOFOLLOW, mode 0600, and checks it again: in a
        # sticky shared folder another user may win that race, and is refused then.
        return None if os.access(folder, os.W_OK | os.X_OK) else f"{folder} is not writable by this server's user"
    if stat.S_ISLNK(info.st_mode):
        return f"{path} is a symlink"
    return file_problem(path, info)


def file_problem(path: str, info: os.stat_result) -> str | None:
    """Why a lock file (its ``lstat``, or the ``fstat`` of an open descriptor) may not be used, or None."""
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file"
    if info.st_uid != os.geteuid():
        return f"{path} is owned by uid {info.st_uid}, not by this server's user (uid {os.geteuid()})"
    return _writable_problem(path, info)


def _owner_problem(path: str, info: os.stat_result) -> str | None:
    if info.st_uid in (0, os.geteuid()):
        return None
    return f"{path} is owned by uid {info.st_uid}, not by this server's user (uid {os.geteuid()}) or root"


def _writable_problem(path: str, info: os.stat_result) -> str | None:
    if info.st_mode & stat.S_IWOTH:
        return f"{path} is writable by others"
    if info.st_mode & stat.S_IWGRP:
        return f"{path} is writable by its group"
    return None
