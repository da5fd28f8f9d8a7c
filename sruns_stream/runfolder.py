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
from typing import Any

from .errors import RunFolderChanged, RunFolderMissing, UnreadableEntry
from .stopping import STOP

__all__ = [
    "DIR",
    "FILE",
    "SUCCESS_STATUSES",
    "SYMLINK",
    "CompletionRules",
    "Entry",
    "Manifest",
    "RunInfo",
    "RunState",
    "check_unchanged",
    "instrument_family",
    "parameters_file",
    "read_completion_status",
    "read_run_info",
    "run_state",
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
    STOP.check()  # a walk over NFS can take minutes
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


# ---------------------------------------------------------------------------
# Completion detection: is a run folder finished, by its instrument's rules?
# Precedence as in ILLUMINA.md: RunCompletionStatus.xml, else CopyComplete.txt, else an
# RTA/sequencing marker plus a quiet period; always a parseable RunInfo.xml.

SUCCESS_STATUSES = ("RunCompleted", "CompletedAsPlanned")


@dataclass(frozen=True)
class CompletionRules:
    """Which files mark a run finished, and how old they must be (configurable)."""

    marker_age_s: float = 0.0  # sruns-monitor's sentinal_file_age_minutes, in seconds
    quiet_period_s: float = 1800.0  # RTA-only runs: no change in the folder for this long
    status_file: str = "RunCompletionStatus.xml"
    copy_markers: tuple[str, ...] = ("CopyComplete.txt",)
    rta_markers: tuple[str, ...] = (
        "RTAComplete.txt",
        "RTAComplete.xml",
        "SequenceComplete.txt",
        "SequencingComplete.txt",
    )


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    instrument: str
    flowcell: str | None


@dataclass(frozen=True)
class RunState:
    """What the folder says about itself right now."""

    complete: bool
    reason: str  # why it is or is not complete, for logs and `status`
    run_info: RunInfo | None = None
    instrument: str | None = None  # family, e.g. "NovaSeq 6000"
    instrument_status: str | None = None  # RunCompletionStatus value, e.g. RunErrored
    instrument_error: str | None = None
    marker: str | None = None

    @property
    def errored(self) -> bool:
        return self.instrument_status is not None and self.instrument_status not in SUCCESS_STATUSES


def _xml_root(path: Path) -> Any:
    import xml.etree.ElementTree as ET

    try:
        return ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None


def read_run_info(rundir: Path) -> RunInfo | None:
    """Run id, instrument serial and flow cell from RunInfo.xml; None if absent or broken."""
    root = _xml_root(Path(rundir) / "RunInfo.xml")
    run = root.find("Run") if root is not None else None
    if run is None or not run.get("Id"):
        return None
    return RunInfo(
        run_id=run.get("Id"),
        instrument=(run.findtext("Instrument") or "").strip(),
        flowcell=(run.findtext("Flowcell") or "").strip() or None,
    )


_SERIAL_FAMILIES = (  # longest prefixes first; ILLUMINA.md "Instrument-serial prefixes"
    ("ST-E", "HiSeq X"), ("NDX", "NextSeq 550Dx"), ("LH", "NovaSeq X"), ("VH", "NextSeq 1000/2000"),
    ("VL", "NextSeq 1000/2000"), ("MN", "MiniSeq"), ("ML", "MiniSeq"), ("FS", "iSeq 100"),
    ("NS", "NextSeq 500/550"), ("NB", "NextSeq 500/550"), ("SN", "HiSeq 2000/2500"),
    ("D", "HiSeq 2000/2500"), ("J", "HiSeq 3000/4000"), ("K", "HiSeq 3000/4000"), ("E", "HiSeq X"),
    ("A", "NovaSeq 6000"), ("M", "MiSeq"),
)


def parameters_file(rundir: Path) -> Path | None:
    """RunParameters.xml or runParameters.xml (older HiSeq and MiSeq)."""
    for name in ("RunParameters.xml", "runParameters.xml"):
        if (Path(rundir) / name).is_file():
            return Path(rundir) / name
    return None


def instrument_family(rundir: Path, run_info: RunInfo | None = None) -> str | None:
    """The instrument family, from RunParameters.xml first and the serial's prefix second."""
    params = parameters_file(rundir)
    root = _xml_root(params) if params else None
    if root is not None:
        app = " ".join(
            (root.findtext(f".//{tag}") or "")
            for tag in ("ApplicationName", "Application", "InstrumentType", "RunParametersVersion")
        )
        for needle, family in (
            ("HiSeq", ""),  # before "iSeq", which it contains; the serial tells which HiSeq
            ("NovaSeqX", "NovaSeq X"), ("NovaSeq", "NovaSeq 6000"), ("NextSeq 1000/2000", "NextSeq 1000/2000"),
            ("NextSeq", "NextSeq 500/550"), ("MiniSeq", "MiniSeq"), ("MiSeq", "MiSeq"), ("iSeq", "iSeq 100"),
        ):
            if needle in app:
                if family:
                    return family
                break
        if "control-software" in app:  # NovaSeq X production writes only this
            return "NovaSeq X"
    serial = (run_info or read_run_info(rundir) or RunInfo("", "", None)).instrument
    for prefix, family in _SERIAL_FAMILIES:
        if serial.startswith(prefix):
            return family
    return None


def read_completion_status(path: Path) -> tuple[str | None, str | None]:
    """(status, error message) from RunCompletionStatus.xml, NovaSeq or NextSeq style."""
    root = _xml_root(path)
    if root is None:
        return None, None
    status = (root.findtext(".//RunStatus") or root.findtext(".//CompletionStatus") or "").strip() or None
    error = (root.findtext(".//RunError/Message") or root.findtext(".//ErrorDescription") or "").strip()
    return status, (error if error and error != "None" else None)


def _newest_mtime(rundir: Path) -> float:
    newest = 0.0
    for dirpath, dirnames, filenames in os.walk(rundir):
        for name in dirnames + filenames:
            try:
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except OSError:
                continue
    return newest


def run_state(rundir: Path, rules: CompletionRules, now: float) -> RunState:
    """Whether ``rundir`` is a finished run, by the precedence in ILLUMINA.md."""
    rundir = Path(rundir)
    info = read_run_info(rundir)
    if info is None:
        return RunState(False, "no parseable RunInfo.xml yet")
    family = instrument_family(rundir, info)

    def aged(marker: Path) -> float:
        try:
            return now - marker.stat().st_mtime
        except OSError:
            return -1.0

    status_path = rundir / rules.status_file
    if status_path.is_file():
        status, error = read_completion_status(status_path)
        if status is not None:
            if aged(status_path) < rules.marker_age_s:
                return RunState(False, f"{rules.status_file} is younger than the marker age", info, family)
            return RunState(True, f"{rules.status_file}: {status}", info, family, status, error, rules.status_file)
    for name in rules.copy_markers:
        if (rundir / name).is_file():
            if aged(rundir / name) < rules.marker_age_s:
                return RunState(False, f"{name} is younger than the marker age", info, family)
            return RunState(True, f"{name} present", info, family, marker=name)
    for name in rules.rta_markers:
        if (rundir / name).is_file():
            wait = max(rules.marker_age_s, rules.quiet_period_s)
            if aged(rundir / name) < wait:
                return RunState(False, f"{name} present; waiting for the quiet period", info, family)
            quiet_for = now - _newest_mtime(rundir)
            if quiet_for < rules.quiet_period_s:
                return RunState(False, f"{name} present but files changed {quiet_for:.0f} s ago", info, family)
            return RunState(True, f"{name} present and quiet for {quiet_for:.0f} s", info, family, marker=name)
    return RunState(False, "no completion marker yet", info, family)
