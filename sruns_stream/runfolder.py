"""Run folders: the ordered file manifest that every archive is generated from.

The manifest is the stream contract's first half: walked once, in a fixed bytewise
order, and stored in the journal, so that a resumed archive renders exactly the same
tar bytes as the first attempt. Sockets, FIFOs and device files are skipped and
reported (no tar reader expects them in a run folder); symlinks are recorded as links
and never followed. The walk goes through directory descriptors (`safefs.Tree`), so a
directory swapped for a symlink while it is walked is never entered.

Besides what the tar header needs, each entry keeps its inode number and ctime. They
are not archived; they say whether the entry on disk is still the one that was
scanned: a file rewritten in place with its size and mtime put back still gets a new
ctime, and a file swapped for another (a copy, a hard link) has another inode.
`compare` uses them to decide whether a folder still holds exactly what its archive
holds, before anything is reported archived, moved or deleted.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RunFolderChanged, RunFolderMissing, UnreadableEntry, UsageError
from .safefs import Tree, kind_of
from .stopping import STOP

__all__ = [
    "DIR",
    "FILE",
    "SYMLINK",
    "Entry",
    "FolderDiff",
    "Manifest",
    "check_unchanged",
    "compare",
    "resolve_run_folder",
    "scan_run_folder",
]

FILE = "f"
DIR = "d"
SYMLINK = "l"


@dataclass(frozen=True, slots=True)
class Entry:
    """One member of a run folder, with the metadata the tar header needs.

    ``path`` is relative to the run folder's parent (it starts with the run folder's
    own name), as raw bytes: names are sorted and archived bytewise, whatever their
    encoding. ``ino`` and ``ctime_ns`` identify the entry on disk (0: not recorded, as
    in a journal written before they were); they are never archived.
    """

    path: bytes
    kind: str
    size: int
    mode: int
    mtime_ns: int
    uid: int
    gid: int
    linkname: bytes = b""
    ino: int = 0
    ctime_ns: int = 0

    @property
    def display(self) -> str:
        return os.fsdecode(self.path)

    @property
    def rel(self) -> bytes:
        """The path below the run folder (``b""`` for the run folder itself)."""
        return self.path.partition(b"/")[2]


@dataclass(slots=True)
class Manifest:
    """The ordered entries of a run folder and what the walk left out."""

    root: Path
    entries: list[Entry]
    skipped: list[str] = field(default_factory=list)

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
        """A digest of every entry's archived metadata: equal fingerprints mean equal tar
        bytes for unchanged file contents."""
        return fingerprint(self.entries)

    def changed_entries(self) -> Iterator[str]:
        """Entries that differ on disk from the manifest (re-stat, no walk)."""
        try:
            tree = Tree(self.root)
        except OSError as exc:
            yield f"{self.root}: {exc.strerror}"
            return
        with tree:
            for e in self.entries:
                try:
                    st = tree.lstat(e.rel)
                    link = tree.readlink(e.rel) if e.kind == SYMLINK and stat.S_ISLNK(st.st_mode) else b""
                except OSError as exc:
                    yield f"{e.display}: {_gone(exc)}"
                    continue
                change = _difference(e, _entry(e.path, st, link), is_root=not e.rel)
                if change:
                    yield f"{e.display}: {change}"


def fingerprint(entries: list[Entry]) -> str:
    h = hashlib.sha256()
    for e in entries:
        h.update(
            b"%b\0%b\0%d\0%o\0%d\0%d\0%d\0%b\n"
            % (e.path, e.kind.encode(), e.size, e.mode, e.mtime_ns, e.uid, e.gid, e.linkname)
        )
    return h.hexdigest()


def _gone(exc: OSError) -> str:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "missing"
    if exc.errno == errno.ELOOP:
        return "a directory on its path became a symlink"
    return exc.strerror or str(exc)


_KIND_NAME = {FILE: "file", DIR: "directory", SYMLINK: "symlink", None: "special file"}


def _difference(old: Entry, new: Entry, is_root: bool) -> str | None:
    """What differs between two states of one entry, or None."""
    if old.kind != new.kind:
        return f"was a {_KIND_NAME[old.kind]}, now a {_KIND_NAME.get(new.kind, 'special file')}"
    if old.size != new.size:
        return f"size {old.size} -> {new.size}"
    if old.mtime_ns != new.mtime_ns:
        return "modified (mtime changed)"
    if old.linkname != new.linkname:
        return f"link target {os.fsdecode(old.linkname)!r} -> {os.fsdecode(new.linkname)!r}"
    if (old.mode, old.uid, old.gid) != (new.mode, new.uid, new.gid):
        return "mode or owner changed"
    if old.ino and new.ino and old.ino != new.ino:
        return "replaced by another file (new inode)"
    # The run folder's own ctime changes when the daemon moves it; that changes nothing
    # inside it.
    if not is_root and old.ctime_ns and new.ctime_ns and old.ctime_ns != new.ctime_ns:
        return "rewritten in place (ctime changed, size and mtime kept)"
    return None


def _entry(rel: bytes, st: os.stat_result, linkname: bytes = b"") -> Entry:
    kind = kind_of(st.st_mode)
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
        ino=st.st_ino,
        ctime_ns=st.st_ctime_ns,
    )


def resolve_run_folder(rundir: Path | str) -> Path:
    """The run folder's real, absolute path; its last component is the run's name.

    Links to a run folder are resolved (users pass them; the archive is named after the
    folder itself). A name that cannot be a run (``/``, ``.``, ``..``) is a usage error.
    """
    given = Path(rundir)
    try:
        root = given.resolve(strict=True)
    except FileNotFoundError:
        raise RunFolderMissing(f"run folder {given} does not exist: check the path") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise RunFolderMissing(f"run folder {given} cannot be resolved ({exc}): check the path") from None
    if root.name in ("", ".", ".."):
        raise UsageError(f"{given} resolves to {root}, which names no run folder: give the run folder itself")
    if not root.is_dir():
        raise RunFolderMissing(f"{root} is not a directory: give the run folder itself")
    return root


def scan_run_folder(rundir: Path | str) -> Manifest:
    """Walk ``rundir`` depth-first, children sorted bytewise, and return its manifest.

    Raises RunFolderMissing when rundir is not a directory, and UnreadableEntry naming
    the first file or directory that cannot be read.
    """
    root = resolve_run_folder(rundir)
    try:
        tree = Tree(root)
    except OSError as exc:
        raise UnreadableEntry(f"cannot read run folder {root}: {exc.strerror}") from exc
    with tree:
        name = os.fsencode(root.name)
        entries = [_entry(name, tree.root_stat())]
        skipped: list[str] = []
        _walk(tree, b"", name, entries[0].ino, entries, skipped)
    return Manifest(root=root, entries=entries, skipped=skipped)


def _walk(
    tree: Tree, rel_dir: bytes, prefix: bytes, ino: int, entries: list[Entry], skipped: list[str]
) -> None:
    # Recursion depth is the folder depth (about 8 in a run folder), so recursion is fine.
    STOP.check()  # a walk over NFS can take minutes
    shown = os.fsdecode(prefix)
    try:
        fd = tree.dir_fd(rel_dir)
        if os.fstat(fd).st_ino != ino:
            raise RunFolderChanged(f"directory {shown} was replaced while the run folder was scanned")
        with os.scandir(fd) as it:
            children = sorted(os.fsencode(d.name) for d in it)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            raise RunFolderChanged(f"directory {shown} was replaced or removed while the run folder was scanned") from exc
        raise UnreadableEntry(
            f"cannot read directory {shown}: {exc.strerror}; fix its permissions or remove it from the run folder"
        ) from exc
    for child in children:
        rel = rel_dir + b"/" + child if rel_dir else child
        path = prefix + b"/" + child
        try:
            st = tree.lstat(rel)
            kind = kind_of(st.st_mode)
            link = tree.readlink(rel) if kind == SYMLINK else b""
            readable = kind is None or kind == SYMLINK or tree.readable(rel, directory=kind == DIR)
        except FileNotFoundError:
            continue  # removed between the listing and the stat: as if never there
        except OSError as exc:
            raise UnreadableEntry(f"cannot stat {os.fsdecode(path)}: {exc.strerror}") from exc
        if kind is None:
            skipped.append(f"{os.fsdecode(path)} (not a regular file, directory or symlink)")
            continue
        if not readable:
            what = "directory " if kind == DIR else ""
            raise UnreadableEntry(
                f"cannot read {what}{os.fsdecode(path)}: permission denied; fix its permissions and run again"
            )
        entries.append(_entry(path, st, link))
        if kind == DIR:
            _walk(tree, rel, path, st.st_ino, entries, skipped)


def check_unchanged(manifest: Manifest, limit: int = 5) -> None:
    """Raise RunFolderChanged if any entry differs on disk from the manifest."""
    changes: list[str] = []
    for change in manifest.changed_entries():
        changes.append(change)
        if len(changes) >= limit:
            break
    if changes:
        raise RunFolderChanged(f"run folder {manifest.root} changed since its manifest: " + "; ".join(changes))


@dataclass(frozen=True)
class FolderDiff:
    """How a run folder on disk differs from the manifest its archive was made from."""

    new: list[str]
    missing: list[str]
    changed: list[str]

    def __bool__(self) -> bool:
        return bool(self.new or self.missing or self.changed)

    def summary(self, limit: int = 3) -> str:
        """One line: counts, then the first few names of each kind."""
        parts = []
        for label, items in (("new", self.new), ("missing", self.missing), ("changed", self.changed)):
            if items:
                shown = ", ".join(items[:limit]) + (", …" if len(items) > limit else "")
                parts.append(f"{len(items)} {label} ({shown})")
        return "; ".join(parts) if parts else "no difference"


def compare(archived: list[Entry], now: Manifest) -> FolderDiff:
    """What ``now`` (a fresh scan) holds that the archive of ``archived`` does not."""
    before = {e.path: e for e in archived}
    new: list[str] = []
    changed: list[str] = []
    for e in now.entries:
        old = before.pop(e.path, None)
        if old is None:
            new.append(e.display)
            continue
        change = _difference(old, e, is_root=not e.rel)
        if change:
            changed.append(f"{e.display}: {change}")
    missing = [e.display for e in before.values()]
    return FolderDiff(new=new, missing=missing, changed=changed)
