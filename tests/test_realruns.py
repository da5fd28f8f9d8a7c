"""The real run-folder pieces in ../shared/realruns round-trip through our archive."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import gnu_untar, gzip_ok, realruns_dir, run_in_process, tree

from sruns_stream.runfolder.completion import run_folders_in

# Every real run piece archived and untarred: together, seconds.
pytestmark = pytest.mark.slow

REALRUNS = realruns_dir()
PIECES = sorted(p.name for p in REALRUNS.iterdir() if p.is_dir()) if REALRUNS else []


@pytest.mark.skipif(REALRUNS is None, reason="../shared/realruns (or $SRUNS_REALRUNS) is absent")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("piece", PIECES)
def test_real_run_piece_round_trips(piece: str, tmp_path: Path) -> None:
    assert REALRUNS is not None
    run = tmp_path / piece
    # A piece that is a folder of runs (the "xml" collection) goes one level down: archive
    # refuses a folder whose own folders are runs (a watch directory given by mistake).
    inner = run / "runs" if run_folders_in(REALRUNS / piece) else run
    shutil.copytree(REALRUNS / piece, inner, symlinks=True)
    # --not-finished: a piece of a real run, copied now: its markers are young, or cut away.
    proc = run_in_process("archive", str(run), "--dest", str(tmp_path / "d"), "--json", "--not-finished",
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    archive = Path(json.loads(proc.stdout)["location"])
    gzip_ok(archive)
    gnu_untar(archive, tmp_path / "out")
    assert tree(tmp_path / "out" / piece) == tree(run)
