"""The sweep race: a file written into a moved run folder while the daemon makes sure
its archive is intact is never deleted.

The archive is checked first and the walk that proves the folder archived comes last,
right before the deletion, which removes only what that walk listed. What lands in the
folder before the walk makes the folder "changed" (nothing is deleted, it is archived
again); what lands after it survives, with the directories that hold it.

Real `sruns-stream monitor --once` processes archive and move the runs; the races are
made at points the tests control: a GCS answer held by tests/faultproxy.py (the
emulator cannot be slow on demand), and hooks around the retention's own calls
(`probe_archive`, `scan_run_folder`) where the daemon runs in the test's process. The
oracle is the folder on disk (helpers.tree) against its copy before the sweep.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from faultproxy import Fault, FaultProxy
from helpers import journal_row, run_cli, start_cli, tree

from sruns_stream.config import load_config
from sruns_stream.daemon import retention
from sruns_stream.daemon.retention import Retention
from sruns_stream.runfolder.safefs import Listed, remove_listed
from sruns_stream.runfolder.scan import scan_run_folder
from sruns_stream.state.journal import Journal

NAME = "240101_M00001_0001_000000000-SWEEP"
LATE = {"written_late.txt": b"late\n", "Alignment_2/late.fastq.gz": b"@r1\nACGT\n+\nIIII\n"}


def _config(tmp_path: Path, **extra: object) -> Path:
    conf = {
        "watchdir": str(tmp_path / "watch"),
        "completed_runs_dir": str(tmp_path / "completed"),
        "sqlite_db": str(tmp_path / "sruns.db"),
        "local_dest": str(tmp_path / "archives"),
        "cycle_pause_sec": 1,
        "sentinal_file_age_minutes": 0,
        "quiet_period_sec": 1,
        "sweep_age_sec": 1,
        "threads": 2,
    }
    conf.update(extra)
    path = tmp_path / "conf.json"
    path.write_text(json.dumps({k: v for k, v in conf.items() if v is not None}))
    return path


def _archived_and_moved(tmp_path: Path, conf: Path, env: dict[str, str] | None = None) -> Path:
    """A run archived and moved by a real `monitor --once`, already past its sweep age."""
    import make_fake_run

    make_fake_run.make_run(tmp_path / "watch" / NAME, "miseq", 1 << 20, seed=41)
    proc = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    row = journal_row(tmp_path / "sruns.db", NAME)
    assert row["status"] == "complete" and row["moved_to"] and not row["swept_at"], proc.stderr
    # Past sweep_age_sec by the journal's time of the move (what the sweep reads), not by waiting.
    with sqlite3.connect(tmp_path / "sruns.db") as db:
        db.execute("UPDATE tasks SET moved_at = 1")
    return Path(row["moved_to"])


def _write_late(folder: Path) -> None:
    for rel, data in LATE.items():
        (folder / rel).parent.mkdir(exist_ok=True)
        (folder / rel).write_bytes(data)


def _late_files_kept(folder: Path) -> None:
    for rel, data in LATE.items():
        assert (folder / rel).read_bytes() == data, rel


def _retention(tmp_path: Path, conf: Path) -> tuple[Retention, Journal]:
    """The daemon's retention in this process, its clock far past the sweep age."""
    journal = Journal(tmp_path / "sruns.db")
    return Retention(load_config(conf), journal, clock=lambda: 1e9, busy=lambda name: False), journal


def _sweep_until_checked(ret: Retention) -> None:
    """One sweep cycle, and the next once the local archive's read-back has finished (as
    `Monitor` does at its end: `finish_checks`)."""
    ret.sweep()
    ret.finish_checks(threading.Event())


@pytest.mark.timeout(240)
def test_a_file_written_while_gcs_answers_slowly_is_not_swept(gcs, tmp_path: Path) -> None:
    """The issue's reproduction: the daemon walks the folder, asks GCS whether the archive
    is intact (8 s through a slow proxy), then deletes the folder. Old code: the file
    written during that answer was deleted with the folder and is in no archive."""
    with FaultProxy(gcs.url) as proxy:
        env = {"STORAGE_EMULATOR_HOST": proxy.url}
        conf = _config(tmp_path, local_dest=None, gcp_bucket_name=gcs.bucket, chunk_size=256 * 1024)
        moved = _archived_and_moved(tmp_path, conf, env)
        before = tree(moved)

        proxy.add(Fault("slow", target="metadata"))
        daemon = start_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path, env=env)
        try:
            assert proxy.holds.held.wait(60), "the daemon never asked GCS about the archive"
            _write_late(moved)  # while GCS has not answered yet
        finally:
            proxy.release()
        _, err = daemon.communicate(timeout=120)
        assert daemon.returncode == 0, err
        asked = proxy.exchanges("metadata")
        assert asked and asked[0].fault == "slow" and NAME in asked[0].path

    row = journal_row(tmp_path / "sruns.db", NAME)
    _late_files_kept(moved)
    # Nothing deleted: the walk after the answer saw the new entries; archived again from here.
    assert {k: v for k, v in tree(moved).items() if k not in (*LATE, "Alignment_2")} == before
    assert not row["swept_at"] and row["status"] == "not_running"
    assert "3 new" in row["last_error"] and "written_late.txt" in row["last_error"], err


@pytest.mark.slow  # an archive and a move by a real daemon first
@pytest.mark.timeout(240)
def test_a_file_written_during_the_last_look_at_a_local_archive_is_not_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local archive is read back whole on a thread, then looked at once more (still
    there, same size) right before the sweep. Old code walked the folder before that
    last look: a file written during it was deleted. (A file written during the
    read-back itself was seen by the old code's next walk, so the hook writes during the
    last look, the old code's window.)"""
    conf = _config(tmp_path)
    moved = _archived_and_moved(tmp_path, conf)
    before = tree(moved)
    real = retention.probe_archive
    looks: list[bool] = []

    def probe(*args: Any, read: bool = False, **kw: Any) -> Any:
        looks.append(read)
        if not read:
            _write_late(moved)  # during the look that comes after the read-back
        return real(*args, read=read, **kw)

    monkeypatch.setattr(retention, "probe_archive", probe)
    ret, journal = _retention(tmp_path, conf)
    try:
        _sweep_until_checked(ret)
    finally:
        ret.close()
        journal.close()
    assert looks == [True, False]
    row = journal_row(tmp_path / "sruns.db", NAME)
    _late_files_kept(moved)
    assert {k: v for k, v in tree(moved).items() if k not in (*LATE, "Alignment_2")} == before
    assert not row["swept_at"] and row["status"] == "not_running" and "3 new" in row["last_error"]


@pytest.mark.timeout(240)
def test_what_lands_after_the_walk_survives_and_only_the_listed_entries_are_swept(
    gcs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk is the last look, but a walk takes time (a minute per 100,000 files on a
    share): a file written after it is in neither the walk nor the archive. Old code:
    rmtree deleted it. Now the deletion removes what the walk listed and nothing else;
    the new file, its new directory, a file replaced after the walk, and the run folder
    holding them stay; the run is not swept, and is not archived again from what is left
    (that archive would replace the one holding everything deleted)."""
    conf = _config(tmp_path, local_dest=None, gcp_bucket_name=gcs.bucket, chunk_size=256 * 1024)
    moved = _archived_and_moved(tmp_path, conf)
    replaced = moved / "RunInfo.xml"
    replaced_with = replaced.read_bytes() + b"<!-- rewritten -->\n"
    real = retention.scan_run_folder
    walks: list[Path] = []

    def scan(folder: Any, *args: Any, **kw: Any) -> Any:
        walk = real(folder, *args, **kw)
        walks.append(Path(folder))
        _write_late(moved)
        tmp = moved / ".RunInfo.xml.tmp"
        tmp.write_bytes(replaced_with)
        os.replace(tmp, replaced)  # a new inode under a listed name
        return walk

    monkeypatch.setattr(retention, "scan_run_folder", scan)
    ret, journal = _retention(tmp_path, conf)
    try:
        ret.sweep()
        ret.sweep()  # the next cycle leaves the folder alone: no walk, no archive of the leftovers
    finally:
        ret.close()
        journal.close()
    assert walks == [moved]
    _late_files_kept(moved)
    assert replaced.read_bytes() == replaced_with
    assert sorted(tree(moved)) == ["Alignment_2", "Alignment_2/late.fastq.gz", "RunInfo.xml", "written_late.txt"]
    row = journal_row(tmp_path / "sruns.db", NAME)
    assert not row["swept_at"] and row["status"] == "complete" and not row["moved_to"]
    assert "3 entries appeared or changed" in row["last_error"] and "RunInfo.xml" in row["last_error"]
    assert gcs.resource(f"{NAME}/{NAME}.tar.gz") is not None  # the archive is untouched


def test_remove_listed_removes_only_what_is_still_as_listed_and_follows_no_link(tmp_path: Path) -> None:
    """The deletion on its own: a link planted where a listed directory was is not
    entered (what it points to survives), a file changed in place (same inode, new size)
    survives, and new entries survive with their directories."""
    run = tmp_path / "run"
    (run / "Data" / "Lane1").mkdir(parents=True)
    (run / "Logs").mkdir()
    for rel in ("RunInfo.xml", "Data/Lane1/a.bcl", "Data/Lane1/b.bcl", "Logs/x.log", "Logs/y.log"):
        (run / rel).write_bytes(rel.encode())
    os.symlink("RunInfo.xml", run / "link")
    walk = scan_run_folder(run)
    listed = [Listed(e.rel, e.kind, e.ino, e.size, e.mtime_ns) for e in walk.entries]

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.log").write_bytes(b"not the run's")
    os.rename(run / "Logs", tmp_path / "Logs.moved-away")
    os.symlink(outside, run / "Logs")  # where a listed directory was
    with open(run / "Data" / "Lane1" / "b.bcl", "ab") as f:
        f.write(b"more")  # changed in place
    (run / "Data" / "Lane1" / "c.bcl").write_bytes(b"new")

    left = remove_listed(run, listed)
    assert sorted(left) == [b"Data/Lane1/b.bcl", b"Data/Lane1/c.bcl", b"Logs", b"Logs/x.log", b"Logs/y.log"]
    assert (outside / "x.log").read_bytes() == b"not the run's"
    assert sorted(tree(run)) == ["Data", "Data/Lane1", "Data/Lane1/b.bcl", "Data/Lane1/c.bcl", "Logs"]
    assert sorted(tree(tmp_path / "Logs.moved-away")) == ["x.log", "y.log"]

    # Once nothing unlisted is left, the folder goes too.
    os.unlink(run / "Logs")
    for rel in ("Data/Lane1/b.bcl", "Data/Lane1/c.bcl"):
        os.unlink(run / rel)
    assert remove_listed(run, listed) == []
    assert not run.exists()


@pytest.mark.slow  # an archive, a move and a sweep by real daemons
@pytest.mark.timeout(240)
def test_a_sweep_killed_half_way_is_finished_and_the_run_is_not_archived_again(tmp_path: Path) -> None:
    """A sweep killed half-way (kill -9, a reboot) leaves the folder with part of its
    archived entries gone and the journal not saying swept. Old code took the folder for
    one that changed after its archive and handed it back: archived again as it was,
    the new archive would have replaced the one holding what the sweep had deleted. Now
    everything still there is as archived, so the next sweep finishes the job."""
    conf = _config(tmp_path)
    moved = _archived_and_moved(tmp_path, conf)
    archive = tmp_path / "archives" / NAME / f"{NAME}.tar.gz"
    archived = archive.read_bytes()
    # What the sweep deletes first (its listing bottom-up, last directory first) is gone,
    # the run's identity (RunInfo.xml, the completion markers) is still there.
    first = max(p for p in moved.iterdir() if p.is_dir())
    shutil.rmtree(first)
    assert (moved / "RunInfo.xml").exists()

    proc = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = journal_row(tmp_path / "sruns.db", NAME)
    assert not moved.exists() and row["swept_at"] and row["status"] == "complete", proc.stderr
    assert "gone from" in proc.stderr and "sweeping it" in proc.stderr
    assert archive.read_bytes() == archived


def test_remove_listed_removes_nothing_from_a_folder_that_is_not_the_one_walked(tmp_path: Path) -> None:
    """The run folder swapped for a link to another folder after the walk: the link's
    target is not entered, the error names the folder."""
    run = tmp_path / "run"
    (run / "Data").mkdir(parents=True)
    (run / "Data" / "a.bcl").write_bytes(b"a")
    listed = [Listed(e.rel, e.kind, e.ino, e.size, e.mtime_ns) for e in scan_run_folder(run).entries]
    os.rename(run, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", run)
    with pytest.raises(OSError, match="not the directory that was walked") as raised:
        remove_listed(run, listed)
    assert raised.value.filename == str(run)
    assert (tmp_path / "elsewhere" / "Data" / "a.bcl").read_bytes() == b"a"
