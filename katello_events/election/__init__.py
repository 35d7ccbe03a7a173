"""Election: deciding which single process is the runner.

An election object is process-local and used from the runner's control thread only:
``try_acquire()`` never blocks, ``still_held()`` is the fencing check made at every heartbeat,
``release()`` gives the role up. See ``docs/architecture.md`` ("The life of the lock").
"""

from katello_events.election.file_lock import FileLockElection, LockFileError

__all__ = ["FileLockElection", "LockFileError"]
