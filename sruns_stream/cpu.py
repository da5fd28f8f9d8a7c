"""How much of this process's CPU its main thread spent: the serial share.

Whatever the number of compression threads or upload streams, the work only the main
thread does caps the speed-up on any VM at 1 / share (Amdahl). `archive --json` and
`verify --json` report it, and the benchmarks read it from there (docs/scaling.md).
The process total comes from getrusage, which keeps the CPU of threads that have
already ended (a pool shut down before the summary); the main thread's own from
``time.thread_time`` on it.
"""

from __future__ import annotations

import resource
import threading
import time

__all__ = ["usage"]


def usage() -> dict[str, float]:
    """``process_cpu_s``, ``main_thread_cpu_s`` and their ratio ``main_thread_share``,
    since the process started. Call it on the main thread."""
    assert threading.current_thread() is threading.main_thread(), "the main thread's own clock"
    ru = resource.getrusage(resource.RUSAGE_SELF)
    process = ru.ru_utime + ru.ru_stime
    main = time.thread_time()
    return {
        "process_cpu_s": round(process, 4),
        "main_thread_cpu_s": round(main, 4),
        "main_thread_share": round(main / process, 4) if process > 0 else 0.0,
    }
