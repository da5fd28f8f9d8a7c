"""What `verify` and `restore` report, and the problem list both fill.

`VerifyReport` and `RestoreReport` are what the commands return; the CLI prints their
``summary()`` (one line) or ``as_dict()`` (``--json``) and exits 0 when ``ok``, 1
otherwise. `Problems` keeps the first `MAX_PROBLEMS` problems and counts them all.
Member names and kinds are worded for a one-line message by `show` and `KIND_NAMES`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..progress import human_bytes

__all__ = ["KIND_NAMES", "MAX_PROBLEMS", "Problems", "RestoreReport", "VerifyReport", "show"]

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

