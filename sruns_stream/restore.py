"""`verify` and `restore`: read an archive back in one streaming pass and check every member.

Both read the archive where it lives (GCS or a local path, see `archive_source`) without
writing it to disk: stored bytes → ISA-L inflate (gzip CRC32 and length checked) → tar
headers → each member's size and crc32c, compared with the ``<run>.manifest.tsv`` written
beside the archive. What differs is reported as a list of problems naming the member; the
CLI exits 0 when there are none and 1 otherwise.

`verify_archive` only reads. With ``against`` it also compares every member with the run
folder on disk (type, size, crc32c, symlink target) and lists what is on disk but not in
the archive. The run folder is read from a directory fd, one component at a time and
without following links: a member name with ``..`` or an absolute one is reported, never
joined to the folder; a symlinked directory in it is a difference, never traversed; only
regular files are opened (O_NONBLOCK, so a planted FIFO cannot hang it).

`restore_archive` extracts into DEST, refusing anything that could write outside it:
absolute names, ``..`` components, device files and fifos, hard links to anything but a
file this restore wrote, and any member below a symlink (one in the archive, or one found
in DEST). Everything is created relative to directory fds with O_NOFOLLOW (see
`_Extractor`), so nothing is written through a link and path length (PATH_MAX) does not
matter. Symlinks are data: restored as archived, absolute or pointing out of DEST
included, but only after every file and directory is in place; ``no_outside_links``
(--no-outside-links, for archives from elsewhere) then removes and reports those that are
absolute or resolve outside DEST. A member whose type or size differs from its manifest
row is refused before a byte of it is written. Existing files are never overwritten
without ``force``. Each file is written to a temporary name in its own directory, checked
against the manifest, and only then renamed into place: a file that does not match is
removed and reported, so whatever stands under a final name has been checked. Directory
modes and mtimes are set last, deepest first, so that filling them does not disturb them.
Ownership is not restored (restores run as an ordinary user), and set-uid/set-gid/sticky
bits are dropped from files: a restore never creates privileged files.

A damaged stream (corrupt gzip, truncation, a hostile tar header) ends the walk; it is
reported first, as "damaged archive: …".
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from fnmatch import translate
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import google_crc32c

from .archive_source import (
    PIECE,
    ArchiveDamaged,
    ArchiveSource,
    GzipLayer,
    Member,
    ResumableReader,
    TarMembers,
    resolve_source,
)
from .errors import DestinationNotWritable, DiskFull, RunFolderMissing, UsageError
from .manifest_tsv import ManifestRow
from .progress import Progress, human_bytes
from .stopping import STOP

if TYPE_CHECKING:
    from .journal import Journal

__all__ = ["MAX_PROBLEMS", "RestoreReport", "VerifyReport", "restore_archive", "verify_archive"]

# Problems kept in a report: the first ones say what is wrong; a truncated archive would
# otherwise list every missing member. ``problem_count`` still counts them all.
MAX_PROBLEMS = 20

_KIND_NAMES = {
    "f": "file", "d": "directory", "l": "symlink", "h": "hard link", "c": "character device",
    "b": "block device", "p": "fifo", "?": "member of an unsupported type",
}


def _show(name: str) -> str:
    """A member name for a one-line message: as it is when printable, else quoted."""
    return name if name.isprintable() else repr(name)


@dataclass
class _Problems:
    items: list[str] = field(default_factory=list)
    count: int = 0

    def add(self, text: str) -> None:
        self.count += 1
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(text)

    def first(self, text: str) -> None:
        """A problem that explains the others (a damaged stream): shown first."""
        self.count += 1
        self.items.insert(0, text)
        del self.items[MAX_PROBLEMS:]


@dataclass
class VerifyReport:
    """What `verify_archive` found. ``ok`` is True only when there is no problem at all."""

    source: str
    manifest: str | None
    against: str | None = None
    ok: bool = False
    members: int = 0
    files: int = 0
    data_bytes: int = 0
    archive_bytes: int = 0  # stored bytes read
    matched: int = 0  # members equal to their manifest row
    mismatched: int = 0
    missing: int = 0  # in the manifest, not in the archive
    extra: int = 0  # in the archive, not in the manifest
    disk_mismatched: int = 0
    disk_extra: int = 0  # on disk, not in the archive
    damaged: bool = False  # the stream stopped early: corrupt or truncated
    reconnects: int = 0
    seconds: float = 0.0
    problem_count: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.ok:
            against = f" and {self.against}" if self.against else ""
            return (
                f"OK: {self.source}: {self.members} members ({self.files} files, {human_bytes(self.data_bytes)}) "
                f"match {self.manifest}{against}"
            )
        return f"FAILED: {self.source}: {_counted(self.problem_count)}; first: {self.problems[0]}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RestoreReport:
    """What `restore_archive` did. ``ok`` is True only when there is no problem at all."""

    source: str
    manifest: str | None
    dest: str
    ok: bool = False
    members: int = 0
    files: int = 0
    dirs: int = 0
    links: int = 0
    data_bytes: int = 0
    checked: int = 0  # files whose crc32c matched the manifest before they were renamed into place
    excluded: int = 0  # members left out by --include
    refused: int = 0  # unsafe members, never written
    failed: int = 0  # files removed because they did not match the manifest
    existing: int = 0  # not written: something already stands there (no --force)
    missing: int = 0  # in the manifest (and selected), not in the archive
    damaged: bool = False
    archive_bytes: int = 0
    reconnects: int = 0
    seconds: float = 0.0
    problem_count: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.ok:
            left_out = f", {self.excluded} members left out by --include" if self.excluded else ""
            checked = f"each file checked against {self.manifest}" if self.manifest else "unchecked: no manifest"
            return (
                f"OK: restored {self.files} files, {self.dirs} directories, {self.links} links "
                f"({human_bytes(self.data_bytes)}) from {self.source} into {self.dest}{left_out}; {checked}"
            )
        return f"FAILED: {self.source} -> {self.dest}: {_counted(self.problem_count)}; first: {self.problems[0]}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _counted(n: int) -> str:
    return f"{n} problem" + ("" if n == 1 else "s")


# --- the stream shared by both ----------------------------------------------------------


class _Stream:
    """An archive's members, read from its stored bytes: reader → (gzip) → tar."""

    def __init__(self, src: ArchiveSource, progress: Progress) -> None:
        self.src = src
        self.reader = ResumableReader(src.data, note=progress.note)
        self.gzip = GzipLayer(self.reader.read_piece, lambda: self.reader.pos, src.location) if src.gzip else None
        inner = self.gzip.read_piece if self.gzip is not None else self.reader.read_piece
        self.raw = 0

        def pull() -> bytes:
            STOP.check()  # every piece: a signal stops a verify or restore here, cleanly
            piece = inner()
            self.raw += len(piece)
            progress.update(self.reader.pos, self.raw)
            return piece

        self.members = TarMembers(pull)
        # The bar counts stored bytes read out of the object's size (the only total known
        # before the end); its second figure is the tar bytes they inflated to.
        progress.start(src.data.size, 0)

    def finish(self, problems: _Problems, damaged: bool) -> None:
        """Stream-level problems, once the walk is over."""
        self.reader.close()
        if self.gzip is not None:
            for problem in self.gzip.problems:
                problems.add(problem)
        if self.members.trailing_garbage:
            problems.add(
                f"{self.src.location}: {self.members.trailing_garbage} non-zero bytes after the end of the tar stream"
            )
        stored = self.src.stored_crc32c
        if not damaged and stored is not None and self.reader.pos == self.reader.size and self.reader.crc32c != stored:
            problems.add(
                f"{self.src.location}: the bytes read have crc32c {self.reader.crc32c:08x}, but the object's is "
                f"{stored:08x}: the download was corrupted; run again"
            )


# --- walking a directory tree through fds, never through a link -------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in for a file after its lstat opens at once instead of
# waiting for a writer; fstat then shows it is not a file, and it is never read.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class _NotADir(Exception):
    """Internal: a directory on the way to a member is a symlink (``link``: its target)
    or something else that is not a directory."""

    def __init__(self, shown: str, link: str | None) -> None:
        super().__init__(shown)
        self.shown = shown
        self.link = link


def _open_dirs(top_fd: int, parts: list[str], create: Callable[[int, str, str], None] | None = None) -> int:
    """A new fd for ``top_fd``/``parts``, opened one component at a time with O_NOFOLLOW:
    a symlink anywhere on the way raises _NotADir instead of being followed, so what the
    fd names is inside ``top_fd``'s tree, whatever the links say and however long the
    full path is. A missing component is FileNotFoundError, or made by ``create(dir_fd,
    name, shown)``."""
    fd = os.dup(top_fd)
    try:
        for i, part in enumerate(parts):
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create is None:
                    raise
                create(fd, part, "/".join(parts[: i + 1]))
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                link = os.readlink(part, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else None
                raise _NotADir("/".join(parts[: i + 1]), link) from None
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _fd_crc32c(fd: int) -> int:
    crc = 0
    while piece := os.read(fd, PIECE):
        crc = google_crc32c.extend(crc, piece)
    return crc


def _shape_vs_row(member: Member, row: ManifestRow) -> list[str]:
    """What the manifest rules out before a member's data is read: another type, another
    size, another link target."""
    if member.kind != row.kind:
        kinds = (_KIND_NAMES.get(member.kind, member.kind), _KIND_NAMES.get(row.kind, row.kind))
        return [f"a {kinds[0]} in the archive, a {kinds[1]} in the manifest"]
    if member.kind == "f" and member.size != row.size:
        return [f"{member.size} bytes in the archive, {row.size} in the manifest"]
    if member.kind == "l" and member.linkname != row.link:
        return [f"links to {member.linkname!r} in the archive, to {row.link!r} in the manifest"]
    return []


def _member_vs_row(member: Member, crc: int | None, row: ManifestRow) -> list[str]:
    """How a member differs from its manifest row (empty when it does not)."""
    diffs = _shape_vs_row(member, row)
    if member.kind != row.kind:
        return diffs
    if member.kind == "f" and crc is not None and row.crc32c is not None and crc != row.crc32c:
        diffs.append(f"crc32c {crc:08x} in the archive, {row.crc32c:08x} in the manifest")
    if member.mode & 0o7777 != row.mode:
        diffs.append(f"mode {member.mode & 0o7777:04o} in the archive, {row.mode:04o} in the manifest")
    if member.mtime != row.mtime:
        diffs.append(f"mtime {member.mtime} in the archive, {row.mtime} in the manifest")
    return diffs


def _content_vs_row(member: Member, crc: int, row: ManifestRow) -> list[str]:
    """What makes a restored file's bytes differ from its manifest row (mode and mtime
    are the archive's to set, not a reason to reject the bytes)."""
    if row.kind != "f":
        return [f"a file in the archive, a {_KIND_NAMES.get(row.kind, row.kind)} in the manifest"]
    bad = []
    if member.size != row.size:
        bad.append(f"{member.size} bytes in the archive, {row.size} in the manifest")
    if row.crc32c is not None and crc != row.crc32c:
        bad.append(f"crc32c {crc:08x} in the archive, {row.crc32c:08x} in the manifest")
    return bad


def _disk_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISREG, "f"), (stat.S_ISDIR, "d"), (stat.S_ISLNK, "l"), (stat.S_ISFIFO, "p"),
                       (stat.S_ISCHR, "c"), (stat.S_ISBLK, "b")):
        if test(mode):
            return kind
    return "?"


def _member_vs_disk(member: Member, crc: int | None, rundir_fd: int, parts: list[str]) -> list[str]:
    """How a member differs from what is at ``parts`` under the run folder (``rundir_fd``),
    looked at without following any link: a symlinked directory on the way is a difference,
    never a way out of the run folder."""
    try:
        parent = _open_dirs(rundir_fd, parts[:-1])
    except FileNotFoundError:
        return ["not on disk"]
    except _NotADir as exc:
        if exc.link is not None:
            return [f"its directory {exc.shown} is a symlink to {exc.link!r} on disk: not followed"]
        return [f"{exc.shown} is not a directory on disk"]
    except OSError as exc:
        return [f"cannot be read on disk ({exc.strerror})"]
    try:
        return _leaf_vs_disk(member, crc, parent, parts[-1] if parts else None)
    finally:
        os.close(parent)


def _leaf_vs_disk(member: Member, crc: int | None, parent: int, leaf: str | None) -> list[str]:
    try:
        st = os.fstat(parent) if leaf is None else os.stat(leaf, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return ["not on disk"]
    except OSError as exc:
        return [f"cannot be read on disk ({exc.strerror})"]
    kind = _disk_kind(st.st_mode)
    if kind != member.kind:
        return [f"a {_KIND_NAMES.get(member.kind, member.kind)} in the archive, a {_KIND_NAMES[kind]} on disk"]
    if leaf is None:
        return []
    if kind == "f":
        if st.st_size != member.size:
            return [f"{member.size} bytes in the archive, {st.st_size} on disk"]
        try:
            fd = os.open(leaf, _READ_FLAGS, dir_fd=parent)
        except OSError as exc:
            return [f"cannot be read on disk ({exc.strerror})"]
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return ["not a regular file on disk (it was replaced while verify ran)"]
            disk_crc = _fd_crc32c(fd)
        except OSError as exc:
            return [f"cannot be read on disk ({exc.strerror})"]
        finally:
            os.close(fd)
        if crc is not None and disk_crc != crc:
            return [f"crc32c {crc:08x} in the archive, {disk_crc:08x} on disk"]
    if kind == "l":
        target = os.readlink(leaf, dir_fd=parent)
        if target != member.linkname:
            return [f"links to {member.linkname!r} in the archive, to {target!r} on disk"]
    return []


# --- verify -----------------------------------------------------------------------------


def verify_archive(
    source: str, *, against: Path | None, journal: Journal | None, collection: str | None, progress: Progress,
) -> VerifyReport:
    """Check an archive (run name, gs:// URL or path) against its manifest, and ``against``
    a run folder if given, reading it once as a stream. Raises SrunsError only when the
    archive cannot be found or read; everything it finds wrong is in the report."""
    t0 = time.monotonic()
    try:
        rundir_fd = None
        if against is not None:
            try:
                # The run folder itself as the user named it (a symlinked run folder is
                # fine); nothing below it is reached through a link.
                rundir_fd = os.open(against, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                raise RunFolderMissing(
                    f"--against {against} is not a directory: give the run folder the archive was made from"
                ) from None
        try:
            src = resolve_source(source, journal, collection)
            try:
                report = _verify(src, against, rundir_fd, progress)
            finally:
                src.close()
        finally:
            if rundir_fd is not None:
                os.close(rundir_fd)
    finally:
        progress.close()
    report.seconds = time.monotonic() - t0
    return report


def _verify(src: ArchiveSource, against: Path | None, rundir_fd: int | None, progress: Progress) -> VerifyReport:
    manifest = src.read_manifest(progress.note)
    report = VerifyReport(
        source=src.location,
        manifest=src.manifest_location if manifest is not None else None,
        against=str(against) if against is not None else None,
    )
    problems = _Problems()
    if manifest is None:
        problems.add(f"no manifest at {src.manifest_location}: the members cannot be checked one by one")
    expected = dict(manifest or {})
    seen: set[str] = set()
    top = ""  # the archive's top directory: the run folder's name when it was archived
    stream = _Stream(src, progress)
    try:
        for member in stream.members:
            top = top or (_safe_name(member.name)[0] or "").split("/", 1)[0]
            _verify_member(member, stream.members, expected, seen, manifest is not None, against, rundir_fd,
                           report, problems)
    except ArchiveDamaged as exc:
        report.damaged = True
        problems.first(f"damaged archive: {exc}")
    finally:
        stream.reader.close()
    stream.finish(problems, report.damaged)
    for row in expected.values():
        report.missing += 1
        problems.add(f"{_show(row.path)}: listed in the manifest, missing from the archive")
    if against is not None and rundir_fd is not None and top:
        _disk_extras(against, rundir_fd, top, seen, report, problems)
    report.archive_bytes = stream.reader.pos
    report.reconnects = stream.reader.reconnects
    report.problem_count, report.problems = problems.count, problems.items
    report.ok = problems.count == 0
    return report


def _verify_member(
    member: Member, tar: TarMembers, expected: dict[str, ManifestRow], seen: set[str], have_manifest: bool,
    against: Path | None, rundir_fd: int | None, report: VerifyReport, problems: _Problems,
) -> None:
    report.members += 1
    crc = None
    if member.kind == "f":
        crc = 0
        for piece in tar.data():
            crc = google_crc32c.extend(crc, piece)
        report.files += 1
        report.data_bytes += member.size
    name = _show(member.name)
    if member.name in seen:
        problems.add(f"{name}: appears twice in the archive")
    seen.add(member.name)
    row = expected.pop(member.name, None)
    if have_manifest and row is None:
        report.extra += 1
        problems.add(f"{name}: in the archive, not in the manifest")
    elif row is not None:
        diffs = _member_vs_row(member, crc, row)
        if diffs:
            report.mismatched += 1
            problems.add(f"{name}: {'; '.join(diffs)}")
        else:
            report.matched += 1
    if against is not None and rundir_fd is not None:
        rel, why = _safe_name(member.name)
        if why or rel is None:
            # Joined to the run folder, "RUN/../x" or "/etc/x" would be read outside it.
            report.disk_mismatched += 1
            problems.add(f"{name}: unsafe name: not compared with the disk")
            return
        parts = rel.split("/")[1:]  # the first is the run folder's own name
        diffs = _member_vs_disk(member, crc, rundir_fd, parts)
        if diffs:
            report.disk_mismatched += 1
            problems.add(f"{name}: {'; '.join(diffs)} ({os.path.join(against, *parts)})")


def _disk_names(fd: int, prefix: str) -> Iterator[str]:
    """Every name under the directory ``fd``, sorted, descending into real directories only."""
    with os.scandir(fd) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        rel = prefix + entry.name
        yield rel
        if entry.is_dir(follow_symlinks=False):
            try:
                sub = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue  # replaced meanwhile, or unreadable: its members say so
            try:
                yield from _disk_names(sub, rel + "/")
            finally:
                os.close(sub)


def _disk_extras(
    rundir: Path, rundir_fd: int, top: str, seen: set[str], report: VerifyReport, problems: _Problems,
) -> None:
    """What the run folder holds that the archive does not."""
    for rel in _disk_names(rundir_fd, ""):
        name = f"{top}/{rel}"
        if name not in seen:
            report.disk_extra += 1
            problems.add(f"{_show(name)}: on disk ({os.path.join(rundir, rel)}), not in the archive")


# --- restore ----------------------------------------------------------------------------


def _safe_name(name: str) -> tuple[str | None, str | None]:
    """(relative path, None) for a name that stays inside DEST, else (None, why not)."""
    if not name:
        return None, "has an empty name"
    if "\0" in name:
        return None, "has a NUL byte in its name"
    if name.startswith("/"):
        return None, "is an absolute path"
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None, "has a '..' component"
    return "/".join(parts), None


class _Selector:
    """--include: fnmatch patterns on member paths; a pattern matching a directory
    selects everything below it. Remembers which patterns matched something."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = [p.rstrip("/") or p for p in patterns]
        self._regexes = [re.compile(translate(p)) for p in self.patterns]
        self.used = [False] * len(self.patterns)

    def _hits(self, name: str) -> list[int]:
        parts = name.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return [i for i, rx in enumerate(self._regexes) if any(rx.match(p) for p in prefixes)]

    def matches(self, name: str) -> bool:
        return not self.patterns or bool(self._hits(name))

    def wanted(self, name: str) -> bool:
        if not self.patterns:
            return True
        hits = self._hits(name)
        for i in hits:
            self.used[i] = True
        return bool(hits)


class _Refused(Exception):
    """Internal: this member is not written; the message says why."""


def _ns(mtime: int) -> tuple[int, int]:
    return (mtime * 1_000_000_000,) * 2


class _Extractor:
    """Writes members under DEST, one at a time, as they stream by.

    Everything is created relative to directory fds reached from DEST one component at a
    time with O_NOFOLLOW (`_open_dirs`), and files are opened O_EXCL|O_NOFOLLOW: nothing
    is ever written, created or renamed through a symlink, whether the archive made it
    or it was planted in DEST, and the length of the full path does not matter. Symlinks
    are created last, once every file and directory is in place, and no member below a
    symlink member is written at all; so a link, even one pointing out of DEST, is only
    data. Hard links join only files this restore wrote.
    """

    def __init__(
        self, dest: Path, force: bool, manifest: dict[str, ManifestRow] | None, no_outside_links: bool,
        report: RestoreReport, problems: _Problems,
    ) -> None:
        self.dest = dest
        self.root = os.path.realpath(dest)
        self.force = force
        self.manifest = manifest
        self.no_outside_links = no_outside_links
        self.report = report
        self.problems = problems
        try:
            # DEST as the user named it (a symlinked DEST is their choice); below it, no link is followed.
            self.root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise DestinationNotWritable(f"cannot open {dest}: {exc.strerror}") from exc
        try:
            self.name_max = os.fpathconf(self.root_fd, "PC_NAME_MAX")
        except OSError:
            self.name_max = 255
        self.dir_meta: dict[str, tuple[int, int]] = {}  # every directory member: (mode, mtime)
        self.finish_dirs: dict[str, None] = {}  # directories whose mode and mtime are set last
        self.symlinks: list[tuple[Member, str]] = []  # created at the end, in archive order
        self.symlink_names: set[str] = set()  # nothing is written below these
        self.restored: set[str] = set()  # files this restore wrote: the only hard-link targets
        self._parent: tuple[str, int] | None = None  # the last parent directory opened
        self._seq = 0

    def close(self) -> None:
        self._drop_parent()
        os.close(self.root_fd)

    def _os_error(self, exc: OSError, path: str) -> Exception:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFull(f"no space left writing {path}: free space under {self.dest} and run again with --force")
        return DestinationNotWritable(f"cannot write {path}: {exc.strerror}; check {self.dest} and its permissions")

    def _path(self, rel: str) -> str:
        return os.path.join(self.dest, rel)

    # -- directories on the way

    def _made(self, fd: int, name: str, shown: str) -> None:
        os.mkdir(name, dir_fd=fd)
        if shown in self.dir_meta:  # its member was left out by --include: still its mode
            self.finish_dirs[shown] = None

    def _open_parent(self, parts: list[str]) -> int:
        """A new fd for the directory ``parts`` under DEST, made as needed; _Refused when a
        symlink or a non-directory stands on the way."""
        try:
            return _open_dirs(self.root_fd, parts, self._made)
        except _NotADir as exc:
            if exc.link is not None:
                raise _Refused(f"is below {exc.shown}, a symlink to {exc.link!r} in {self.dest}: links are not followed") from None
            raise _Refused(f"is below {exc.shown}, which is not a directory in {self.dest}") from None

    def _parent_fd(self, parts: list[str]) -> int:
        """As `_open_parent`, kept open for the next member: members come sorted, so most
        share their predecessor's directory. (A cached fd stays right: only directories are
        ever opened, and restore never replaces a directory.)"""
        key = "/".join(parts)
        if self._parent is not None and self._parent[0] == key:
            return self._parent[1]
        fd = self._open_parent(parts)
        self._drop_parent()
        self._parent = (key, fd)
        return fd

    def _drop_parent(self) -> None:
        if self._parent is not None:
            os.close(self._parent[1])
            self._parent = None

    # -- members

    def member(self, member: Member, tar: TarMembers, rel: str) -> None:
        """Restore one wanted member whose name is safe (``rel``)."""
        if member.kind in ("c", "b", "p"):
            raise _Refused(f"is a {_KIND_NAMES[member.kind]}: device files and fifos are never restored")
        if member.kind == "?":
            raise _Refused(f"has tar type {member.typeflag!r}, which restore does not handle")
        if not rel:
            if member.kind == "d":
                return  # "./": DEST itself
            raise _Refused("names DEST itself")
        parts = rel.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in self.symlink_names:
                raise _Refused(f"is below {'/'.join(parts[:i])}, a symlink in the archive: nothing is written through a link")
        long = next((p for p in parts if len(os.fsencode(p)) > self.name_max), None)
        if long is not None:
            raise _Refused(self._too_long(long))
        row = self.manifest.get(member.name) if self.manifest is not None else None
        if row is not None and member.kind != "h":
            bad = _shape_vs_row(member, row)
            if bad:
                self.report.failed += 1
                self.problems.add(f"{_show(member.name)}: {'; '.join(bad)}: not restored")
                return
        if member.kind == "l":
            if not member.linkname or "\0" in member.linkname:
                raise _Refused(f"is a symlink to {member.linkname!r}, which no file system can hold")
            self.symlinks.append((member, rel))
            self.symlink_names.add(rel)
            return
        try:
            parent = self._parent_fd(parts[:-1])
            if member.kind == "f":
                self._file(member, tar, parent, parts[-1], rel, row)
            elif member.kind == "d":
                self._dir(parent, parts[-1], rel)
            else:
                self._hardlink(member, parent, parts[-1], rel)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise _Refused(self._too_long(max(parts, key=len))) from None
            raise self._os_error(exc, self._path(rel)) from exc

    def _too_long(self, part: str) -> str:
        return (
            f"has a name component of {len(os.fsencode(part))} bytes ({_show(part[:40])}…), longer than the "
            f"{self.name_max} bytes (NAME_MAX) the file system under {self.dest} allows"
        )

    def _in_the_way(self, parent: int, name: str, rel: str) -> bool:
        """True (and reported) when something stands at ``name`` that must stay."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not self.force:
            self.report.existing += 1
            self.problems.add(f"{self._path(rel)} already exists: not overwritten (use --force to overwrite)")
            return True
        if stat.S_ISDIR(st.st_mode):
            self.report.existing += 1
            self.problems.add(f"{self._path(rel)} is a directory: not replaced")
            return True
        return False

    def _temp_name(self) -> str:
        # Short and ours: member names can be 255 bytes long already.
        self._seq += 1
        return f".sruns-restore.{os.getpid()}.{self._seq}"

    def _file(self, member: Member, tar: TarMembers, parent: int, name: str, rel: str, row: ManifestRow | None) -> None:
        if self._in_the_way(parent, name, rel):
            return
        tmp = self._temp_name()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=parent)
        placed = False
        try:
            crc = 0
            with open(fd, "wb", closefd=False) as f:
                for piece in tar.data():
                    f.write(piece)
                    crc = google_crc32c.extend(crc, piece)
            if row is not None:
                bad = _content_vs_row(member, crc, row)
                if bad:
                    self.report.failed += 1
                    self.problems.add(f"{_show(member.name)}: {'; '.join(bad)}: removed, not restored")
                    return
                self.report.checked += 1
            elif self.manifest is not None:
                self.problems.add(f"{_show(member.name)}: not in the manifest: restored unchecked")
            os.fchmod(fd, member.mode & 0o777)
            os.utime(fd, ns=_ns(member.mtime))
            os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
            placed = True
        finally:
            os.close(fd)
            if not placed:  # mismatched, failed or interrupted: no temporary file stays behind
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=parent)
        self.restored.add(rel)
        self.report.files += 1
        self.report.data_bytes += member.size

    def _dir(self, parent: int, name: str, rel: str) -> None:
        try:
            st: os.stat_result | None = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            if not self.force:
                self.report.existing += 1
                self.problems.add(f"{self._path(rel)} already exists and is not a directory: not replaced (use --force)")
                return
            os.unlink(name, dir_fd=parent)  # a file or a link: removing it follows nothing
            st = None
        if st is None:
            # Owner-only while it fills: a read-only mode would stop us writing its contents.
            os.mkdir(name, 0o700, dir_fd=parent)
        self.finish_dirs[rel] = None
        self.report.dirs += 1

    def _place(self, parent: int, name: str, rel: str, make: Callable[[str], None]) -> bool:
        """Make a link as ``name`` in ``parent`` via ``make(name)``, replacing what is there
        (not a directory) with --force: made under a temporary name, then renamed over it."""
        if self._in_the_way(parent, name, rel):
            return False
        try:
            os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            make(name)
        else:
            tmp = self._temp_name()
            make(tmp)
            os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
            with contextlib.suppress(FileNotFoundError):  # rename does nothing between links to one file
                os.unlink(tmp, dir_fd=parent)
        self.report.links += 1
        return True

    def _hardlink(self, member: Member, parent: int, name: str, rel: str) -> None:
        target, why = _safe_name(member.linkname)
        if why or not target:
            raise _Refused(f"is a hard link to {member.linkname!r}, which {why or 'names DEST itself'}")
        if target not in self.restored:
            self.problems.add(f"{_show(member.name)}: hard link to {member.linkname!r}, which was not restored")
            return
        tparts = target.split("/")
        source = self._open_parent(tparts[:-1])
        try:
            st = os.stat(tparts[-1], dir_fd=source, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                self.problems.add(f"{_show(member.name)}: hard link to {member.linkname!r}, which is no longer a file")
                return
            self._place(parent, name, rel, lambda path: os.link(
                tparts[-1], path, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False))
        finally:
            os.close(source)

    # -- once everything else is written

    def make_symlinks(self) -> None:
        """The symlinks, now that no file or directory remains to be written."""
        self._drop_parent()
        made = []
        for member, rel in self.symlinks:
            parts = rel.split("/")
            try:
                parent = self._open_parent(parts[:-1])
            except _Refused as exc:
                self.report.refused += 1
                self.problems.add(f"refused {_show(member.name)}: it {exc}")
                continue
            except OSError as exc:
                raise self._os_error(exc, self._path(rel)) from exc
            try:
                if self._place(parent, parts[-1], rel, partial(_symlink_at, member.linkname, parent)):
                    os.utime(parts[-1], ns=_ns(member.mtime), dir_fd=parent, follow_symlinks=False)
                    made.append((member, rel))
            except OSError as exc:
                raise self._os_error(exc, self._path(rel)) from exc
            finally:
                os.close(parent)
        if self.no_outside_links:
            self._remove_outside_links(made)

    def _remove_outside_links(self, made: list[tuple[Member, str]]) -> None:
        """--no-outside-links: judged once all links exist (a -> b -> outside only leaves
        DEST once b is there), then the offending ones are removed."""
        offending = []
        last = {rel: member for member, rel in made}  # a name made twice (--force) holds the later link
        for rel, member in last.items():
            if os.path.isabs(member.linkname):
                offending.append((member, rel, f"is a symlink to the absolute path {member.linkname!r}"))
            elif self._leads_out(rel):
                offending.append((member, rel, f"is a symlink to {member.linkname!r}, which resolves outside {self.dest}"))
        for member, rel, why in offending:
            parts = rel.split("/")
            try:
                parent = self._open_parent(parts[:-1])
            except _Refused:
                continue  # cannot happen: it was just made there
            try:
                os.unlink(parts[-1], dir_fd=parent)  # the link itself: unlink follows nothing
            except OSError as exc:
                raise self._os_error(exc, self._path(rel)) from exc
            finally:
                os.close(parent)
            self.report.links -= 1
            self.report.refused += 1
            self.problems.add(f"refused {_show(member.name)}: it {why}: removed (--no-outside-links)")

    def _leads_out(self, rel: str) -> bool:
        """Whether the link at ``rel`` resolves outside DEST, following links as the kernel
        would (including links that were in DEST before), but never looking outside it:
        the moment the path leaves DEST, the answer is yes."""
        pending = list(reversed(rel.split("/")))
        done: list[str] = []
        hops = 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not done:
                    return True
                done.pop()
                continue
            path = os.path.join(self.root, *done, part)
            try:
                st = os.lstat(path)  # ``done`` holds no link: this follows none
            except (FileNotFoundError, NotADirectoryError):
                done.append(part)  # dangling from here: the rest is resolved as written
                continue
            except OSError:
                return True  # cannot be judged (e.g. past PATH_MAX): refused rather than trusted
            if not stat.S_ISLNK(st.st_mode):
                done.append(part)
                continue
            hops += 1
            if hops > 40:  # a loop (ELOOP): it resolves nowhere, so not outside either
                return False
            target = os.readlink(path)
            if target.startswith("/"):
                if target != self.root and not target.startswith(self.root + "/"):
                    return True
                done, target = [], target[len(self.root) :]
            pending.extend(reversed(target.split("/")))
        return False

    def finish(self) -> None:
        """Directory modes and mtimes, deepest first, once their contents are in place."""
        self._drop_parent()
        for rel in sorted(self.finish_dirs, key=lambda r: r.count("/"), reverse=True):
            meta = self.dir_meta.get(rel)
            if meta is None:
                continue
            mode, mtime = meta
            try:
                fd = _open_dirs(self.root_fd, rel.split("/"))
            except (OSError, _NotADir):
                continue  # replaced by a link, or gone: not ours to change
            try:
                os.fchmod(fd, mode & 0o7777 & ~stat.S_ISUID)
                os.utime(fd, ns=_ns(mtime))
            except OSError as exc:
                raise self._os_error(exc, self._path(rel)) from exc
            finally:
                os.close(fd)


def _symlink_at(link: str, parent: int, name: str) -> None:
    os.symlink(link, name, dir_fd=parent)


def _exists_below(root_fd: int, rel: str) -> bool:
    """Whether something stands at ``rel`` under ``root_fd``, looked up without following links."""
    parts = rel.split("/")
    try:
        parent = _open_dirs(root_fd, parts[:-1])
    except (OSError, _NotADir):
        return False
    try:
        os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        return True
    except OSError:
        return False
    finally:
        os.close(parent)


def _refuse_existing(manifest: dict[str, ManifestRow], selector: _Selector, dest: Path) -> None:
    """Before anything is read or written: refuse when files to restore already exist."""
    try:
        root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return  # no DEST yet: nothing in it
    existing = []
    try:
        for row in manifest.values():
            if row.kind == "d" or not selector.matches(row.path):
                continue
            rel, why = _safe_name(row.path)
            if rel and not why and _exists_below(root_fd, rel):
                existing.append(os.path.join(dest, rel))
    finally:
        os.close(root_fd)
    if existing:
        raise UsageError(
            f"{len(existing)} of the files to restore already exist, e.g. {existing[0]}: "
            "add --force to overwrite them, or restore into another directory"
        )


def restore_archive(
    source: str, dest: Path, *, include: list[str], force: bool, journal: Journal | None,
    collection: str | None, progress: Progress, no_outside_links: bool = False,
) -> RestoreReport:
    """Extract an archive (run name, gs:// URL or path) into ``dest`` safely, checking each
    file against the manifest as it lands (see the module docstring). With
    ``no_outside_links``, symlinks that are absolute or resolve outside ``dest`` are
    refused. Raises SrunsError when the archive cannot be read, DEST cannot be written,
    or files to restore already exist without ``force``; everything else wrong is in the
    report."""
    t0 = time.monotonic()
    try:
        src = resolve_source(source, journal, collection)
        try:
            report = _restore(src, Path(dest).expanduser().absolute(), include, force, no_outside_links, progress)
        finally:
            src.close()
    finally:
        progress.close()
    report.seconds = time.monotonic() - t0
    return report


def _restore(
    src: ArchiveSource, dest: Path, include: list[str], force: bool, no_outside_links: bool, progress: Progress,
) -> RestoreReport:
    manifest = src.read_manifest(progress.note)
    if manifest is None:
        progress.note(f"no manifest at {src.manifest_location}: restored files cannot be checked")
    selector = _Selector(include)
    if manifest is not None and not force:
        _refuse_existing(manifest, selector, dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DestinationNotWritable(f"cannot create {dest}: {exc.strerror}") from exc
    report = RestoreReport(
        source=src.location, manifest=src.manifest_location if manifest is not None else None, dest=str(dest)
    )
    problems = _Problems()
    expected = {path: None for path in manifest or {} if selector.matches(path)}  # ordered, unlike a set
    extractor = _Extractor(dest, force, manifest, no_outside_links, report, problems)
    try:
        stream = _Stream(src, progress)
        try:
            for member in stream.members:
                report.members += 1
                rel, why = _safe_name(member.name)
                if member.kind == "d" and rel:
                    extractor.dir_meta[rel] = (member.mode, member.mtime)
                if not selector.wanted(member.name):
                    report.excluded += 1
                    continue
                expected.pop(member.name, None)
                try:
                    if why or rel is None:
                        raise _Refused(why or "has an unusable name")
                    extractor.member(member, stream.members, rel)
                except _Refused as exc:
                    report.refused += 1
                    problems.add(f"refused {_show(member.name)}: it {exc}")
        except ArchiveDamaged as exc:
            report.damaged = True
            problems.first(f"damaged archive: {exc}; the members before it were restored and checked")
        finally:
            stream.reader.close()
        extractor.make_symlinks()
        extractor.finish()
    finally:
        extractor.close()
    stream.finish(problems, report.damaged)
    for path in expected:
        report.missing += 1
        problems.add(f"{_show(path)}: listed in the manifest, missing from the archive")
    for pattern, used in zip(selector.patterns, selector.used):
        if not used:
            problems.add(
                f"--include {pattern!r} matched no member (member paths start with the run folder, "
                f"e.g. {src.run}/InterOp)"
            )
    report.archive_bytes = stream.reader.pos
    report.reconnects = stream.reader.reconnects
    report.problem_count, report.problems = problems.count, problems.items
    report.ok = problems.count == 0
    return report
