"""Handlers used by the tests."""

from __future__ import annotations

import os
import threading
import time

from katello_events.handlers.base import Handler


class ProbeHandler(Handler):
    """Appends ``start <pid> <t>`` and ``stop <pid> <t>`` lines (CLOCK_MONOTONIC, shared by all
    processes of the machine) so a test can prove that no two runs ever overlapped."""

    def _record(self, what: str) -> None:
        line = f"{what} {os.getpid()} {time.monotonic():.6f}\n".encode()
        fd = os.open(self.options["LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def run(self) -> None:
        self._record("start")
        try:
            while not self.stopping:
                self.tick()
                self.stats.increment("processed")
                self.sleep(0.05)
        finally:
            self._record("stop")


class CrashingHandler(Handler):
    """Raises on every run: exercises the supervisor's restart and backoff."""

    def run(self) -> None:
        self.tick()
        raise RuntimeError("boom password=hunter2")


class StubbornHandler(Handler):
    """Ignores stop requests for a while: exercises the bounded stop."""

    def run(self) -> None:
        deadline = time.monotonic() + float(self.options.get("IGNORE_STOP_FOR", 3.0))
        while time.monotonic() < deadline:
            self.tick()
            time.sleep(0.05)


class StallingHandler(Handler):
    """Stops ticking without ending: exercises stall detection."""

    def run(self) -> None:
        self.tick()
        while not self.stopping:
            self.sleep(0.05)  # alive, but never ticks again


#: Set by tests to let BlockedHandler's thread end (a real stuck thread would never end).
RELEASE = threading.Event()


class BlockedHandler(Handler):
    """Ticks once, then blocks and ignores stop(): a handler call that never returns."""

    def run(self) -> None:
        self.tick()
        RELEASE.wait()


class CountingHandler(Handler):
    """Counts `processed` and `ignored` as fast as asked: exercises status flushing."""

    def run(self) -> None:
        per_tick = int(self.options.get("PER_TICK", 1))
        while not self.stopping:
            self.tick()
            self.stats.increment("processed", per_tick)
            self.stats.increment("ignored")
            self.stats.set_gauge("queue_depth", 7)
            self.sleep(0.02)


class UnconstructibleHandler(Handler):
    """Rejects its options: a constructor that raises is a crash like any other."""

    def __init__(self, *args, **kwargs) -> None:
        raise ValueError("bad OPTIONS: passcode=sesame")


class BrokenStatusHandler(CountingHandler):
    """Its status() raises: the runner must carry on and say so."""

    def details(self) -> dict:
        raise KeyError("details")


#: The depth DepthHandler reports; tests running an in-process runner set it.
DEPTH = {"value": 0}


class DepthHandler(Handler):
    """Reports whatever queue depth the test sets in ``DEPTH``."""

    def run(self) -> None:
        while not self.stopping:
            self.tick()
            self.stats.set_gauge("queue_depth", DEPTH["value"])
            self.sleep(0.02)


class GrowingHandler(Handler):
    """Grows this process's memory by ``MB`` megabytes once per test (the first runner to create
    the file ``FLAG``), then idles: exercises the memory watchdog and its handover."""

    def run(self) -> None:
        hoard = []
        try:
            fd = os.open(self.options["FLAG"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # an earlier runner grew already: the next ones behave
        else:
            os.close(fd)
            # Written, so the pages are resident (a zeroed allocation may not be).
            hoard.append(b"x" * (int(self.options.get("MB", 300)) * 1024 * 1024))
        while not self.stopping:
            self.tick()
            self.sleep(0.05)
