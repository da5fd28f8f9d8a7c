"""`verify` and `restore`: read an archive back in one streaming pass and check every member.

Both read the archive where it lives (GCS or a local path, see `archive_source`) without
writing it to disk: stored bytes → ISA-L inflate (gzip CRC32 and length checked) → tar
headers → each member's size and crc32c, compared with the ``<run>.manifest.tsv`` written
beside the archive. What differs is reported as a list of problems naming the member; the
CLI exits 0 when there are none and 1 otherwise.

`verify_archive` only reads. With ``against`` it also compares every member with the run
folder on disk (type, size, crc32c, symlink target) and lists what is on disk but not in
the archive.

`restore_archive` extracts into DEST, refusing anything that could write outside it:
absolute names, ``..`` components, symlinks that are absolute or resolve outside DEST,
hard links whose target is outside DEST, device files and fifos, and writes through a
parent that is (or became) a symlink pointing out. Existing files are never overwritten
without ``force``. Each file is written to a temporary name in its own directory, checked
against the manifest, and only then renamed into place: a file that does not match is
removed and reported, so whatever stands under a final name has been checked. Directory
modes and mtimes are set last, deepest first, so that filling them does not disturb them.
Ownership is not restored (restores run as an ordinary user), and set-uid/set-gid/sticky
bits are dropped from files: a restore never creates privileged files.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from dataclasses import asdict, dataclass, field
from fnmatch import translate
from pathlib import Path
from typing import TYPE_CHECKING, Any

import google_crc32c

from .archive_source import (
    PIECE,
    ArchiveDamaged,
    ArchiveSource,
    GzipLayer,
    ManifestRow,
    Member,
    ResumableReader,
    TarMembers,
    resolve_source,
)
from .errors import DestinationNotWritable, DiskFull, RunFolderMissing, UsageError
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


def _file_crc32c(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while piece := f.read(PIECE):
            crc = google_crc32c.extend(crc, piece)
    return crc


def _member_vs_row(member: Member, crc: int | None, row: ManifestRow) -> list[str]:
    """How a member differs from its manifest row (empty when it does not)."""
    if member.kind != row.kind:
        kinds = (_KIND_NAMES.get(member.kind, member.kind), _KIND_NAMES.get(row.kind, row.kind))
        return [f"a {kinds[0]} in the archive, a {kinds[1]} in the manifest"]
    diffs = []
    if member.kind == "f":
        if member.size != row.size:
            diffs.append(f"{member.size} bytes in the archive, {row.size} in the manifest")
        if crc is not None and row.crc32c is not None and crc != row.crc32c:
            diffs.append(f"crc32c {crc:08x} in the archive, {row.crc32c:08x} in the manifest")
    if member.kind == "l" and member.linkname != row.link:
        diffs.append(f"links to {member.linkname!r} in the archive, to {row.link!r} in the manifest")
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
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISLNK(mode):
        return "l"
    return "?"


def _member_vs_disk(member: Member, crc: int | None, path: str) -> list[str]:
    """How a member differs from what is at ``path`` on disk."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return ["not on disk"]
    except OSError as exc:
        return [f"cannot be read on disk ({exc.strerror})"]
    kind = _disk_kind(st.st_mode)
    if kind != member.kind:
        return [f"a {_KIND_NAMES.get(member.kind, member.kind)} in the archive, a {_KIND_NAMES[kind]} on disk"]
    if kind == "f":
        if st.st_size != member.size:
            return [f"{member.size} bytes in the archive, {st.st_size} on disk"]
        try:
            disk_crc = _file_crc32c(path)
        except OSError as exc:
            return [f"cannot be read on disk ({exc.strerror})"]
        if crc is not None and disk_crc != crc:
            return [f"crc32c {crc:08x} in the archive, {disk_crc:08x} on disk"]
    if kind == "l" and os.readlink(path) != member.linkname:
        return [f"links to {member.linkname!r} in the archive, to {os.readlink(path)!r} on disk"]
    return []


def _disk_path(rundir: Path, name: str) -> str:
    """Where member ``name`` (``RUN/…``) lives in the run folder ``rundir``."""
    _, _, rest = name.partition("/")
    return os.path.join(rundir, rest) if rest else str(rundir)


# --- verify -----------------------------------------------------------------------------


def verify_archive(
    source: str, *, against: Path | None, journal: Journal | None, collection: str | None, progress: Progress,
) -> VerifyReport:
    """Check an archive (run name, gs:// URL or path) against its manifest, and ``against``
    a run folder if given, reading it once as a stream. Raises SrunsError only when the
    archive cannot be found or read; everything it finds wrong is in the report."""
    t0 = time.monotonic()
    try:
        if against is not None and not Path(against).is_dir():
            raise RunFolderMissing(f"--against {against} is not a directory: give the run folder the archive was made from")
        src = resolve_source(source, journal, collection)
        try:
            report = _verify(src, against, progress)
        finally:
            src.close()
    finally:
        progress.close()
    report.seconds = time.monotonic() - t0
    return report


def _verify(src: ArchiveSource, against: Path | None, progress: Progress) -> VerifyReport:
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
            top = top or member.name.split("/", 1)[0]
            _verify_member(member, stream.members, expected, seen, manifest is not None, against, report, problems)
    except ArchiveDamaged as exc:
        report.damaged = True
        problems.first(f"damaged archive: {exc}")
    finally:
        stream.reader.close()
    stream.finish(problems, report.damaged)
    for row in expected.values():
        report.missing += 1
        problems.add(f"{_show(row.path)}: listed in the manifest, missing from the archive")
    if against is not None and top:
        _disk_extras(Path(against), top, seen, report, problems)
    report.archive_bytes = stream.reader.pos
    report.reconnects = stream.reader.reconnects
    report.problem_count, report.problems = problems.count, problems.items
    report.ok = problems.count == 0
    return report


def _verify_member(
    member: Member, tar: TarMembers, expected: dict[str, ManifestRow], seen: set[str], have_manifest: bool,
    against: Path | None, report: VerifyReport, problems: _Problems,
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
    if against is not None:
        path = _disk_path(against, member.name)
        diffs = _member_vs_disk(member, crc, path)
        if diffs:
            report.disk_mismatched += 1
            problems.add(f"{name}: {'; '.join(diffs)} ({path})")


def _disk_extras(rundir: Path, top: str, seen: set[str], report: VerifyReport, problems: _Problems) -> None:
    """What the run folder holds that the archive does not."""
    for dirpath, dirnames, filenames in os.walk(rundir):
        for child in sorted(dirnames + filenames):
            path = os.path.join(dirpath, child)
            name = top + "/" + os.path.relpath(path, rundir).replace(os.sep, "/")
            if name not in seen:
                report.disk_extra += 1
                problems.add(f"{_show(name)}: on disk ({path}), not in the archive")


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


class _Extractor:
    """Writes members under DEST, one at a time, as they stream by."""

    def __init__(
        self, dest: Path, force: bool, manifest: dict[str, ManifestRow] | None,
        report: RestoreReport, problems: _Problems,
    ) -> None:
        self.dest = dest
        self.root = os.path.realpath(dest)
        self.force = force
        self.manifest = manifest
        self.report = report
        self.problems = problems
        self.dir_meta: dict[str, tuple[int, int]] = {}  # every directory member: (mode, mtime)
        self.finish_dirs: dict[str, None] = {}  # directories whose mode and mtime are set last
        self._parents: dict[str, str] = {}  # lexical parent -> checked real path; reset by any new link
        self._tmp: str | None = None
        self._seq = 0

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root + os.sep)

    def _os_error(self, exc: OSError, path: str) -> Exception:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFull(f"no space left writing {path}: free space under {self.dest} and run again with --force")
        return DestinationNotWritable(f"cannot write {path}: {exc.strerror}; check {self.dest} and its permissions")

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
        target = os.path.join(self.root, rel)
        try:
            parent = self._parent(rel)
            target = os.path.join(parent, rel.rsplit("/", 1)[-1])
            if member.kind == "f":
                self._file(member, tar, target)
            elif member.kind == "d":
                self._dir(member, rel, target)
            elif member.kind == "l":
                self._symlink(member, parent, target)
            else:
                self._hardlink(member, target)
        except OSError as exc:
            raise self._os_error(exc, target) from exc

    def _parent(self, rel: str) -> str:
        """The real path of ``rel``'s directory, created as needed, checked to be in DEST."""
        parts = rel.split("/")[:-1]
        key = "/".join(parts)
        cached = self._parents.get(key)
        if cached is not None:
            return cached
        current = self.root
        for i, part in enumerate(parts):
            path = os.path.join(current, part)
            shown = "/".join(parts[: i + 1])
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                try:
                    os.mkdir(path)
                except OSError as exc:
                    raise self._os_error(exc, path) from exc
                if shown in self.dir_meta:  # its member was left out by --include: still its mode
                    self.finish_dirs[shown] = None
                current = path
                continue
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(path)
                if not self._inside(real):
                    raise _Refused(f"its parent {shown} is a symlink to {real}, outside {self.dest}")
                try:
                    st = os.stat(real)
                except FileNotFoundError:
                    raise _Refused(f"its parent {shown} is a symlink to {real}, which does not exist") from None
                path = real
            if not stat.S_ISDIR(st.st_mode):
                raise _Refused(f"its parent {shown} is not a directory in {self.dest}")
            current = path
        self._parents[key] = current
        return current

    def _in_the_way(self, target: str) -> bool:
        """True (and reported) when something stands at ``target`` that must stay."""
        if not os.path.lexists(target):
            return False
        if not self.force:
            self.report.existing += 1
            self.problems.add(f"{target} already exists: not overwritten (use --force to overwrite)")
            return True
        if os.path.isdir(target) and not os.path.islink(target):
            self.report.existing += 1
            self.problems.add(f"{target} is a directory: not replaced")
            return True
        return False

    def _temp_name(self, directory: str) -> str:
        # Short and ours: member names can be 255 bytes long already.
        self._seq += 1
        return os.path.join(directory, f".sruns-restore.{os.getpid()}.{self._seq}")

    def _file(self, member: Member, tar: TarMembers, target: str) -> None:
        if self._in_the_way(target):
            return
        tmp = self._temp_name(os.path.dirname(target))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600)
        self._tmp = tmp
        crc = 0
        with open(fd, "wb", closefd=True) as f:
            for piece in tar.data():
                f.write(piece)
                crc = google_crc32c.extend(crc, piece)
        name = _show(member.name)
        row = self.manifest.get(member.name) if self.manifest is not None else None
        if row is not None:
            bad = _content_vs_row(member, crc, row)
            if bad:
                self.cleanup()
                self.report.failed += 1
                self.problems.add(f"{name}: {'; '.join(bad)}: removed, not restored")
                return
            self.report.checked += 1
        elif self.manifest is not None:
            self.problems.add(f"{name}: not in the manifest: restored unchecked")
        os.chmod(tmp, member.mode & 0o777)
        os.utime(tmp, ns=(member.mtime * 1_000_000_000,) * 2)
        os.replace(tmp, target)
        self._tmp = None
        self.report.files += 1
        self.report.data_bytes += member.size

    def _dir(self, member: Member, rel: str, target: str) -> None:
        if os.path.lexists(target) and (os.path.islink(target) or not os.path.isdir(target)):
            if not self.force:
                self.report.existing += 1
                self.problems.add(f"{target} already exists and is not a directory: not replaced (use --force)")
                return
            os.unlink(target)
            self._parents.clear()
        if not os.path.lexists(target):
            # Owner-only while it fills: a read-only mode would stop us writing its contents.
            os.mkdir(target, 0o700)
        self.finish_dirs[rel] = None
        self.report.dirs += 1

    def _place_link(self, target: str, make: Any) -> bool:
        """Create a link at ``target`` via ``make(path)``, replacing what is there with --force."""
        if self._in_the_way(target):
            return False
        if os.path.lexists(target):
            tmp = self._temp_name(os.path.dirname(target))
            make(tmp)
            os.replace(tmp, target)
        else:
            make(target)
        self._parents.clear()  # a new link can change what any path resolves to
        self.report.links += 1
        return True

    def _symlink(self, member: Member, parent: str, target: str) -> None:
        link = member.linkname
        if not link or os.path.isabs(link):
            raise _Refused(f"is a symlink to the absolute path {link!r}")
        resolved = os.path.realpath(os.path.join(parent, link))
        if not self._inside(resolved):
            raise _Refused(f"is a symlink to {link!r}, which resolves to {resolved}, outside {self.dest}")
        row = self.manifest.get(member.name) if self.manifest is not None else None
        if row is not None and (row.kind != "l" or row.link != link):
            self.problems.add(f"{_show(member.name)}: {'; '.join(_member_vs_row(member, None, row))}: not restored")
            self.report.failed += 1
            return
        if self._place_link(target, lambda path: os.symlink(link, path)):
            os.utime(target, ns=(member.mtime * 1_000_000_000,) * 2, follow_symlinks=False)

    def _hardlink(self, member: Member, target: str) -> None:
        rel, why = _safe_name(member.linkname)
        if why or not rel:
            raise _Refused(f"is a hard link to {member.linkname!r}, which {why or 'names DEST itself'}")
        real = os.path.realpath(os.path.join(self.root, rel))
        if not self._inside(real):
            raise _Refused(f"is a hard link to {member.linkname!r}, which resolves to {real}, outside {self.dest}")
        if not os.path.isfile(real):
            self.problems.add(f"{_show(member.name)}: hard link to {member.linkname!r}, which was not restored")
            return
        # Linking the resolved path: no symlink is followed at link time.
        self._place_link(target, lambda path: os.link(real, path, follow_symlinks=False))

    def finish(self) -> None:
        """Directory modes and mtimes, deepest first, once their contents are in place."""
        for rel in sorted(self.finish_dirs, key=lambda r: r.count("/"), reverse=True):
            meta = self.dir_meta.get(rel)
            if meta is None:
                continue
            path = os.path.realpath(os.path.join(self.root, rel))
            if not self._inside(path) or not os.path.isdir(path):
                continue
            mode, mtime = meta
            try:
                os.chmod(path, mode & 0o7777 & ~stat.S_ISUID)
                os.utime(path, ns=(mtime * 1_000_000_000,) * 2)
            except OSError as exc:
                raise self._os_error(exc, path) from exc

    def cleanup(self) -> None:
        """Remove the temporary file being written, if any."""
        if self._tmp is not None:
            tmp, self._tmp = self._tmp, None
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def _refuse_existing(manifest: dict[str, ManifestRow], selector: _Selector, dest: Path) -> None:
    """Before anything is read or written: refuse when files to restore already exist."""
    existing = []
    for row in manifest.values():
        if row.kind == "d" or not selector.matches(row.path):
            continue
        rel, why = _safe_name(row.path)
        if rel and not why and os.path.lexists(os.path.join(dest, rel)):
            existing.append(os.path.join(dest, rel))
    if existing:
        raise UsageError(
            f"{len(existing)} of the files to restore already exist, e.g. {existing[0]}: "
            "add --force to overwrite them, or restore into another directory"
        )


def restore_archive(
    source: str, dest: Path, *, include: list[str], force: bool, journal: Journal | None,
    collection: str | None, progress: Progress,
) -> RestoreReport:
    """Extract an archive (run name, gs:// URL or path) into ``dest`` safely, checking each
    file against the manifest as it lands (see the module docstring). Raises SrunsError
    when the archive cannot be read, DEST cannot be written, or files to restore already
    exist without ``force``; everything else wrong is in the report."""
    t0 = time.monotonic()
    try:
        src = resolve_source(source, journal, collection)
        try:
            report = _restore(src, Path(dest).expanduser().absolute(), include, force, progress)
        finally:
            src.close()
    finally:
        progress.close()
    report.seconds = time.monotonic() - t0
    return report


def _restore(src: ArchiveSource, dest: Path, include: list[str], force: bool, progress: Progress) -> RestoreReport:
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
    extractor = _Extractor(dest, force, manifest, report, problems)
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
        extractor.cleanup()
        stream.reader.close()
    extractor.finish()
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
