"""This process's resident memory, for the runner's memory watchdog. Imports nothing from the package."""

from __future__ import annotations

import resource
import sys


def current_rss_mb() -> float:
    """Resident set size of this process in megabytes (MiB).

    Linux: VmRSS from /proc/self/status, the current value. Elsewhere: ``getrusage``'s
    ``ru_maxrss``, which is the *peak* RSS (kilobytes on Linux, bytes on macOS), so once above
    the limit it stays above: good enough for a watchdog that hands over once.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
