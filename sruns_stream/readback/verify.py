"""`verify`: read an archive back in one streaming pass and check every member.

`verify_archive` reads the archive where it lives (GCS or a local path, see `sources`)
without writing it to disk: stored bytes → ISA-L inflate (gzip CRC32 and length checked)
→ tar headers → each member's size and crc32c, compared with the ``<run>.manifest.tsv``
written beside the archive (`rowcheck.member_vs_row`). What differs is reported as a
list of problems naming the member.

With ``against`` it also compares every member with the run folder on disk (type, size,
crc32c, symlink target) and lists what is on disk but not in the archive, leaving aside
what the archive's ``exclude`` patterns (in its manifest's header) left out on purpose. The run folder
is read from a directory fd, one component at a time and without following links
(`confine`): a member name with ``..`` or an absolute one is reported, never joined to
the folder; a symlinked directory in it is a difference, never traversed; only regular
files are opened (O_NONBLOCK, so a planted FIFO cannot hang it).

A damaged stream (corrupt gzip, truncation, a hostile tar header) ends the walk; it is
reported first, as "damaged archive: …".
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import google_crc32c

from ..errors import IntegrityError, RunFolderMissing
from ..progress import Progress
from ..runfolder.exclude import matcher
from ..runfolder.safefs import DIR_FLAGS, FILE_FLAGS
from ..storage.manifest_tsv import ManifestRow, Rows
from .confine import NotADir, open_dirs, safe_name
from .damage import ArchiveDamaged
from .locate import resolve_source
from .ranged import parallel_points
from .report import KIND_NAMES, Problems, VerifyReport, show
from .rowcheck import member_vs_row
from .sources import PIECE, ArchiveSource
from .stream import MemberStream
from .tarparse import Member

if TYPE_CHECKING:
    from ..state.journal import Journal

__all__ = ["verify_archive"]


def verify_archive(
    source: str, *, against: Path | None, journal: Journal | None, collection: str | None, progress: Progress,
    threads: int = 1,
) -> VerifyReport:
    """Check an archive (run name, gs:// URL or path) against its manifest, and ``against``
    a run folder if given, reading it once as a stream (inflated on ``threads`` threads
    through its access index, when it has one). Raises SrunsError only when the archive
    cannot be found or read; everything it finds wrong is in the report."""
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
                report = _verify(src, against, rundir_fd, progress, threads)
            finally:
                src.close()
        finally:
            if rundir_fd is not None:
                os.close(rundir_fd)
    finally:
        progress.close()
    report.seconds = time.monotonic() - t0
    return report


def _verify(
    src: ArchiveSource, against: Path | None, rundir_fd: int | None, progress: Progress, threads: int,
) -> VerifyReport:
    manifest = src.read_manifest(progress.note)
    report = VerifyReport(
        source=src.location,
        manifest=src.manifest_location if manifest is not None else None,
        against=str(against) if against is not None else None,
    )
    problems = Problems()
    if manifest is None:
        problems.add(f"no manifest at {src.manifest_location}: the members cannot be checked one by one")
    expected = dict(manifest or {})
    seen: set[str] = set()
    top = ""  # the archive's top directory: the run folder's name when it was archived
    files_total = sum(1 for row in expected.values() if row.kind == "f") if manifest is not None else None
    points = None
    try:
        # The index is checked on one thread too: it is part of what was stored, and an
        # index that does not cover the archive would make a ranged read inflate the rest.
        points = parallel_points(src, threads, progress.note, manifest, check=True)
    except IntegrityError as exc:
        problems.add(f"{exc}: the archive was read without it")
    content_differs = False  # a member's data unlike its manifest row
    stream = MemberStream(src, progress, files_total, lambda: report.files, points, threads, manifest)
    try:
        for member in stream.members:
            top = top or (safe_name(member.name)[0] or "").split("/", 1)[0]
            content_differs |= _verify_member(member, stream, expected, seen, manifest is not None,
                                              against, rundir_fd, report, problems)
    except ArchiveDamaged as exc:
        report.damaged = True
        problems.first(f"damaged archive: {exc}")
    finally:
        stream.close()
    altered = stream.finish(problems, report.damaged)
    # The stored bytes were altered if the gzip layer says so; a member's data unlike its
    # manifest row says so too, unless an intact gzip CRC32 proves the bytes as written
    # (then the manifest is what differs).
    report.damaged |= altered or (content_differs and not stream.gzip_checked)
    for row in expected.values():
        report.missing += 1
        problems.add(f"{show(row.path)}: listed in the manifest, missing from the archive")
    if against is not None and rundir_fd is not None and top:
        # What the archive left out on purpose (its manifest says which patterns) is not
        # "on disk, not in the archive".
        report.exclude = list(manifest.exclude) if isinstance(manifest, Rows) else []
        _disk_extras(against, rundir_fd, top, seen, report, problems, matcher(report.exclude))
    report.conclude(problems, stream.reader)
    return report


def _verify_member(
    member: Member, stream: MemberStream, expected: dict[str, ManifestRow], seen: set[str], have_manifest: bool,
    against: Path | None, rundir_fd: int | None, report: VerifyReport, problems: Problems,
) -> bool:
    """Check one member; True if its data (size or crc32c) differs from its manifest row."""
    report.members += 1
    content_differs = False
    crc = None
    if member.kind == "f":
        crc = stream.members.file_crc32c()
        report.files += 1
        report.data_bytes += member.size
    name = show(member.name)
    if member.name in seen:
        problems.add(f"{name}: appears twice in the archive")
    seen.add(member.name)
    row = expected.pop(member.name, None)
    if have_manifest and row is None:
        report.extra += 1
        problems.add(f"{name}: in the archive, not in the manifest")
    elif row is not None:
        diffs = member_vs_row(member, crc, row)
        if diffs:
            report.mismatched += 1
            problems.add(f"{name}: {'; '.join(diffs)}")
            content_differs = member.kind == row.kind == "f" and (
                member.size != row.size or (crc is not None and row.crc32c is not None and crc != row.crc32c)
            )
        else:
            report.matched += 1
    if against is not None and rundir_fd is not None:
        rel, why = safe_name(member.name)
        if why or rel is None:
            # Joined to the run folder, "RUN/../x" or "/etc/x" would be read outside it.
            report.disk_mismatched += 1
            problems.add(f"{name}: unsafe name: not compared with the disk")
            return content_differs
        parts = rel.split("/")[1:]  # the first is the run folder's own name
        diffs = _member_vs_disk(member, crc, rundir_fd, parts)
        if diffs:
            report.disk_mismatched += 1
            problems.add(f"{name}: {'; '.join(diffs)} ({os.path.join(against, *parts)})")
    return content_differs


def _disk_names(fd: int, prefix: str, excluded: Callable[[bytes], bool]) -> Iterator[str]:
    """Every name under the directory ``fd``, sorted, descending into real directories
    only; an ``excluded`` one is skipped, and not descended into."""
    with os.scandir(fd) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        rel = prefix + entry.name
        if excluded(os.fsencode(rel)):
            continue
        yield rel
        if entry.is_dir(follow_symlinks=False):
            try:
                sub = os.open(entry.name, DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue  # replaced meanwhile, or unreadable: its members say so
            try:
                yield from _disk_names(sub, rel + "/", excluded)
            finally:
                os.close(sub)


def _disk_extras(
    rundir: Path, rundir_fd: int, top: str, seen: set[str], report: VerifyReport, problems: Problems,
    excluded: Callable[[bytes], bool],
) -> None:
    """What the run folder holds that the archive does not (and did not leave out on purpose)."""
    for rel in _disk_names(rundir_fd, "", excluded):
        name = f"{top}/{rel}"
        if name not in seen:
            report.disk_extra += 1
            problems.add(f"{show(name)}: on disk ({os.path.join(rundir, rel)}), not in the archive")

# --- comparing with the run folder on disk ----------------------------------------------


def _fd_crc32c(fd: int) -> int:
    crc = 0
    while piece := os.read(fd, PIECE):
        crc = google_crc32c.extend(crc, piece)
    return crc


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
        parent = open_dirs(rundir_fd, parts[:-1])
    except FileNotFoundError:
        return ["not on disk"]
    except NotADir as exc:
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
        return [f"a {KIND_NAMES.get(member.kind, member.kind)} in the archive, a {KIND_NAMES[kind]} on disk"]
    if leaf is None:
        return []
    if kind == "f":
        if st.st_size != member.size:
            return [f"{member.size} bytes in the archive, {st.st_size} on disk"]
        try:
            fd = os.open(leaf, FILE_FLAGS, dir_fd=parent)
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
