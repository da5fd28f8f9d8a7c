"""``sruns-stream mount ARCHIVE MOUNTPOINT``: the run folder, read-only, without restoring it.

The listing comes from the manifest alone (names, types, sizes, modes, mtimes, link
targets); the archive is not read to show it. A file's bytes come from the pieces between
access points that hold them (`pieces`: one ranged read each, inflated, cached). The
mount point shows the run folder itself (``RUN/`` is its root), so a demultiplexer or a
QC tool is pointed at the mount point as at the run folder.

Never wrong bytes: the first read of a file inflates all of it and checks it against
its manifest row (size and crc32c) before one byte is handed out; after that its pieces
are checked each time they are fetched again (`pieces`: same length, same crc32c as the
first time). A file that fails is EIO for every read of it, with one line on stderr
naming it and why; other files go on being served. A file is read whole once even when
a reader wants part of it: that is what the check costs (at most the file and the
access interval before it; a file bigger than the cache is fetched a second time for
the reads after the check).

The FUSE binding is mfusepy (the optional extra ``sruns-stream[mount]``): pure Python
over libfuse's C API through ctypes, no compiler and no event loop of its own, libfuse 3
and 2 both, and maintained as ratarmount's own binding (fusepy's successor). libfuse runs
the callbacks on its own threads, so readers are served in parallel. It mounts in the
foreground until ``fusermount3 -u MOUNTPOINT``, SIGINT or SIGTERM (which unmount).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import google_crc32c

from ..errors import DestinationError, UsageError
from ..humanize import human_bytes
from ..progress import Progress
from ..storage import read_indexes
from ..storage.manifest_tsv import ManifestRow
from ..storage.ratarmount_index import file_rows
from .damage import ArchiveDamaged
from .locate import resolve_source
from .pieces import Pieces
from .reindex import basis
from .report import show
from .sources import ArchiveSource

if TYPE_CHECKING:
    from ..state.journal import Journal

__all__ = ["MountedRun", "Node", "check_fuse", "mount_archive"]

_THREADS = 16  # libfuse's threads serving callbacks at once
READ_AHEAD = 4  # pieces fetched ahead of a sequential reader (and of a file's first check)
_FIX_FUSE = ("mount needs FUSE: install it (Debian/Ubuntu: apt-get install fuse3) and make /dev/fuse available "
             "(in a container: --device /dev/fuse --cap-add SYS_ADMIN)")


@dataclass
class Node:
    """A file, folder or link of the mounted run folder."""

    row: ManifestRow | None  # None: a folder the manifest does not list (the root of a bare archive)
    data: int = 0  # raw offset of a file's data
    children: dict[str, Node] = field(default_factory=dict)
    checked: bool = False
    failed: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def is_dir(self) -> bool:
        return self.row is None or self.row.kind == "d"


class MountedRun:
    """The run folder of an archive, as a tree with reads; FUSE-agnostic (`Operations`
    adapts it)."""

    def __init__(self, src: ArchiveSource, rows: list[ManifestRow], pieces: Pieces, log: Callable[[str], None]) -> None:
        self.src = src
        self.pieces = pieces
        self.log = log
        self.root = Node(None)
        tops = {row.path.split("/", 1)[0] for row in rows}
        strip = tops.pop() + "/" if len(tops) == 1 else ""  # RUN/ is the mount point itself
        tar_end = pieces.span(pieces.count - 1)[1] - read_indexes.EOF_MARKER
        for row, placed in zip(rows, file_rows(rows, tar_end), strict=True):
            path = row.path.rstrip("/")
            if strip and path == strip[:-1]:
                self.root.row = row
                continue
            parts = path[len(strip):].split("/")
            parent = self.root
            for part in parts[:-1]:
                parent = parent.children.setdefault(part, Node(None))
            node = parent.children.get(parts[-1])
            if node is not None and node.row is None:
                node.row = row  # a folder seen first as a parent
            else:
                parent.children[parts[-1]] = Node(row, placed.offset)
        self.uid, self.gid = os.getuid(), os.getgid()
        self._mtime = time.time()

    def lookup(self, path: str) -> Node:
        node = self.root
        for part in path.strip("/").split("/") if path.strip("/") else []:
            child = node.children.get(part)
            if child is None:
                raise OSError(errno.ENOENT, path)
            node = child
        return node

    def attrs(self, node: Node) -> dict[str, Any]:
        row = node.row
        if row is None:
            mode, size, mtime = 0o555 | stat.S_IFDIR, 0, self._mtime
        else:
            kind = {"f": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK}[row.kind]
            # The archived modes as they are: the mount itself is read-only (EROFS).
            mode, mtime = row.mode | kind, float(row.mtime)
            size = len(os.fsencode(row.link)) if row.kind == "l" else row.size
        return {"st_mode": mode, "st_size": size, "st_mtime": mtime, "st_ctime": mtime, "st_atime": mtime,
                "st_nlink": 2 + sum(c.is_dir for c in node.children.values()) if node.is_dir else 1,
                "st_uid": self.uid, "st_gid": self.gid, "st_blocks": -(-size // 512)}

    def read(self, node: Node, offset: int, size: int, sequential: bool) -> bytes:
        """``size`` bytes of a file from ``offset``; OSError EIO when it failed its check."""
        row = node.row
        assert row is not None and row.kind == "f"
        self._check(node)
        end = min(row.size, offset + size)
        if offset >= end:
            return b""
        start = node.data + offset
        try:
            data = self.pieces.read(start, node.data + end)
        except (ArchiveDamaged, DestinationError) as exc:
            self._fail(node, str(exc))
            raise OSError(errno.EIO, row.path) from None
        if sequential:
            k = self.pieces.of(node.data + end)
            for ahead in range(1, READ_AHEAD + 1):
                if k + ahead >= self.pieces.count or self.pieces.span(k + ahead)[0] >= node.data + row.size:
                    break  # the file ends before it
                self.pieces.prefetch(k + ahead)
        return data

    def _check(self, node: Node) -> None:
        """Inflate the whole file once and compare it with its manifest row."""
        row = node.row
        assert row is not None
        if node.checked and node.failed is None:
            return
        with node.lock:
            if node.failed is None and not node.checked:
                try:
                    self._whole(node)
                except (ArchiveDamaged, DestinationError) as exc:
                    self._fail(node, str(exc))
                node.checked = True
        if node.failed is not None:
            raise OSError(errno.EIO, row.path)

    def _whole(self, node: Node) -> None:
        row = node.row
        assert row is not None
        pos, end = node.data, node.data + row.size
        crc = 0
        k = self.pieces.of(pos)
        while pos < end:
            for ahead in range(1, READ_AHEAD + 1):
                if k + ahead < self.pieces.count and self.pieces.span(k + ahead)[0] < end:
                    self.pieces.prefetch(k + ahead)
            lo, hi = self.pieces.span(k)
            crc = google_crc32c.extend(crc, self.pieces.get(k)[pos - lo : min(end, hi) - lo])
            pos = min(end, hi)
            k += 1
        if row.crc32c is not None and crc != row.crc32c:
            raise ArchiveDamaged(f"its data has crc32c {crc:08x}, but the manifest says {row.crc32c:08x}")

    def _fail(self, node: Node, why: str) -> None:
        assert node.row is not None
        if node.failed is None:
            node.failed = why
            self.log(f"{show(node.row.path)}: read error (EIO): {why}")


class Operations:
    """The FUSE callbacks mfusepy calls (only those defined are registered)."""

    def __init__(self, run: MountedRun, on_mounted: Callable[[], None]) -> None:
        self.run = run
        self._on_mounted = on_mounted
        self._handles: dict[int, tuple[Node, list[int]]] = {}
        self._next = 0
        self._lock = threading.Lock()

    def init(self, path: str) -> None:
        self._on_mounted()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        return self.run.attrs(self.run.lookup(path))

    def readdir(self, path: str, fh: int) -> list[str]:
        node = self.run.lookup(path)
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, path)
        return [".", "..", *node.children]

    def readlink(self, path: str) -> str:
        node = self.run.lookup(path)
        if node.row is None or node.row.kind != "l":
            raise OSError(errno.EINVAL, path)
        return node.row.link

    def open(self, path: str, flags: int) -> int:
        node = self.run.lookup(path)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise OSError(errno.EROFS, path)
        if node.is_dir or node.row is None or node.row.kind != "f":
            raise OSError(errno.EISDIR if node.is_dir else errno.EINVAL, path)
        with self._lock:
            self._next += 1
            self._handles[self._next] = (node, [0])
            return self._next

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        node, last = self._handles[fh]
        sequential = offset == last[0]
        data = self.run.read(node, offset, size, sequential)
        last[0] = offset + len(data)
        return data

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            self._handles.pop(fh, None)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}


def check_fuse() -> Any:
    """The mfusepy module, or UsageError with the one line that says how to get FUSE."""
    if not os.path.exists("/dev/fuse") or not (shutil.which("fusermount3") or shutil.which("fusermount")):
        raise UsageError(_FIX_FUSE)
    try:
        import mfusepy  # type: ignore[import-untyped]  # the library ships no type information
    except ImportError:
        raise UsageError("mount needs its FUSE binding: pip install 'sruns-stream[mount]'") from None
    except OSError:  # mfusepy found no libfuse
        raise UsageError(_FIX_FUSE) from None
    return mfusepy


def mount_archive(source: str, mountpoint: Path, *, cache_size: int, journal: Journal | None, collection: str | None,
                  progress: Progress, on_mounted: Callable[[], None] | None = None) -> str:
    """Mount the archive ``source`` names at ``mountpoint`` until it is unmounted or the
    process is stopped; returns a line saying what was read."""
    if not mountpoint.is_dir():
        raise UsageError(f"mount point {mountpoint} is not a directory: make an empty one (mkdir)")
    if os.path.ismount(mountpoint):
        raise UsageError(f"{mountpoint} is already a mount point: unmount it (fusermount3 -u {mountpoint}) or pick "
                         "another")
    if cache_size < 16 << 20:
        raise UsageError(f"--cache-size {cache_size} is below 16 MiB: give at least 16M")
    fuse = check_fuse()
    src = resolve_source(source, journal, collection)
    try:
        b = basis(src, src.read_manifest(progress.note), progress.note)
        pieces = Pieces(src, b.points, b.raw_size, cache_bytes=cache_size, note=progress.note)
        try:
            run = MountedRun(src, b.rows, pieces, progress.note)

            up = threading.Event()

            def mounted() -> None:
                up.set()
                progress.note(f"mounted {src.run} at {mountpoint} (read-only); unmount with "
                              f"fusermount3 -u {mountpoint} or Ctrl-C")
                if on_mounted is not None:
                    on_mounted()

            # libfuse handles SIGINT, SIGTERM and SIGHUP (it unmounts and returns) only
            # where they are left at their defaults; a Python handler would never run
            # while libfuse's loop holds the main thread.
            saved = {s: signal.signal(s, signal.SIG_DFL) for s in (signal.SIGTERM, signal.SIGHUP)}
            try:
                fuse.FUSE(Operations(run, mounted), str(mountpoint), foreground=True, ro=True, nothreads=False,
                          fsname=f"sruns-stream:{src.run}", kernel_cache=True, max_threads=_THREADS,
                          # An archive never changes under the mount: the kernel may keep
                          # names, attributes and pages for as long as it likes.
                          attr_timeout=3600, entry_timeout=3600, negative_timeout=3600)
            except RuntimeError as exc:
                # libfuse's loop ends with an error code when a signal stopped it too: once
                # the mount was up, that is the end asked for (it is unmounted by then).
                if not up.is_set():
                    raise DestinationError(f"cannot mount at {mountpoint} (libfuse error {exc}): {_FIX_FUSE}") from None
            finally:
                for s, handler in saved.items():
                    signal.signal(s, handler)
            sys.stderr.flush()
            return (f"unmounted {mountpoint}: {human_bytes(pieces.fetched)} of {src.location} read in "
                    f"{pieces.requests} requests")
        finally:
            pieces.close()
    finally:
        src.close()
