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
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from ..config import AUTO_READ_THREADS, LOCAL_OPEN_SECONDS
from ..errors import RunFolderChanged, RunFolderMissing, UnreadableEntry, UsageError
from ..stopping import STOP
from .exclude import matcher
from .safefs import DIR, FILE, SYMLINK, Tree, kind_of, probe_latency

__all__ = [
    "Entry",
    "FolderDiff",
    "Manifest",
    "check_unchanged",
    "compare",
    "reading_threads",
    "resolve_run_folder",
    "scan_run_folder",
]



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
    excluded: list[str] = field(default_factory=list)  # entries an `exclude` pattern left out (not walked)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def file_count(self) -> int:
        return sum(1 for e in self.entries if e.kind == FILE)

    def files_before(self, index: int) -> int:
        """How many of the entries before ``index`` are files (those a resume has done)."""
        return sum(1 for e in self.entries[:index] if e.kind == FILE)

    @property
    def data_bytes(self) -> int:
        return sum(e.size for e in self.entries if e.kind == FILE)

    def fingerprint(self) -> str:
        """A digest of every entry's archived metadata: equal fingerprints mean equal tar
        bytes for unchanged file contents."""
        return fingerprint(self.entries)

    def changed_entries(self, threads: int = 1) -> Iterator[str]:
        """Entries that differ on disk from the manifest (re-stat, no walk), in manifest
        order; ``threads`` stat them at once (on a share each is a round trip)."""
        chunks = [self.entries[i : i + _CHECK_CHUNK] for i in range(0, len(self.entries), _CHECK_CHUNK)]
        if threads <= 1 or len(chunks) == 1:
            for chunk in chunks:
                yield from _changed(self.root, chunk)
            return
        with ThreadPoolExecutor(threads, thread_name_prefix="check") as pool:
            results = [pool.submit(lambda c: list(_changed(self.root, c)), chunk) for chunk in chunks]
            try:
                for result in results:
                    yield from result.result()
            finally:
                for result in results:
                    result.cancel()


_CHECK_CHUNK = 512  # entries one task re-stats


def _changed(root: Path, entries: list[Entry]) -> Iterator[str]:
    try:
        tree = Tree(root)
    except OSError as exc:
        yield f"{root}: {exc.strerror}"
        return
    with tree:
        for e in entries:
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


def reading_threads(configured: int | None, root: Path) -> int:
    """How many threads read this run folder: as configured, or (None) decided by how
    long opening one of its files takes (see ArchiveOptions.read_threads)."""
    if configured is not None:
        return configured
    return AUTO_READ_THREADS if probe_latency(root) > LOCAL_OPEN_SECONDS else 0


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


def scan_run_folder(rundir: Path | str, threads: int = 1, exclude: Sequence[str] = ()) -> Manifest:
    """Walk ``rundir`` depth-first, children sorted bytewise, and return its manifest.

    Entries whose path below the run folder matches an ``exclude`` pattern (`exclude.py`)
    are left out, unexamined; an excluded directory is not walked.

    ``threads`` directories are listed (and their entries stat'ed) at once: on a share
    every ``lstat`` is a round trip to the filer, and those overlap. The manifest is the
    same whatever ``threads`` is. Raises RunFolderMissing when rundir is not a directory,
    UnreadableEntry naming the first entry (in manifest order) that cannot be read, and
    RunFolderChanged when a directory is swapped or removed while it is walked.
    """
    root = resolve_run_folder(rundir)
    name = os.fsencode(root.name)
    with _Walker(root, threads, matcher(exclude)) as walker:
        root_entry = _entry(name, walker.root_stat)
        listings = walker.walk(root_entry.ino)
    entries = [root_entry]
    skipped: list[str] = []
    excluded: list[str] = []
    _assemble(listings, b"", name, entries, skipped, excluded)
    return Manifest(root=root, entries=entries, skipped=skipped, excluded=excluded)


@dataclass(frozen=True, slots=True)
class _Child:
    name: bytes
    st: os.stat_result | None  # None: not a regular file, directory or symlink
    link: bytes
    readable: bool
    error: str | None = None  # why it could not be stat'ed
    excluded: bool = False  # matched an exclude pattern: not stat'ed, not archived


class _Walker:
    """Lists directories, each on one of ``threads`` threads with a `Tree` of its own."""

    def __init__(self, root: Path, threads: int, excluded: Callable[[bytes], bool] = lambda rel: False) -> None:
        self.root = root
        self.threads = max(1, threads)
        self._excluded = excluded
        self._local = threading.local()
        self._trees: list[Tree] = []
        self._lock = threading.Lock()
        self._euid = os.geteuid()
        self._groups = {os.getegid(), *os.getgroups()}
        try:
            self.root_stat = self._tree().root_stat()
        except OSError as exc:
            raise UnreadableEntry(f"cannot read run folder {root}: {exc.strerror}") from exc

    def __enter__(self) -> _Walker:  # noqa: PYI034 - typing.Self needs Python 3.11; we support 3.10
        return self

    def __exit__(self, *exc: object) -> None:
        for tree in self._trees:
            tree.close()

    def _tree(self) -> Tree:
        tree: Tree | None = getattr(self._local, "tree", None)
        if tree is None:
            tree = Tree(self.root)
            with self._lock:
                self._trees.append(tree)
            self._local.tree = tree
        return tree

    def walk(self, root_ino: int) -> dict[bytes, list[_Child] | BaseException]:
        """Every directory's listing by its path below the root (or what listing it raised)."""
        listings: dict[bytes, list[_Child] | BaseException] = {}
        if self.threads == 1:
            todo = [(b"", root_ino)]
            while todo:
                STOP.check()  # a walk over NFS can take minutes
                rel, ino = todo.pop()
                listings[rel] = result = self._list_or_error(rel, ino)
                todo.extend(_subdirs(rel, result))
            return listings
        with ThreadPoolExecutor(self.threads, thread_name_prefix="walk") as pool:
            pending = {pool.submit(self._list_or_error, b"", root_ino): b""}
            try:
                while pending:
                    done, _ = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                    STOP.check()
                    for future in done:
                        rel = pending.pop(future)
                        listings[rel] = result = future.result()
                        for sub, ino in _subdirs(rel, result):
                            pending[pool.submit(self._list_or_error, sub, ino)] = sub
            finally:
                for future in pending:
                    future.cancel()
        return listings

    def _may_read(self, st: os.stat_result, directory: bool) -> bool:
        """What the permission bits say, without a syscall (on a share ``access`` is one
        more round trip per file). Only a "no" is asked of the kernel, which also knows
        ACLs that may grant more than the bits."""
        need = 5 if directory else 4  # r-x, r--
        if st.st_uid == self._euid:
            bits = st.st_mode >> 6
        elif st.st_gid in self._groups:
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        return bits & need == need

    def _list_or_error(self, rel_dir: bytes, ino: int) -> list[_Child] | BaseException:
        try:
            return self._list(rel_dir, ino)
        except (OSError, RunFolderChanged) as exc:
            return exc

    def _list(self, rel_dir: bytes, ino: int) -> list[_Child]:
        tree = self._tree()
        fd = tree.dir_fd(rel_dir)
        if os.fstat(fd).st_ino != ino:
            raise RunFolderChanged("replaced")
        with os.scandir(fd) as it:
            names = sorted(os.fsencode(d.name) for d in it)
        children = []
        for name in names:
            if self._excluded(rel_dir + b"/" + name if rel_dir else name):
                children.append(_Child(name, None, b"", True, excluded=True))
                continue
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                kind = kind_of(st.st_mode)
                if kind is None:
                    children.append(_Child(name, None, b"", True))
                    continue
                link = os.readlink(name, dir_fd=fd) if kind == SYMLINK else b""
                readable = kind == SYMLINK or self._may_read(st, kind == DIR) or os.access(
                    name, os.R_OK | (os.X_OK if kind == DIR else 0), dir_fd=fd
                )
            except FileNotFoundError:
                continue  # removed between the listing and the stat: as if never there
            except OSError as exc:
                children.append(_Child(name, None, b"", False, exc.strerror or str(exc)))
                continue
            children.append(_Child(name, st, link, readable))
        return children


def _subdirs(rel: bytes, listing: list[_Child] | BaseException) -> list[tuple[bytes, int]]:
    if isinstance(listing, BaseException):
        return []
    return [
        (rel + b"/" + c.name if rel else c.name, c.st.st_ino)
        for c in listing
        if c.st is not None and c.readable and stat.S_ISDIR(c.st.st_mode)
    ]


def _assemble(
    listings: dict[bytes, list[_Child] | BaseException], rel_dir: bytes, prefix: bytes,
    entries: list[Entry], skipped: list[str], excluded: list[str],
) -> None:
    """Depth-first, bytewise: the order of the serial walk, whatever order the listings
    came in. The first problem in that order is the one raised."""
    # Recursion depth is the folder depth (about 8 in a run folder), so recursion is fine.
    listing = listings[rel_dir]
    shown = os.fsdecode(prefix)
    if isinstance(listing, RunFolderChanged) or (
        isinstance(listing, OSError) and listing.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT)
    ):
        raise RunFolderChanged(f"directory {shown} was replaced or removed while the run folder was scanned")
    if isinstance(listing, OSError):
        raise UnreadableEntry(
            f"cannot read directory {shown}: {listing.strerror}; fix its permissions or remove it from the run folder"
        )
    assert not isinstance(listing, BaseException)
    for child in listing:
        path = prefix + b"/" + child.name
        if child.excluded:
            excluded.append(os.fsdecode(path))
            continue
        if child.error is not None:
            raise UnreadableEntry(f"cannot stat {os.fsdecode(path)}: {child.error}")
        if child.st is None:
            skipped.append(f"{os.fsdecode(path)} (not a regular file, directory or symlink)")
            continue
        kind = kind_of(child.st.st_mode)
        if not child.readable:
            what = "directory " if kind == DIR else ""
            raise UnreadableEntry(
                f"cannot read {what}{os.fsdecode(path)}: permission denied; fix its permissions and run again"
            )
        entries.append(_entry(path, child.st, child.link))
        if kind == DIR:
            _assemble(listings, rel_dir + b"/" + child.name if rel_dir else child.name, path, entries, skipped,
                      excluded)


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
