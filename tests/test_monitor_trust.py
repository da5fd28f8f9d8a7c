"""Trust, the daemon's part: a run folder is moved or deleted only while every entry in
it is in its verified archive, and the archive is still there.

Real `sruns-stream monitor --once` processes, real folders; the oracle is the folder
itself (helpers.tree) against GNU tar's extraction of the archive.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from helpers import UMASK_000, gnu_untar, journal_row, run_cli, start_cli, tree, wait_until

# Real processes killed, stopped or run for many seconds: not the quick inner loop.
pytestmark = pytest.mark.slow


def _config(tmp_path: Path, **extra: object) -> Path:
    conf = {
        "watchdir": str(tmp_path / "watch"),
        "completed_runs_dir": str(tmp_path / "completed"),
        "sqlite_db": str(tmp_path / "sruns.db"),
        "local_dest": str(tmp_path / "archives"),
        "cycle_pause_sec": 1,
        "sentinal_file_age_minutes": 0,
        "quiet_period_sec": 1,
        "threads": 2,
    }
    conf.update(extra)
    path = tmp_path / "conf.json"
    path.write_text(json.dumps(conf))
    return path


def _row(tmp_path: Path, name: str) -> dict:
    return journal_row(tmp_path / "sruns.db", name)


def _once(conf: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    proc = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return proc


def _once_until(conf: Path, tmp_path: Path, name: str, done: str, tries: int = 15) -> dict:
    """`monitor --once` again until the row's ``done`` column is set (each pass takes
    about a second; the quiet period is one)."""
    for _ in range(tries):
        _once(conf, tmp_path)
        row = _row(tmp_path, name)
        if row.get(done):
            return row
    pytest.fail(f"{name}: {done} never set: {_row(tmp_path, name)}")


def _archived_tree(tmp_path: Path, name: str, label: str) -> dict:
    out = tmp_path / "out" / label
    gnu_untar(tmp_path / "archives" / name / f"{name}.tar.gz", out)
    return tree(out / name)


def _run(tmp_path: Path, name: str = "240101_M00001_0001_000000000-DAEMN", size: int = 2 << 20) -> Path:
    import make_fake_run

    run = tmp_path / "watch" / name
    make_fake_run.make_run(run, "miseq", size, seed=31)
    return run


@pytest.mark.timeout(240)
def test_a_file_written_while_the_daemon_archives_is_archived_before_anything_moves(tmp_path: Path) -> None:
    """MiSeq Reporter writes Alignment_* folders into run folders after the run is done:
    the archive that missed them is not reported, nothing moves, and once the folder is
    quiet it is archived again with them; only then is it moved."""
    run = _run(tmp_path, size=48 << 20)
    conf = _config(tmp_path, threads=1, block_size=65536, sync_interval=1 << 20)
    daemon = start_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
    part = tmp_path / "archives" / run.name / f"{run.name}.tar.gz.part"
    wait_until(lambda: part.exists() and part.stat().st_size > 1 << 20, "1 MiB of archive written", proc=daemon)
    pid = _row(tmp_path, run.name)["pid"]
    os.kill(pid, signal.SIGSTOP)  # the archive child: the file lands while it streams
    try:
        (run / "Alignment_1").mkdir()
        (run / "Alignment_1" / "sample_S1.fastq.gz").write_bytes(os.urandom(5000))
    finally:
        os.kill(pid, signal.SIGCONT)
    _, err = daemon.communicate(timeout=120)
    assert daemon.returncode == 0, err
    row = _row(tmp_path, run.name)
    assert row["status"] == "not_running" and row["failures"] == 0 and row["changed_at"]
    assert "Alignment_1" in row["last_error"]
    assert run.is_dir() and not row["moved_at"]  # never moved with a file outside its archive

    row = _once_until(conf, tmp_path, run.name, "moved_at")
    assert row["status"] == "complete" and not run.exists()
    moved = tmp_path / "completed" / run.name
    assert (moved / "Alignment_1" / "sample_S1.fastq.gz").exists()
    assert _archived_tree(tmp_path, run.name, "final") == tree(moved)


@pytest.mark.timeout(180)
def test_a_folder_that_changed_after_its_archive_is_not_moved_but_archived_again(make_run, tmp_path: Path) -> None:
    run = _run(tmp_path)
    conf = _config(tmp_path)
    # Archived by hand with the daemon's journal; then analysis software adds a file.
    first = run_cli("archive", str(run), "--config", str(conf), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (run / "Data" / "Intensities" / "BaseCalls" / "late.fastq.gz").write_bytes(b"late")
    proc = _once(conf, tmp_path)
    row = _row(tmp_path, run.name)
    assert run.is_dir() and not row["moved_at"], proc.stderr
    assert row["status"] == "not_running" and "1 new" in row["last_error"]
    assert "changed after it was archived" in proc.stderr

    row = _once_until(conf, tmp_path, run.name, "moved_at")
    moved = tmp_path / "completed" / run.name
    assert row["status"] == "complete" and (moved / "Data" / "Intensities" / "BaseCalls" / "late.fastq.gz").exists()
    assert _archived_tree(tmp_path, run.name, "again") == tree(moved)


@pytest.mark.timeout(240)
def test_the_sweep_rechecks_the_folder_and_the_archive_before_deleting(tmp_path: Path) -> None:
    run = _run(tmp_path)
    conf = _config(tmp_path, sweep_age_sec=1)
    row = _once_until(conf, tmp_path, run.name, "moved_at")
    moved = Path(row["moved_to"])
    assert moved.is_dir() and not row["swept_at"]

    # Something was written into the moved folder: not swept; archived again from there.
    (moved / "Logs").mkdir(exist_ok=True)
    (moved / "Logs" / "written_after_the_move.log").write_text("x")
    time.sleep(1.1)  # past sweep_age_sec (1 s), counted from the move
    proc = _once(conf, tmp_path)
    row = _row(tmp_path, run.name)
    assert moved.is_dir() and not row["swept_at"], proc.stderr
    assert row["status"] != "complete" or row["finished_at"] > row["created_at"]
    row = _once_until(conf, tmp_path, run.name, "moved_at")
    assert row["status"] == "complete" and row["moved_to"] == str(moved)
    assert _archived_tree(tmp_path, run.name, "re-archived") == tree(moved)

    # The archive vanished: not swept; archived again; swept once there is an archive.
    archive = tmp_path / "archives" / run.name / f"{run.name}.tar.gz"
    kept = tree(moved)
    archive.unlink()
    time.sleep(1.1)
    proc = _once(conf, tmp_path)
    assert moved.is_dir() and not _row(tmp_path, run.name)["swept_at"], proc.stderr
    assert "is gone" in proc.stderr
    row = _once_until(conf, tmp_path, run.name, "swept_at")
    assert not moved.exists() and archive.exists()
    out = tmp_path / "out" / "last"
    gnu_untar(archive, out)
    assert tree(out / run.name) == kept


@pytest.mark.timeout(120)
def test_a_symlink_in_a_watch_directory_is_never_archived(tmp_path: Path) -> None:
    import make_fake_run

    elsewhere = tmp_path / "home" / "240101_M00001_0002_000000000-ELSEW"
    make_fake_run.make_run(elsewhere, "miseq", 1 << 20, seed=32)
    (tmp_path / "watch").mkdir()
    (tmp_path / "watch" / elsewhere.name).symlink_to(elsewhere)
    conf = _config(tmp_path)
    _once(conf, tmp_path)
    assert not _row(tmp_path, elsewhere.name)
    assert not (tmp_path / "archives").exists() or not list((tmp_path / "archives").iterdir())
    assert elsewhere.is_dir()


@pytest.mark.timeout(240)
def test_a_run_folder_deleted_while_it_is_archived_is_said_gone_and_no_longer_watched(tmp_path: Path) -> None:
    """Deleted mid-archive, a folder's files vanish or look rewritten in place (unlinking
    an open file changes its ctime): the daemon says the folder is gone, once, and stops
    watching it instead of waiting for it to be quiet; a folder of that name found later
    is a run again."""
    run = _run(tmp_path)
    saved = tmp_path / "saved"
    shutil.copytree(run, saved, symlinks=True)
    conf = _config(tmp_path)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    # memberio's test hook: the archive child stops before it opens RunInfo.xml, after the scan.
    daemon = start_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path,
                       env={"SRUNS_TEST_PAUSE_BEFORE": f"RunInfo.xml={gate}"})
    wait_until(lambda: Path(f"{gate}.reached").exists(), "the archive child at RunInfo.xml", proc=daemon)
    with open(gate, "wb"):  # the child goes on when this closes
        shutil.rmtree(run)
    _, err = daemon.communicate(timeout=120)
    assert daemon.returncode == 0, err
    said = [line for line in err.splitlines() if run.name in line and "archiving" not in line]
    assert len(said) == 1 and "the run folder" in said[0] and "disappeared during the archive" in said[0], err
    row = _row(tmp_path, run.name)
    assert row["status"] == "not_running" and row["failures"] == 0 and not row["next_attempt_at"]
    assert not row["changed_at"] and not row["rundir_found"]  # waits for no quiet, looks for no folder
    assert "disappeared during the archive" in row["last_error"]

    # The next passes neither start it nor say anything about it.
    for _ in range(2):
        proc = _once(conf, tmp_path)
        assert run.name not in proc.stderr, proc.stderr
    assert {k: v for k, v in _row(tmp_path, run.name).items() if k not in ("updated_at", "published")} == {
        k: v for k, v in row.items() if k not in ("updated_at", "published")
    }

    # It reappears: archived as a run, and moved once archived.
    shutil.copytree(saved, run, symlinks=True)
    row = _once_until(conf, tmp_path, run.name, "moved_at")
    assert row["status"] == "complete"
    assert _archived_tree(tmp_path, run.name, "reappeared") == tree(saved)


@pytest.mark.timeout(240)
def test_the_directories_the_daemon_makes_are_0755_under_umask_000(tmp_path: Path) -> None:
    run = _run(tmp_path)
    conf = _config(tmp_path, completed_runs_dir=str(tmp_path / "new" / "completed"),
                   local_dest=str(tmp_path / "new" / "archives"))
    for _ in range(15):  # as _once_until, each pass under umask 000
        proc = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path, timeout=120, prefix=UMASK_000)
        assert proc.returncode == 0, proc.stderr
        if _row(tmp_path, run.name).get("moved_at"):
            break
    assert (tmp_path / "new" / "completed" / run.name).is_dir()
    made = [tmp_path / "new", tmp_path / "new" / "completed", tmp_path / "new" / "archives",
            tmp_path / "new" / "archives" / run.name]
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in made} == {str(p): "0o755" for p in made}
