"""Run folders: the ordered file manifest that every archive is generated from.

The manifest is the stream contract's first half: walked once, in a fixed bytewise
order, and stored in the journal, so that a resumed archive renders exactly the same
tar bytes as the first attempt. Sockets, FIFOs and device files are skipped and
reported (no tar reader expects them in a run folder); symlinks are recorded as links
and never followed.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RunFolderChanged, RunFolderMissing, UnreadableEntry

__all__ = ["DIR", "FILE", "SYMLINK", "Entry", "Manifest", "check_unchanged", "scan_run_folder"]

FILE = "f"
DIR = "d"
SYMLINK = "l"


@dataclass(frozen=True, slots=True)
class Entry:
    """One member of a run folder, with the metadata the tar header needs.

    ``path`` is relative to the run folder's parent (it starts with the run folder's
    own name), as raw bytes: names are sorted and archived bytewise, whatever their
    encoding.
    """

    path: bytes
    kind: str
    size: int
    mode: int
    mtime_ns: int
    uid: int
    gid: int
    linkname: bytes = b""

    @property
    def display(self) -> str:
        return os.fsdecode(self.path)


@dataclass(slots=True)
class Manifest:
    """The ordered entries of a run folder and what the walk left out."""

    root: Path
    entries: list[Entry]
    skipped: list[str] = field(default_factory=list)
    # Encoded once: source_path() is on the per-file path of a 400,000-file run.
    _parent: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._parent = os.fsencode(self.root.parent).rstrip(b"/")

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def file_count(self) -> int:
        return sum(1 for e in self.entries if e.kind == FILE)

    @property
    def data_bytes(self) -> int:
        return sum(e.size for e in self.entries if e.kind == FILE)

    def fingerprint(self) -> str:
        """A digest of every entry: equal fingerprints mean equal tar bytes."""
        h = hashlib.sha256()
        for e in self.entries:
            h.update(
                b"%b\0%b\0%d\0%o\0%d\0%d\0%d\0%b\n"
                % (e.path, e.kind.encode(), e.size, e.mode, e.mtime_ns, e.uid, e.gid, e.linkname)
            )
        return h.hexdigest()

    def source_path(self, entry: Entry) -> bytes:
        """Where the entry lives on disk (the manifest path is relative to root's parent)."""
        return self._parent + b"/" + entry.path

    def changed_entries(self) -> Iterator[str]:
        """Entries whose size, mtime or type on disk no longer match (re-stat, no walk)."""
        for e in self.entries:
            try:
                st = os.lstat(self.source_path(e))
            except OSError:
                yield f"{e.display}: missing"
                continue
            if _kind_of(st.st_mode) != e.kind:
                yield f"{e.display}: type changed"
            elif e.kind == FILE and (st.st_size != e.size or st.st_mtime_ns != e.mtime_ns):
                yield f"{e.display}: size or mtime changed"


def _kind_of(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISLNK(mode):
        return SYMLINK
    return None


def _entry(rel: bytes, st: os.stat_result, linkname: bytes = b"") -> Entry:
    kind = _kind_of(st.st_mode)
    assert kind is not None
    return Entry(
        path=rel,
        kind=kind,
        size=st.st_size if kind == FILE else 0,
        mode=stat.S_IMODE(st.st_mode),
        mtime_ns=st.st_mtime_ns,
        uid=st.st_uid,
        gid=st.st_gid,
        linkname=linkname,
    )


def scan_run_folder(rundir: Path | str) -> Manifest:
    """Walk ``rundir`` depth-first, children sorted bytewise, and return its manifest.

    Raises RunFolderMissing when rundir is not a directory, and UnreadableEntry naming
    the first file or directory that cannot be read.
    """
    root = Path(rundir).absolute()
    try:
        st = os.stat(root)  # follows a symlinked run folder on purpose: users pass links
    except FileNotFoundError:
        raise RunFolderMissing(f"run folder {root} does not exist: check the path") from None
    except OSError as exc:
        raise UnreadableEntry(f"cannot stat run folder {root}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise RunFolderMissing(f"{root} is not a directory: give the run folder itself")
    entries = [_entry(os.fsencode(root.name), st)]
    skipped: list[str] = []
    _walk(os.fsencode(root), os.fsencode(root.name), entries, skipped)
    return Manifest(root=root, entries=entries, skipped=skipped)


def _walk(abs_dir: bytes, rel_dir: bytes, entries: list[Entry], skipped: list[str]) -> None:
    # Recursion depth is the folder depth (about 8 in a run folder), so recursion is fine.
    try:
        with os.scandir(abs_dir) as it:
            children = sorted(it, key=lambda d: d.name)
    except OSError as exc:
        raise UnreadableEntry(
            f"cannot read directory {os.fsdecode(abs_dir)}: {exc.strerror}; "
            "fix its permissions or remove it from the run folder"
        ) from exc
    for child in children:
        rel = rel_dir + b"/" + child.name
        try:
            st = child.stat(follow_symlinks=False)
        except OSError as exc:
            raise UnreadableEntry(f"cannot stat {os.fsdecode(child.path)}: {exc.strerror}") from exc
        kind = _kind_of(st.st_mode)
        if kind is None:
            skipped.append(f"{os.fsdecode(child.path)} (not a regular file, directory or symlink)")
            continue
        if kind == SYMLINK:
            entries.append(_entry(rel, st, os.readlink(child.path)))
        elif kind == FILE:
            if not os.access(child.path, os.R_OK):
                raise UnreadableEntry(
                    f"cannot read {os.fsdecode(child.path)}: permission denied; "
                    "fix its permissions and run again"
                )
            entries.append(_entry(rel, st))
        else:
            if not os.access(child.path, os.R_OK | os.X_OK):
                raise UnreadableEntry(
                    f"cannot read directory {os.fsdecode(child.path)}: permission denied; "
                    "fix its permissions and run again"
                )
            entries.append(_entry(rel, st))
            _walk(os.fsencode(child.path), rel, entries, skipped)


def check_unchanged(manifest: Manifest, limit: int = 5) -> None:
    """Raise RunFolderChanged if any entry differs on disk from the manifest."""
    changes = _first(manifest.changed_entries(), limit)
    if changes:
        raise RunFolderChanged(
            f"run folder {manifest.root} changed since its manifest: " + "; ".join(changes)
        )


def _first(items: Iterable[str], n: int) -> list[str]:
    out: list[str] = []
    for item in items:
        out.append(item)
        if len(out) >= n:
            break
    return out
