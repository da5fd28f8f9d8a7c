"""Opening and reading one member of a run folder, checked against its manifest entry.

Every read of a file's bytes goes through here, whoever does it (the tar stream itself,
or `readahead` on its pool): through `safefs.Tree` (no link followed, no FIFO opened),
with the entry's type, inode, size, mtime and ctime checked before and after reading,
and an early end of file reported. A member that fails a check raises RunFolderChanged;
one we may not read raises UnreadableEntry.
"""

from __future__ import annotations

import errno
import os
import stat

from .errors import RunFolderChanged, UnreadableEntry
from .runfolder import Entry, Manifest
from .safefs import Tree

__all__ = ["check", "open_large", "open_member", "open_tree", "read_into", "read_small"]


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
        advice = "; fix its permissions and run again" if exc.errno in (errno.EACCES, errno.EPERM) else ""
        raise UnreadableEntry(f"cannot read {entry.display}: {exc.strerror}{advice}") from exc


def check(fd: int, entry: Entry, when: str) -> None:
    """The open member is still the regular file the scan saw, unchanged."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        problem = "is no longer a regular file (replaced by a directory, FIFO or device)"
    elif entry.ino and st.st_ino != entry.ino:
        problem = "was replaced by another file (its inode changed)"
    elif st.st_size != entry.size or st.st_mtime_ns != entry.mtime_ns:
        problem = f"changed {when} (size {entry.size} -> {st.st_size}, mtime changed: {st.st_mtime_ns != entry.mtime_ns})"
    elif entry.ctime_ns and st.st_ctime_ns != entry.ctime_ns:
        problem = f"was rewritten in place {when} (its ctime changed; size and mtime were kept)"
    else:
        return
    raise RunFolderChanged(
        f"{entry.display} {problem}; a run folder must not change while it is archived: run again to start over"
    )


def read_into(fd: int, entry: Entry, out: memoryview) -> None:
    """Fill ``out`` from ``fd``'s position; an early end of file is a changed folder."""
    got = 0
    try:
        while got < len(out):
            n = os.readv(fd, [out[got:]])
            if n == 0:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    check(fd, entry, "while being read")  # a FIFO or device reads as empty
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
