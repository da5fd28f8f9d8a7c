"""What glibc's allocator keeps: the process's peak RSS, not just what Python holds.

Blocks of the archive (1 MiB raw, their deflated output, 16 MiB upload chunks) are
allocated on one thread and freed on another. glibc gives each thread that allocates
its own arena and keeps what an arena freed for later, so a pipeline of a few threads
held ~10 MiB more than it used (issue 21: 64 → 72 MiB peak on a NovaSeq-style run once
blocks were assembled on a pool) and several upload streams ~70 MiB each (4 streams:
425 MiB peak; 305-340 MiB with `give_back` after each chunk, at the same speed). Where
the C library is not glibc, both calls do nothing.
"""

from __future__ import annotations

import ctypes

__all__ = ["give_back", "one_arena"]

_LIBC = ctypes.CDLL(None)  # the interpreter's own symbols, the C library's among them
_MALLOC_TRIM = getattr(_LIBC, "malloc_trim", None)
_MALLOPT = getattr(_LIBC, "mallopt", None)
_M_ARENA_MAX = -8  # glibc's malloc.h


def one_arena() -> None:
    """Every thread allocates from one arena. Call before the first thread starts (an
    arena made earlier stays). Python's small objects do not go through malloc, so
    the threads share the arena only for large buffers: measured, no slower
    (benchmarks, issue 21), and peak RSS 56 instead of 72 MiB on the NovaSeq-style run."""
    if _MALLOPT is not None:
        _MALLOPT(_M_ARENA_MAX, 1)


def give_back() -> None:
    """Return freed memory at the top of the heaps to the system."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
