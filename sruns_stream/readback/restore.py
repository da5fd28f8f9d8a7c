"""`restore`: extract an archive into DEST in one streaming pass, checking each file
against the manifest as it lands.

`restore_archive` reads the archive where it lives (GCS or a local path, see `sources`)
without writing it to disk, and hands each member to the `Extractor`, which writes it
under DEST or refuses it (see `extract` for what is refused and how nothing is written
through a link). Before anything is read, files to restore that already exist are
refused unless ``force``. ``include`` (--include) restores only members matching fnmatch
patterns; a pattern that matches nothing is a problem, since it is most likely a typo.

A damaged stream (corrupt gzip, truncation, a hostile tar header) ends the walk; it is
reported first, as "damaged archive: …", and the members before it stay restored and
checked.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from fnmatch import translate
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DestinationNotWritable, IntegrityError, UsageError
from ..progress import Progress
from ..runfolder.safefs import make_dirs
from ..storage.manifest_tsv import ManifestRow
from .confine import NotADir, open_dirs, safe_name
from .damage import ArchiveDamaged
from .extract import Extractor, Refused
from .locate import resolve_source
from .ranged import RangedMembers, has_offsets, load_index, parallel_points, plan, spans_of
from .report import Problems, RestoreReport, show
from .sources import ArchiveSource
from .stream import MemberStream

if TYPE_CHECKING:
    from ..state.journal import Journal

__all__ = ["Selector", "restore_archive"]


class Selector:
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


def _exists_below(root_fd: int, rel: str) -> bool:
    """Whether something stands at ``rel`` under ``root_fd``, looked up without following links."""
    parts = rel.split("/")
    try:
        parent = open_dirs(root_fd, parts[:-1])
    except (OSError, NotADir):
        return False
    try:
        os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        return True
    except OSError:
        return False
    finally:
        os.close(parent)


def _refuse_existing(manifest: dict[str, ManifestRow], selector: Selector, dest: Path) -> None:
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
            rel, why = safe_name(row.path)
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
    collection: str | None, progress: Progress, no_outside_links: bool = False, threads: int = 1,
) -> RestoreReport:
    """Extract an archive (run name, gs:// URL or path) into ``dest`` safely, checking each
    file against the manifest as it lands (see the docstrings of this module and of
    `extract`). With ``no_outside_links``, symlinks that are absolute or resolve outside
    ``dest`` are refused. Raises SrunsError when the archive cannot be read, DEST cannot
    be written, or files to restore already exist without ``force``; everything else
    wrong is in the report."""
    t0 = time.monotonic()
    try:
        src = resolve_source(source, journal, collection)
        try:
            report = _restore(src, Path(dest).expanduser().absolute(), include, force, no_outside_links, progress,
                              threads)
        finally:
            src.close()
    finally:
        progress.close()
    report.seconds = time.monotonic() - t0
    return report


def _restore(
    src: ArchiveSource, dest: Path, include: list[str], force: bool, no_outside_links: bool, progress: Progress,
    threads: int,
) -> RestoreReport:
    manifest = src.read_manifest(progress.note)
    if manifest is None:
        progress.note(f"no manifest at {src.manifest_location}: restored files cannot be checked")
    selector = Selector(include)
    if manifest is not None and not force:
        _refuse_existing(manifest, selector, dest)
    try:
        make_dirs(dest)
    except OSError as exc:
        raise DestinationNotWritable(f"cannot create {dest}: {exc.strerror}") from exc
    report = RestoreReport(
        source=src.location, manifest=src.manifest_location if manifest is not None else None, dest=str(dest)
    )
    problems = Problems()
    expected = {path: None for path in manifest or {} if selector.matches(path)}  # ordered, unlike a set
    extractor = Extractor(dest, force, manifest, no_outside_links, report, problems)
    stream: MemberStream | RangedMembers | None = None
    try:
        files_total = sum(1 for path in expected if manifest is not None and manifest[path].kind == "f")
        stream = _ranged(src, manifest, selector, progress, files_total, lambda: report.files) if include else None
        if stream is None:
            try:
                points = parallel_points(src, threads, progress.note, manifest)
            except IntegrityError as exc:
                progress.note(f"{exc}: reading the archive without it")
                points = None
            stream = MemberStream(src, progress, files_total if manifest is not None else None, lambda: report.files,
                                  points, threads, manifest)
        try:
            for member, tar in stream.walk():
                report.members += 1
                rel, why = safe_name(member.name)
                if member.kind == "d" and rel:
                    extractor.dir_meta[rel] = (member.mode, member.mtime)
                if not selector.wanted(member.name):
                    report.excluded += 1
                    continue
                expected.pop(member.name, None)
                try:
                    if why or rel is None:
                        raise Refused(why or "has an unusable name")
                    extractor.member(member, tar, rel)
                except Refused as exc:
                    report.refused += 1
                    problems.add(f"refused {show(member.name)}: it {exc}")
        except ArchiveDamaged as exc:
            report.damaged = True
            problems.first(f"damaged archive: {exc}; the members before it were restored and checked")
        finally:
            stream.close()
        extractor.make_symlinks()
        extractor.finish()
    finally:
        extractor.close()
    if isinstance(stream, RangedMembers):
        report.ranges = len(stream.ranges)
        # Only the members in the ranges read were seen: the others were left out unread.
        report.excluded = len(manifest or {}) - sum(1 for path in manifest or {} if selector.matches(path))
    else:
        report.damaged |= stream.finish(problems, report.damaged)
    for path in expected:
        report.missing += 1
        problems.add(f"{show(path)}: listed in the manifest, missing from the archive")
    for pattern, used in zip(selector.patterns, selector.used, strict=True):
        if not used:
            problems.add(
                f"--include {pattern!r} matched no member (member paths start with the run folder, "
                f"e.g. {src.run}/InterOp)"
            )
    if isinstance(stream, MemberStream):
        report.conclude(problems, stream.reader)
    else:
        report.conclude_read(problems, stream.fetched, stream.reconnects, None)
    return report


def _ranged(
    src: ArchiveSource, manifest: dict[str, ManifestRow] | None, selector: Selector, progress: Progress,
    files_total: int, files_done: Callable[[], int],
) -> RangedMembers | None:
    """The members --include selects, read by ranges through the access index; None (said
    why) when the archive has no index or its manifest no offsets: it is then read whole."""
    if manifest is None:
        return None
    if not has_offsets(manifest):
        progress.note(f"{src.manifest_location} has no offset column (an archive from before access points): "
                      "reading the archive from its start")
        return None
    index = load_index(src, progress.note)
    if index is None:
        return None
    spans = spans_of(manifest, selector.wanted)  # marks the patterns that match, as the walk would
    if not spans:
        return RangedMembers(src, index, [], progress, files_total, files_done)
    return RangedMembers(src, index, plan(index, spans), progress, files_total, files_done)
