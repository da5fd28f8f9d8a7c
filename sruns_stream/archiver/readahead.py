"""Reading file members ahead of the tar stream, on a pool of threads.

On an instrument share every ``open``, ``fstat`` and small ``read`` is a round trip to
the filer (0.1–0.5 ms on a LAN, several ms from a cloud VM), so a stream that reads one
file at a time waits most of the time. While the tar stream renders member *i*, this
pool opens and reads members *i+1, i+2, …* in manifest order: small files whole, large
ones' first ``head`` bytes with their descriptor kept open for the stream to read on.
Consecutive small files go to a thread in batches, so a hand-off costs less than the
files it carries (a task per tiny file costs more than reading it from the page cache).

What is read ahead is bounded in bytes (``budget``) and in open descriptors. The stream
takes members in order (`take`); what it gets is exactly what it would have read
itself, checked the same way (`memberio`), so the archive's bytes never depend on the
pool's size or timing. A member that fails a check raises only when the stream reaches
it. A file changed after it was read ahead is caught as any later change is: by the
walk that closes every archive.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from ..runfolder import memberio
from ..runfolder.safefs import FILE, Tree
from ..runfolder.scan import Manifest
from ..stopping import STOP

__all__ = ["Ahead", "ReadAhead"]

# Files up to this size are read whole; larger ones get their first HEAD bytes read and
# their descriptor kept for the stream (the kernel's own read-ahead serves the rest).
SMALL = 1 << 20
HEAD = 256 << 10
# One hand-off carries up to this many bytes or files.
BATCH_BYTES = 1 << 20
BATCH_FILES = 64
_POLL = 0.1  # seconds between looks at the stop flag while waiting for the pool


@dataclass(slots=True)
class Ahead:
    """One member as the pool read it: the whole file, or a large file's head and its
    open descriptor (positioned after the head), or the error reading it raised."""

    data: bytes = b""
    fd: int | None = None
    error: BaseException | None = None


@dataclass(slots=True)
class _Batch:
    first: int
    last: int  # inclusive
    nbytes: int
    future: Future[dict[int, Ahead]]


class ReadAhead:
    def __init__(self, manifest: Manifest, first: int, threads: int, budget: int) -> None:
        self._manifest = manifest
        self._entries = manifest.entries
        self._next = first  # the first member not yet planned
        self._budget = budget
        self._held = 0  # bytes planned and not yet taken
        self._large_limit = max(2, threads)
        self._large_held = 0
        self._batches: deque[_Batch] = deque()
        self._ready: dict[int, Ahead] = {}
        self._local = threading.local()
        self._trees: list[Tree] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="read-ahead")
        self._plan()

    # -- the stream's side --------------------------------------------------------------

    def take(self, i: int) -> Ahead | None:
        """Member ``i`` as read ahead, or None when the pool was not asked to read it
        (not a file, empty, or before where the pool started)."""
        entry = self._entries[i]
        if entry.kind != FILE or not entry.size:
            return None
        while i not in self._ready:
            if not self._batches:
                if self._next > i:
                    return None
                self._plan()
                if not self._batches:
                    return None
                continue
            batch = self._batches[0]
            if batch.first > i:
                return None
            self._ready.update(self._result(batch.future))
            self._batches.popleft()
        ahead = self._ready.pop(i)
        large = entry.size > SMALL
        self._held -= HEAD if large else entry.size
        self._large_held -= large
        self._plan()
        return ahead

    def close(self) -> None:
        """Stop reading ahead; close every descriptor nobody took."""
        self._closed.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for batch in self._batches:
            if batch.future.done() and not batch.future.cancelled() and batch.future.exception() is None:
                self._ready.update(batch.future.result())
        self._batches.clear()
        for ahead in self._ready.values():
            if ahead.fd is not None:
                os.close(ahead.fd)
        self._ready.clear()
        for tree in self._trees:
            tree.close()
        self._trees.clear()

    def _result(self, future: Future[dict[int, Ahead]]) -> dict[int, Ahead]:
        while True:
            try:
                return future.result(timeout=_POLL)
            except FutureTimeout:
                STOP.check()  # a stop request is honoured while the pool works

    # -- planning -------------------------------------------------------------------------

    def _plan(self) -> None:
        """Hand out batches while the byte and descriptor budgets allow."""
        entries = self._entries
        n = len(entries)
        while self._next < n and self._held < self._budget:
            first = i = self._next
            members: list[int] = []
            nbytes = 0
            while i < n and len(members) < BATCH_FILES and nbytes < BATCH_BYTES:
                entry = entries[i]
                if entry.kind == FILE and entry.size:
                    if entry.size > SMALL:
                        if members:
                            break  # a large file goes in a batch of its own
                        if self._large_held >= self._large_limit:
                            return
                        self._large_held += 1
                        members.append(i)
                        nbytes += HEAD
                        i += 1
                        break
                    members.append(i)
                    nbytes += entry.size
                i += 1
            self._next = i
            if not members:
                continue  # only directories, links and empty files: nothing to read
            self._held += nbytes
            future = self._pool.submit(self._read, members)
            self._batches.append(_Batch(first, i - 1, nbytes, future))

    # -- the pool's side -------------------------------------------------------------------

    def _tree(self) -> Tree:
        tree: Tree | None = getattr(self._local, "tree", None)
        if tree is None:
            tree = memberio.open_tree(self._manifest)
            with self._lock:
                self._trees.append(tree)
            self._local.tree = tree
        return tree

    def _read(self, members: list[int]) -> dict[int, Ahead]:
        out: dict[int, Ahead] = {}
        for i in members:
            entry = self._entries[i]
            if self._closed.is_set():
                break
            try:
                tree = self._tree()
                if entry.size > SMALL:
                    fd, head = memberio.open_large(tree, entry, HEAD)
                    out[i] = Ahead(head, fd)
                else:
                    out[i] = Ahead(memberio.read_small(tree, entry))
            except Exception as exc:  # noqa: BLE001 - raised by the stream when it reaches this member
                out[i] = Ahead(error=exc)
        return out
