"""Reading inside one folder without ever leaving it.

A run folder lives on a share other users can write to. Between the scan and the read
any entry can be swapped: a file for a symlink to ``/etc/shadow``, a directory for a
symlink to another user's home, a file for a FIFO that blocks ``open()`` forever. So
everything below the root is reached through directory descriptors, one component at
a time, with ``O_NOFOLLOW``: a symlink where a directory or file should be fails with
ELOOP (or ENOTDIR) instead of being followed. Files are opened ``O_NONBLOCK``, so a
FIFO or device opens at once and is then refused by its type (``fstat``), never read.

Only the root itself is opened by its path, following links: the user named it.

Paths handed to a `Tree` are bytes relative to its root (``b""`` is the root,
``b"Data/Intensities"`` a directory below it). Errors are plain ``OSError``s: callers
decide what a missing or swapped entry means for them.
"""

from __future__ import annotations

import errno
import os
import stat
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "DIR", "DIR_FLAGS", "DIR_MODE", "FILE", "FILE_FLAGS", "SYMLINK", "Listed", "Tree", "kind_of", "make_dirs",
    "probe_latency", "remove_listed",
]

# O_NOFOLLOW on every component below the root; O_CLOEXEC so the daemon's children
# inherit none of them.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO would otherwise wait for a writer, forever. On regular
# files (local, NFS, SMB) it changes nothing.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# The directories sruns-stream makes for itself (a destination, a completed_runs_dir, a
# restore's DEST and the parents it needs): the umask still applies, as for the
# directories tar makes for itself, but a umask of 000 gives 0755, never a directory
# anyone may write into (or delete an archive from).
DIR_MODE = 0o755
# Reading must not touch atimes; the kernel allows O_NOATIME only on files we own.
_O_NOATIME = getattr(os, "O_NOATIME", 0)


# The kinds of entry a run folder may hold, as manifests record them.
FILE = "f"
DIR = "d"
SYMLINK = "l"


def kind_of(mode: int) -> str | None:
    """`FILE`, `DIR`, `SYMLINK` for the types a run folder may hold, else None."""
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISLNK(mode):
        return SYMLINK
    return None


class Tree:
    """Descriptor-based access below ``root``.

    The descriptors of the directories on the current path are kept open and reused:
    a depth-first walk, or reading members in manifest order, opens each directory
    once. ``close()`` releases them; a `Tree` is also a context manager.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._chain: list[tuple[bytes, int]] = []  # (component, fd) below the root
        self._current: bytes | None = b""  # the directory the chain ends in
        self._noatime = _O_NOATIME

    def close(self) -> None:
        self._truncate(0)
        if self._root_fd >= 0:
            fd, self._root_fd = self._root_fd, -1  # forgotten first: a signal must not double-close
            os.close(fd)

    def __enter__(self) -> Tree:  # noqa: PYI034 - typing.Self needs Python 3.11; we support 3.10
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def root_stat(self) -> os.stat_result:
        return os.fstat(self._root_fd)

    def dir_fd(self, rel_dir: bytes) -> int:
        """A descriptor of directory ``rel_dir``, reached without following any link.

        The descriptor belongs to the tree: valid until the next call or ``close()``.
        """
        if rel_dir == self._current:  # the same directory as last time: most members
            return self._chain[-1][1] if self._chain else self._root_fd
        parts = rel_dir.split(b"/") if rel_dir else []
        common = 0
        # strict=False: the open chain and the wanted path differ in depth; only their common prefix is compared.
        for (have, _), want in zip(self._chain, parts, strict=False):
            if have != want:
                break
            common += 1
        self._truncate(common)
        fd = self._chain[-1][1] if self._chain else self._root_fd
        for part in parts[common:]:
            if part in (b"", b".", b".."):
                raise OSError(22, f"invalid path component {part!r}")
            fd = os.open(part, DIR_FLAGS, dir_fd=fd)
            self._chain.append((part, fd))
        self._current = rel_dir
        return fd

    def _truncate(self, keep: int) -> None:
        self._current = None
        while len(self._chain) > keep:
            _, fd = self._chain.pop()
            os.close(fd)

    def split(self, rel: bytes) -> tuple[int, bytes]:
        """(descriptor of the parent directory, last component) of ``rel``."""
        parent, _, name = rel.rpartition(b"/")
        if not name or name in (b".", b".."):
            raise OSError(22, f"invalid path {rel!r}")
        return self.dir_fd(parent), name

    def lstat(self, rel: bytes) -> os.stat_result:
        if not rel:
            return self.root_stat()
        fd, name = self.split(rel)
        return os.stat(name, dir_fd=fd, follow_symlinks=False)

    def readlink(self, rel: bytes) -> bytes:
        fd, name = self.split(rel)
        return os.readlink(name, dir_fd=fd)

    def open_file(self, rel: bytes) -> int:
        """A read-only descriptor of ``rel``: never through a link, never blocking.

        The caller must check the type with ``fstat``: a FIFO or device opens too.
        """
        fd, name = self.split(rel)
        if self._noatime:
            try:
                return os.open(name, FILE_FLAGS | self._noatime, dir_fd=fd)
            except PermissionError:
                # Not our file: the share's files belong to the instrument's account.
                # Stop asking for every file rather than paying two opens each.
                self._noatime = 0
        return os.open(name, FILE_FLAGS, dir_fd=fd)

    def readable(self, rel: bytes, directory: bool = False) -> bool:
        """Whether we may read (and, for a directory, list) ``rel``."""
        fd, name = self.split(rel)
        return os.access(name, os.R_OK | (os.X_OK if directory else 0), dir_fd=fd)


def make_dirs(path: Path | str) -> None:
    """``mkdir -p path`` with `DIR_MODE` for every directory it makes (``Path.mkdir``
    makes the parents 0777 less the umask, whatever mode it is given). An existing
    directory, or a link to one, is left as it is."""
    missing: list[Path] = []
    p = Path(path)
    while not p.is_dir() and p.parent != p:
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        try:
            os.mkdir(p, DIR_MODE)
        except FileExistsError:
            if not p.is_dir():  # made meanwhile by someone else is fine; a file is not
                raise


def probe_latency(root: Path | str, sample: int = 8) -> float:
    """Seconds one ``open`` of a file below ``root`` takes (the median over up to
    ``sample`` of its files): a few microseconds from a local page cache, the filer's
    round trip on a share. An open, not a stat: NFS revalidates on every open (close-to-
    open consistency) while a stat may be answered from the client's attribute cache.
    0.0 when there is no file to try or the folder cannot be read."""
    times: list[float] = []
    try:
        with Tree(root) as tree, os.scandir(tree.dir_fd(b"")) as it:
            for entry in it:
                if len(times) >= sample:
                    break
                if not entry.is_file(follow_symlinks=False):
                    continue
                t0 = time.perf_counter()
                try:
                    os.close(tree.open_file(os.fsencode(entry.name)))
                except OSError:
                    continue
                times.append(time.perf_counter() - t0)
    except OSError:
        return 0.0
    return statistics.median(times) if times else 0.0


class Listed(NamedTuple):
    """One entry as a walk saw it: enough to tell whether the entry on disk is still it."""

    rel: bytes  # below the root; b"" is the root itself
    kind: str  # kind_of()
    ino: int
    size: int  # a file's; not compared for directories and links
    mtime_ns: int  # not compared for directories (removing their entries changes it)


def remove_listed(root: Path | str, listed: Sequence[Listed]) -> list[bytes]:
    """Delete ``root`` and the entries below it, but only those in ``listed`` and only
    while each is still what was listed (type, inode, and for files and links size and
    mtime): what appeared or changed after the walk that made ``listed`` survives, and
    so do the directories that hold it, up to ``root``.

    ``listed`` is in walk order (a directory before what it holds). Non-directories go
    first, then directories, each bottom-up; a directory is removed with ``rmdir``, which
    fails on one that is not empty, so nothing unlisted is ever removed with it. Every
    entry is reached through directory descriptors without following links (a link
    planted where a directory was is never entered), and each parent directory must be
    the one listed (its inode). ``root`` itself must be the directory listed, not a link.

    Returns the paths below ``root`` that are left: listed entries that changed or could
    not be reached through directories, and entries found that were not listed; empty
    when ``root`` is gone. Any other error (permissions, I/O) is raised as it comes, with
    what was removed so far removed; so is a ``root`` that is not the directory listed.
    Between the check and the ``unlink`` of one entry there is no atomic "unlink if still
    this inode" in POSIX: that window is one system call wide.
    """
    by_rel = {e.rel: e for e in listed}
    top = by_rel.get(b"")
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return []
    if top is None or not stat.S_ISDIR(st.st_mode) or st.st_ino != top.ino:
        raise _not_walked(root)
    left: list[bytes] = []
    order = [e for e in reversed(listed) if e.rel and e.kind != "d"] + [
        e for e in reversed(listed) if e.rel and e.kind == "d"
    ]
    with Tree(root) as tree:
        if tree.root_stat().st_ino != top.ino:
            raise _not_walked(root)
        checked: bytes | None = None  # the parent directory last found to be the listed one
        for entry in order:
            parent = entry.rel.rpartition(b"/")[0]
            try:
                fd, name = tree.split(entry.rel)
                if parent != checked:
                    want = by_rel.get(parent)
                    if want is None or os.fstat(fd).st_ino != want.ino:
                        left.append(entry.rel)  # another directory under the listed name
                        continue
                    checked = parent
                now = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone already
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                checked = None
                left.append(entry.rel)  # unreachable: a link or a file where a directory was
                continue
            if not _still(entry, now):
                left.append(entry.rel)
                continue
            try:
                if entry.kind == "d":
                    os.rmdir(name, dir_fd=fd)
                else:
                    os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if entry.kind != "d" or exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                left.extend(_unlisted(fd, name, entry.rel, by_rel))
        try:
            os.rmdir(root)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            left.extend(_unlisted(tree.dir_fd(b""), b".", b"", by_rel))
    return left


def _not_walked(root: Path | str) -> OSError:
    return OSError(errno.ESTALE, "not the directory that was walked (replaced, or a symlink now)", str(root))


def _still(entry: Listed, now: os.stat_result) -> bool:
    if kind_of(now.st_mode) != entry.kind or now.st_ino != entry.ino:
        return False
    if entry.kind == "d":
        return True
    return now.st_mtime_ns == entry.mtime_ns and (entry.kind != "f" or now.st_size == entry.size)


def _unlisted(parent_fd: int, name: bytes, rel: bytes, listed: dict[bytes, Listed]) -> list[bytes]:
    """What a directory that could not be removed holds that was not listed (what was
    listed and is still there is reported where it was kept)."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError:
        return []
    try:
        with os.scandir(fd) as it:
            found = sorted(os.fsencode(d.name) for d in it)
    except OSError:
        return []
    finally:
        os.close(fd)
    return [p for p in ((rel + b"/" + n) if rel else n for n in found) if p not in listed]
