"""Process identity: which process a journal row names, and whether it still runs.

A PID alone names a process only until it exits: PIDs are reused. A row names its
archiving process by PID *and* the process's start time (clock ticks since boot,
``/proc/PID/stat`` field 22), so a reused PID never counts as the same process. Rows
written before start times were recorded (sruns-monitor's, or this tool's older
versions) have only a PID: such a PID counts only while it is a sruns-stream process.
"""

from __future__ import annotations

import os

__all__ = ["alive", "start_time"]


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def alive(pid: int | None, start: int | None) -> bool:
    """Whether the process a row names (``pid``, and ``start`` when recorded) still runs."""
    if not pid:
        return False
    now = start_time(pid)
    if now is None:
        return False
    if start is not None:
        return now == start
    return _is_sruns_stream(pid)


def _is_sruns_stream(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return any(os.path.basename(arg) in (b"sruns-stream", b"sruns_stream") for arg in argv)
