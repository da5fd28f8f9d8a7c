"""Is a run folder finished, by its instrument's rules? (The daemon's test before it starts
a run, and `archive`'s before it archives one by hand: `check_finished`.)

Precedence, covering every Illumina family: ``RunCompletionStatus.xml`` when present
(``RunCompleted``/``CompletedAsPlanned`` succeed; ``RunErrored``, ``UserEndedEarly``…
end the run too and are recorded), else ``CopyComplete.txt`` (the instrument's copy
service finished writing the folder), else an RTA or sequencing marker plus a quiet
period with no change in the folder; always a parseable ``RunInfo.xml``.

Marker and XML files are read like everything else in a run folder: through
`safefs.Tree`, never through a link, never a FIFO (a FIFO named ``RunInfo.xml`` would
otherwise hang the daemon in ``open()``), and never more than ``_XML_LIMIT`` bytes.
"""

from __future__ import annotations

import os
import stat
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RunNotFinished, UsageError
from .safefs import Tree

__all__ = [
    "SUCCESS_STATUSES",
    "check_finished",
    "run_folders_in",
    "CompletionRules",
    "RunInfo",
    "RunState",
    "instrument_family",
    "newest_change",
    "parameters_file",
    "read_completion_status",
    "read_run_info",
    "run_state",
]

SUCCESS_STATUSES = ("RunCompleted", "CompletedAsPlanned")
# RunInfo.xml of a NovaSeq X 25B flow cell lists every tile: well under a MiB.
_XML_LIMIT = 16 << 20


@dataclass(frozen=True)
class CompletionRules:
    """Which files mark a run finished, and how old they must be (configurable)."""

    marker_age_s: float = 0.0  # sruns-monitor's sentinal_file_age_minutes, in seconds
    quiet_period_s: float = 1800.0  # RTA-only runs, and runs that changed: no change for this long
    status_file: str = "RunCompletionStatus.xml"
    copy_markers: tuple[str, ...] = ("CopyComplete.txt",)
    rta_markers: tuple[str, ...] = (
        "RTAComplete.txt",
        "RTAComplete.xml",
        "SequenceComplete.txt",
        "SequencingComplete.txt",
    )

    @classmethod
    def from_config(cls, sentinal_file_age_minutes: int, quiet_period_sec: int) -> CompletionRules:
        """The rules the config's keys set: for the daemon, and for `archive` by hand."""
        return cls(marker_age_s=sentinal_file_age_minutes * 60.0, quiet_period_s=float(quiet_period_sec))


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


def _marker_stat(rundir: Path, name: str) -> os.stat_result | None:
    """The stat of a regular file ``name`` directly in ``rundir`` (links are not markers)."""
    try:
        st = os.lstat(Path(rundir) / name)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _read_small(rundir: Path, name: str) -> bytes | None:
    """The bytes of regular file ``name`` in ``rundir``, or None (absent, a link, a FIFO,
    unreadable, or too large to be an instrument's XML)."""
    try:
        with Tree(rundir) as tree:
            fd = tree.open_file(os.fsencode(name))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _XML_LIMIT:
            return None
        return os.read(fd, _XML_LIMIT + 1)[:_XML_LIMIT]
    except OSError:
        return None
    finally:
        os.close(fd)


def _xml_root(rundir: Path, name: str) -> Any:
    data = _read_small(rundir, name)
    if data is None:
        return None
    try:
        return ET.fromstring(data)
    except ET.ParseError:
        return None


def read_run_info(rundir: Path) -> RunInfo | None:
    """Run id, instrument serial and flow cell from RunInfo.xml; None if absent or broken."""
    root = _xml_root(Path(rundir), "RunInfo.xml")
    run = root.find("Run") if root is not None else None
    if run is None or not run.get("Id"):
        return None
    return RunInfo(
        run_id=run.get("Id"),
        instrument=(run.findtext("Instrument") or "").strip(),
        flowcell=(run.findtext("Flowcell") or "").strip() or None,
    )


_SERIAL_FAMILIES = (  # longest prefixes first
    ("ST-E", "HiSeq X"), ("NDX", "NextSeq 550Dx"), ("LH", "NovaSeq X"), ("VH", "NextSeq 1000/2000"),
    ("VL", "NextSeq 1000/2000"), ("MN", "MiniSeq"), ("ML", "MiniSeq"), ("FS", "iSeq 100"),
    ("NS", "NextSeq 500/550"), ("NB", "NextSeq 500/550"), ("SN", "HiSeq 2000/2500"),
    ("D", "HiSeq 2000/2500"), ("J", "HiSeq 3000/4000"), ("K", "HiSeq 3000/4000"), ("E", "HiSeq X"),
    ("A", "NovaSeq 6000"), ("M", "MiSeq"),
)


def parameters_file(rundir: Path) -> str | None:
    """RunParameters.xml or runParameters.xml (older HiSeq and MiSeq), by name."""
    for name in ("RunParameters.xml", "runParameters.xml"):
        if _marker_stat(rundir, name) is not None:
            return name
    return None


def instrument_family(rundir: Path, run_info: RunInfo | None = None) -> str | None:
    """The instrument family, from RunParameters.xml first and the serial's prefix second."""
    params = parameters_file(rundir)
    root = _xml_root(Path(rundir), params) if params else None
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


def read_completion_status(rundir: Path, name: str = "RunCompletionStatus.xml") -> tuple[str | None, str | None]:
    """(status, error message) from RunCompletionStatus.xml, NovaSeq or NextSeq style."""
    root = _xml_root(Path(rundir), name)
    if root is None:
        return None, None
    status = (root.findtext(".//RunStatus") or root.findtext(".//CompletionStatus") or "").strip() or None
    error = (root.findtext(".//RunError/Message") or root.findtext(".//ErrorDescription") or "").strip()
    return status, (error if error and error != "None" else None)


def newest_change(rundir: Path) -> float:
    """The latest mtime or ctime of anything in the folder, links not followed.

    ctime as well as mtime: a file copied in with its original mtime kept (``rsync -t``,
    ``cp -p``) still gets a new ctime.
    """
    newest = 0.0
    for dirpath, dirnames, filenames in os.walk(rundir):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            newest = max(newest, st.st_mtime, st.st_ctime)
    return newest


def run_state(rundir: Path, rules: CompletionRules, now: float) -> RunState:
    """Whether ``rundir`` is a finished run, by the precedence in the module docstring."""
    rundir = Path(rundir)
    info = read_run_info(rundir)
    if info is None:
        return RunState(False, "no parseable RunInfo.xml yet")
    family = instrument_family(rundir, info)

    def aged(st: os.stat_result) -> float:
        return now - st.st_mtime

    def young(name: str, st: os.stat_result, wait: float, what: str) -> RunState:
        return RunState(False, f"{name} is {aged(st):.0f} s old; waiting until it is {wait:.0f} s old ({what})",
                        info, family)

    status_st = _marker_stat(rundir, rules.status_file)
    if status_st is not None:
        status, error = read_completion_status(rundir, rules.status_file)
        if status is not None:
            if aged(status_st) < rules.marker_age_s:
                return young(rules.status_file, status_st, rules.marker_age_s, "sentinal_file_age_minutes")
            return RunState(True, f"{rules.status_file}: {status}", info, family, status, error, rules.status_file)
    for name in rules.copy_markers:
        st = _marker_stat(rundir, name)
        if st is not None:
            if aged(st) < rules.marker_age_s:
                return young(name, st, rules.marker_age_s, "sentinal_file_age_minutes")
            return RunState(True, f"{name} present", info, family, marker=name)
    for name in rules.rta_markers:
        st = _marker_stat(rundir, name)
        if st is not None:
            wait = max(rules.marker_age_s, rules.quiet_period_s)
            if aged(st) < wait:
                return young(name, st, wait, "quiet_period_sec: without CopyComplete.txt the folder must be quiet")
            quiet_for = now - newest_change(rundir)
            if quiet_for < rules.quiet_period_s:
                return RunState(False, f"{name} present but files changed {quiet_for:.0f} s ago", info, family)
            return RunState(True, f"{name} present and quiet for {quiet_for:.0f} s", info, family, marker=name)
    markers = ", ".join((rules.status_file, *rules.copy_markers, *rules.rta_markers))
    return RunState(False, f"no completion marker yet (none of {markers})", info, family)


def run_folders_in(folder: Path) -> list[str]:
    """The names of the directories directly in ``folder`` that hold a RunInfo.xml: run
    folders, so ``folder`` is a watch directory, not a run (links are not followed)."""
    found = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and _marker_stat(Path(entry.path), "RunInfo.xml"):
                    found.append(entry.name)
    except OSError:
        return []
    return sorted(found)


def check_finished(rundir: Path, rules: CompletionRules, now: float, *, anyway: bool = False) -> RunState | None:
    """The daemon's completion rules (`run_state`) applied to a run archived by hand.
    A folder holding run folders (a watch directory) is refused whatever ``anyway`` says:
    one archive of several runs is never what is wanted. An unfinished run, or a folder
    that is no run, is refused unless ``anyway`` (`--not-finished`, which the daemon
    passes: it judged already); then the rules are not applied at all (None), since an
    RTA-only run's quiet period walks the whole folder."""
    runs = run_folders_in(rundir)
    if runs and _marker_stat(rundir, "RunInfo.xml") is None:
        shown = ", ".join(runs[:3]) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
        raise UsageError(f"{rundir} holds run folders ({shown}), it is not one: archive each run folder "
                         "(or let the daemon watch this directory)")
    if anyway:
        return None
    state = run_state(rundir, rules, now)
    if not state.complete:
        what = "is not a run folder" if state.run_info is None else "is not a finished run"
        raise RunNotFinished(f"{rundir} {what}: {state.reason}; the daemon would not archive it yet. "
                             "--not-finished archives it anyway")
    return state
