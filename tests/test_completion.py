"""Completion rules on the real RunInfo/RunParameters files of every instrument."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from helpers import realruns_dir

from sruns_stream.runfolder.completion import CompletionRules, instrument_family, read_run_info, run_state

REAL = realruns_dir()
XML = REAL / "xml" if REAL else None
FOLDERS = sorted(p.name for p in XML.iterdir() if p.is_dir()) if XML else []
needs_real = pytest.mark.skipif(XML is None, reason="../shared/realruns (or $SRUNS_REALRUNS) is absent")

EXPECTED_FAMILY = {
    "HiSeq2000_2010_npg": "HiSeq 2000/2500", "HiSeq2500_HighOutput": "HiSeq 2000/2500",
    "HiSeq2500_Rapid": "HiSeq 2000/2500", "HiSeq4000": "HiSeq 3000/4000", "HiSeqX": "HiSeq X",
    "MiSeq": "MiSeq", "MiSeq_2012_npg": "MiSeq", "MiniSeq": "MiniSeq",
    "NextSeq2000_interop_fixture": "NextSeq 1000/2000", "NextSeq500": "NextSeq 500/550",
    "NextSeq550": "NextSeq 500/550", "NovaSeq6000": "NovaSeq 6000", "NovaSeq6000_npg": "NovaSeq 6000",
    "NovaSeqXPlus": "NovaSeq X", "NovaSeqXPlus_prod_staging": "NovaSeq X", "iSeq100_interop_fixture": "iSeq 100",
}
NOVASEQ_OK = "<RunCompletionStatus><RunStatus>RunCompleted</RunStatus></RunCompletionStatus>"
NOVASEQ_ERR = (
    "<RunCompletionStatus><RunStatus>RunErrored</RunStatus><RunError><Type>X</Type>"
    "<Message>I/O data integrity check failed</Message></RunError></RunCompletionStatus>"
)
NEXTSEQ_ABORT = (
    "<RunCompletionStatus><CompletionStatus>UserEndedEarly</CompletionStatus>"
    "<ErrorDescription>Thread was aborted</ErrorDescription></RunCompletionStatus>"
)
RULES = CompletionRules(marker_age_s=600, quiet_period_s=1800)


def _copy(folder: str, tmp_path: Path) -> Path:
    assert XML is not None
    run = tmp_path / folder
    shutil.copytree(XML / folder, run)
    (run / "RTAComplete.txt").unlink(missing_ok=True)  # start from an unfinished run
    for f in run.iterdir():  # written just now, as in a run being sequenced
        os.utime(f)
    return run


def _touch(path: Path, text: str = "", age_s: float = 0) -> None:
    path.write_text(text)
    t = time.time() - age_s
    os.utime(path, (t, t))


@needs_real
@pytest.mark.parametrize("folder", FOLDERS)
def test_family_and_run_id_from_the_real_files(folder: str) -> None:
    assert XML is not None
    assert instrument_family(XML / folder) == EXPECTED_FAMILY[folder]
    info = read_run_info(XML / folder)
    if (XML / folder / "RunInfo.xml").exists():
        assert info is not None and info.run_id and info.instrument
    else:
        assert info is None


@needs_real
@pytest.mark.parametrize("folder", [f for f in FOLDERS if f not in ("NextSeq500", "iSeq100_interop_fixture")])
def test_markers_in_precedence_with_ages(folder: str, tmp_path: Path) -> None:
    run = _copy(folder, tmp_path)
    now = time.time()
    assert not run_state(run, RULES, now).complete

    # An RTA marker alone waits for the quiet period: files changed just now.
    _touch(run / "RTAComplete.txt", "RTA 2.4.11 completed", age_s=3600)
    state = run_state(run, RULES, now)
    assert not state.complete and "changed" in state.reason
    assert run_state(run, RULES, now + 1900).complete

    # CopyComplete.txt is trusted once older than the marker age.
    _touch(run / "CopyComplete.txt", age_s=60)
    assert not run_state(run, RULES, now).complete
    state = run_state(run, RULES, now + 600)
    assert state.complete and state.marker == "CopyComplete.txt" and not state.errored

    # RunCompletionStatus.xml decides, and an errored run is complete (archived) but flagged.
    _touch(run / "RunCompletionStatus.xml", NOVASEQ_ERR, age_s=700)
    state = run_state(run, RULES, now)
    assert state.complete and state.errored
    assert (state.instrument_status, state.instrument_error) == ("RunErrored", "I/O data integrity check failed")
    assert state.instrument == EXPECTED_FAMILY[folder]


@needs_real
def test_nextseq_style_status_and_success_values(tmp_path: Path) -> None:
    run = _copy("NextSeq550", tmp_path)
    _touch(run / "RunCompletionStatus.xml", NEXTSEQ_ABORT, age_s=700)
    state = run_state(run, RULES, time.time())
    assert state.complete and state.errored and state.instrument_status == "UserEndedEarly"
    _touch(run / "RunCompletionStatus.xml", NOVASEQ_OK, age_s=700)
    state = run_state(run, RULES, time.time())
    assert state.complete and not state.errored


def test_no_run_info_means_not_a_run_yet(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    _touch(run / "CopyComplete.txt", age_s=10_000)
    assert run_state(run, RULES, time.time()).reason == "no parseable RunInfo.xml yet"
    (run / "RunInfo.xml").write_text("<RunInfo><Run Id=")  # being written
    assert not run_state(run, RULES, time.time()).complete


def test_markers_are_configurable(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "RunInfo.xml").write_text('<RunInfo><Run Id="X_1"><Instrument>M1</Instrument></Run></RunInfo>')
    _touch(run / "Done.flag", age_s=10)
    assert not run_state(run, RULES, time.time()).complete
    rules = CompletionRules(copy_markers=("Done.flag",))
    assert run_state(run, rules, time.time()).complete
