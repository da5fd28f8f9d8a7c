"""What `verify` and `restore` report, and the problem list both fill.

`Report` holds what both commands count (members, files, bytes, the stream's damage and
reconnects, the problems) and the shape of their one-line ``summary()`` and ``as_dict()``
(``--json``); `VerifyReport` and `RestoreReport` add only their own counts and their
own OK line. ``ok`` is True only when there is no problem at all: the CLI exits 0 then,
1 otherwise.

`Problems` keeps the first `MAX_PROBLEMS` problems and counts them all; a FAILED summary
lists every one kept, one per line, and says how many more there were. ``damaged`` is
True when the archive's bytes are not what was written (unreadable, a gzip CRC32 or
length that does not match, a member's data unlike its manifest row). The crc32c of the
stored bytes read is given in hex and, as gcloud shows it, in base64. Member names and
kinds are worded for a one-line message by `show` and `KIND_NAMES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..humanize import crc32c_base64, human_bytes

if TYPE_CHECKING:
    from .sources import ResumableReader

__all__ = ["KIND_NAMES", "MAX_PROBLEMS", "Problems", "Report", "RestoreReport", "VerifyReport", "show"]

# Problems kept in a report: the first ones say what is wrong; a truncated archive would
# otherwise list every missing member. ``problem_count`` still counts them all.
MAX_PROBLEMS = 20

KIND_NAMES = {
    "f": "file", "d": "directory", "l": "symlink", "h": "hard link", "c": "character device",
    "b": "block device", "p": "fifo", "?": "member of an unsupported type",
}


def show(name: str) -> str:
    """A member name for a one-line message: as it is when printable, else quoted."""
    return name if name.isprintable() else repr(name)


@dataclass
class Problems:
    """What a verify or restore found wrong, in the order found: the first `MAX_PROBLEMS`
    kept, all of them counted."""

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

    def promote(self, text: str, prefix: str) -> None:
        """Show ``text``, found earlier, first and with ``prefix``: it turned out to be
        what explains the others (counted once, as it was)."""
        if text in self.items:
            self.items.remove(text)
        self.items.insert(0, prefix + text)
        del self.items[MAX_PROBLEMS:]


def _counted(n: int) -> str:
    return f"{n} problem" + ("" if n == 1 else "s")


@dataclass(kw_only=True)
class Report(ABC):
    """What both commands report. ``ok`` is True only when there is no problem at all."""

    source: str
    manifest: str | None
    ok: bool = False
    members: int = 0
    files: int = 0
    data_bytes: int = 0
    archive_bytes: int = 0  # stored bytes read
    damaged: bool = False  # the stored bytes are not what was written: unreadable, truncated or altered
    crc32c: str | None = None  # of the stored bytes, when all of them were read
    crc32c_base64: str | None = None  # the same, as gcloud shows it
    reconnects: int = 0
    seconds: float = 0.0
    problem_count: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """What was checked when ok; else a line with how many problems and the first, then
        every other problem kept, one per line, and how many more there were."""
        if self.ok:
            return self._ok_line()
        lines = [f"FAILED: {self._subject()}: {_counted(self.problem_count)}; first: {self.problems[0]}"]
        lines += [f"  - {problem}" for problem in self.problems[1:]]
        if self.problem_count > len(self.problems):
            lines.append(f"  … and {self.problem_count - len(self.problems)} more (only the first "
                         f"{len(self.problems)} are listed)")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def conclude(self, problems: Problems, reader: ResumableReader) -> None:
        """Once the walk over the whole archive is over: what the reader read, and the problems found."""
        self.conclude_read(problems, reader.pos, reader.reconnects,
                           reader.crc32c if reader.pos == reader.size else None)

    def conclude_read(self, problems: Problems, archive_bytes: int, reconnects: int, crc32c: int | None) -> None:
        """Once the walk is over: the stored bytes read, the reconnections, the crc32c of
        the whole archive (None when not all of it was read), and the problems found."""
        self.archive_bytes = archive_bytes
        self.reconnects = reconnects
        if crc32c is not None:
            self.crc32c = f"{crc32c:08x}"
            self.crc32c_base64 = crc32c_base64(crc32c)
        self.problem_count, self.problems = problems.count, problems.items
        self.ok = problems.count == 0

    def _subject(self) -> str:
        """What a FAILED line is about."""
        return self.source

    @abstractmethod
    def _ok_line(self) -> str:
        """The one line that says what was checked, when everything was."""


@dataclass(kw_only=True)
class VerifyReport(Report):
    """What `verify_archive` found."""

    against: str | None = None
    exclude: list[str] = field(default_factory=list)  # patterns the archive was made with (--against skips them)
    matched: int = 0  # members equal to their manifest row
    mismatched: int = 0
    missing: int = 0  # in the manifest, not in the archive
    extra: int = 0  # in the archive, not in the manifest
    disk_mismatched: int = 0
    disk_extra: int = 0  # on disk, not in the archive

    def _ok_line(self) -> str:
        against = f" and {self.against}" if self.against else ""
        if self.against and self.exclude:
            against += f" (leaving out what matches {', '.join(self.exclude)}, as the archive did)"
        crc = f"; crc32c {self.crc32c} (base64 {self.crc32c_base64})" if self.crc32c else ""
        return (
            f"OK: {self.source}: {self.members} members ({self.files} files, {human_bytes(self.data_bytes)}) "
            f"match {self.manifest}{against}{crc}"
        )


@dataclass(kw_only=True)
class RestoreReport(Report):
    """What `restore_archive` did."""

    dest: str
    dirs: int = 0
    links: int = 0
    checked: int = 0  # files whose crc32c matched the manifest before they were renamed into place
    excluded: int = 0  # members left out by --include
    refused: int = 0  # unsafe members, never written
    failed: int = 0  # files removed because they did not match the manifest
    existing: int = 0  # not written: something already stands there (no --force)
    missing: int = 0  # in the manifest (and selected), not in the archive
    ranges: int = 0  # ranged reads through the access index (0: the archive was read whole)

    def _subject(self) -> str:
        return f"{self.source} -> {self.dest}"

    def _ok_line(self) -> str:
        left_out = f", {self.excluded} members left out by --include" if self.excluded else ""
        checked = f"each file checked against {self.manifest}" if self.manifest else "unchecked: no manifest"
        read = (f"; read {human_bytes(self.archive_bytes)} of the archive in {self.ranges} ranged "
                f"read{'s' if self.ranges != 1 else ''}" if self.ranges else "")
        return (
            f"OK: restored {self.files} files, {self.dirs} directories, {self.links} links "
            f"({human_bytes(self.data_bytes)}) from {self.source} into {self.dest}{left_out}; {checked}{read}"
        )
