"""Opening and reading one member of a run folder, checked against its manifest entry.

Every read of a file's bytes goes through here, whoever does it (the tar stream itself,
or `archiver.blocks` on its pool): through `safefs.Tree` (no link followed, no FIFO opened),
with the entry's type, inode, size, mtime and ctime checked before and after reading,
and an early end of file reported. A member that fails a check raises RunFolderChanged;
one we may not read raises UnreadableEntry.

A test hook lives here too, because every read passes here: ``SRUNS_TEST_PAUSE_BEFORE=
REL=GATE`` in the environment makes the process stop once, before opening member REL:
it creates ``GATE.reached``, then reads the FIFO ``GATE`` until the test closes its end.
tests/test_archive_trust.py swaps entries meanwhile, a race it controls instead of one
it hopes to win.
"""

from __future__ import annotations

import errno
import os
import stat
import threading

from ..errors import RunFolderChanged, UnreadableEntry
from .safefs import Tree
from .scan import Entry, Manifest

__all__ = ["check", "open_large", "open_member", "open_tree", "read_into", "read_small"]

# Read once, at import: the hook costs nothing when it is not set.
_pause_rel, _, _pause_gate = os.environ.get("SRUNS_TEST_PAUSE_BEFORE", "").partition("=")
_pause_lock = threading.Lock()


def _pause_before(rel: bytes) -> None:
    """The test hook of the module docstring: the first time only, on whichever thread."""
    global _pause_gate
    with _pause_lock:
        if not _pause_gate or rel != os.fsencode(_pause_rel):
            return
        gate, _pause_gate = _pause_gate, ""
        with open(f"{gate}.reached", "x"):
            pass
        with open(gate, "rb") as f:  # blocks until the test opens its end, then until it closes it
            f.read()


_KINDS = {stat.S_IFSOCK: "a socket", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory", stat.S_IFLNK: "a symlink"}


def open_tree(manifest: Manifest) -> Tree:
    """A `Tree` on the run folder, which must still be the folder that was scanned."""
    tree = Tree(manifest.root)
    root = manifest.entries[0]
    if root.ino and tree.root_stat().st_ino != root.ino:
        tree.close()
        raise RunFolderChanged(f"{manifest.root} is no longer the folder that was scanned (its inode changed)")
    return tree


def open_member(tree: Tree, entry: Entry) -> int:
    """A read-only descriptor of the member (not yet checked: see `check`)."""
    if _pause_gate:
        _pause_before(entry.rel)
    try:
        return tree.open_file(entry.rel)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise RunFolderChanged(f"{entry.display} disappeared after the run folder was scanned") from exc
        if exc.errno == errno.ELOOP:
            raise RunFolderChanged(
                f"{entry.display} (or a directory on its path) became a symlink after the run folder was "
                "scanned: links are never followed"
            ) from exc
        swapped = _not_a_file(tree, entry)
        if swapped is not None:  # a socket refuses open() (ENXIO), and so may a device
            raise RunFolderChanged(
                f"{entry.display} is no longer a regular file (replaced by {swapped}) after the run folder was "
                "scanned; a run folder must not change while it is archived: run again to start over"
            ) from exc
        advice = "; fix its permissions and run again" if exc.errno in (errno.EACCES, errno.EPERM) else ""
        raise UnreadableEntry(f"cannot read {entry.display}: {exc.strerror}{advice}") from exc


def _not_a_file(tree: Tree, entry: Entry) -> str | None:
    """What stands at the member's name now, if it is no longer a regular file."""
    try:
        mode = tree.lstat(entry.rel).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else _KINDS.get(stat.S_IFMT(mode), "something else")


def check(fd: int, entry: Entry, when: str) -> None:
    """The open member is still the regular file the scan saw, unchanged."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        problem = f"is no longer a regular file (replaced by {_KINDS.get(stat.S_IFMT(st.st_mode), 'something else')})"
    elif entry.ino and st.st_ino != entry.ino:
        problem = "was replaced by another file (its inode changed)"
    elif st.st_size != entry.size or st.st_mtime_ns != entry.mtime_ns:
        problem = (f"changed {when} (size {entry.size} -> {st.st_size}, "
                   f"mtime changed: {st.st_mtime_ns != entry.mtime_ns})")
    elif entry.ctime_ns and st.st_ctime_ns != entry.ctime_ns:
        problem = f"was rewritten in place {when} (its ctime changed; size and mtime were kept)"
    else:
        return
    raise RunFolderChanged(
        f"{entry.display} {problem}; a run folder must not change while it is archived: run again to start over"
    )


def read_into(fd: int, entry: Entry, out: memoryview, offset: int | None = None) -> None:
    """Fill ``out`` from ``fd``'s position, or from ``offset`` without moving it (a
    descriptor several threads share); an early end of file is a changed folder."""
    got = 0
    try:
        while got < len(out):
            n = os.readv(fd, [out[got:]]) if offset is None else os.preadv(fd, [out[got:]], offset + got)
            if n == 0:
                # A FIFO or device reads as empty; a shared descriptor's file, as it is now.
                if offset is not None or not stat.S_ISREG(os.fstat(fd).st_mode):
                    check(fd, entry, "while being read")
                raise RunFolderChanged(
                    f"{entry.display} shrank while being read (expected {entry.size} bytes); "
                    "a run folder must not change while it is archived"
                )
            got += n
    except OSError as exc:
        if exc.errno in (errno.EISDIR, errno.EAGAIN, errno.EINVAL):
            check(fd, entry, "while being read")
        raise UnreadableEntry(f"cannot read {entry.display}: {exc.strerror}") from exc


def read_small(tree: Tree, entry: Entry) -> bytes:
    """A whole (small) file: open, read, one fstat after the read, close. The check after
    the read catches a change made before or during it."""
    fd = open_member(tree, entry)
    try:
        data = bytearray(entry.size)
        read_into(fd, entry, memoryview(data))
        check(fd, entry, "while being read")
        return bytes(data)
    finally:
        os.close(fd)


def open_large(tree: Tree, entry: Entry, head: int) -> tuple[int, bytes]:
    """A (large) file checked before reading, and its first ``head`` bytes; the
    descriptor is left positioned after them. The caller closes it."""
    fd = open_member(tree, entry)
    try:
        check(fd, entry, "before reading")  # fail before reading gigabytes of a changed file
        data = bytearray(min(head, entry.size))
        read_into(fd, entry, memoryview(data))
        return fd, bytes(data)
    except BaseException:
        os.close(fd)
        raise
