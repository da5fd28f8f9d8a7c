"""Reading ahead on a pool: the same archive bytes whatever the pool, the same checks,
the same crash and stop behaviour. Real processes on real files; the oracle is an
archive made with no read-ahead at all (and GNU tar against the folder)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from helpers import gnu_untar, journal_row, run_in_process, sigterm_once_past, start_cli, tree, wait_until

from sruns_stream.runfolder.scan import scan_run_folder

SMALL = 1 << 20  # larger files span several 64 KiB blocks: read through one shared descriptor
# --not-finished: folders made for what is tested here, not for their completion markers.
FLAGS = ("--block-size", "64K", "--sync-interval", "1M", "--threads", "2", "--json", "--not-finished")
SERIAL = ("--read-threads", "0")


def _mixed_run(tmp_path: Path, n_small: int = 1500) -> Path:
    """Many small files in several directories, empty files, links, and files larger
    than what is read whole (their head is read ahead, the rest by the stream)."""
    run = tmp_path / "240101_M00001_0001_000000000-AHEAD"
    for d in range(10):
        (run / f"d{d}").mkdir(parents=True)
        for f in range(n_small // 10):
            (run / f"d{d}" / f"f{f:04d}.bcl").write_bytes(os.urandom(64) * ((f % 37) + 1))
    (run / "d3" / "empty.txt").write_bytes(b"")
    os.symlink("d3/empty.txt", run / "link")
    (run / "large").mkdir()
    for i in range(3):
        (run / "large" / f"big{i}.bin").write_bytes(os.urandom(SMALL + 12345 * (i + 1)))
    (run / "zzz.txt").write_text("the last member")
    return run


def _archive(run: Path, tmp_path: Path, label: str, *flags: str) -> bytes:
    proc = run_in_process("archive", str(run), "--dest", str(tmp_path / label), "--journal",
                          str(tmp_path / f"{label}.db"), *FLAGS, *flags, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return Path(json.loads(proc.stdout)["location"]).read_bytes()


@pytest.mark.slow  # the same run archived five ways
@pytest.mark.timeout(180)
def test_the_archive_is_the_same_with_read_ahead_off_shallow_deep_and_on_many_threads(tmp_path: Path) -> None:
    run = _mixed_run(tmp_path)
    reference = _archive(run, tmp_path, "serial", *SERIAL)
    for label, flags in {
        "one-thread-one-batch": ("--read-threads", "1", "--read-ahead", "1"),
        "deep": ("--read-threads", "4", "--read-ahead", "64M"),
        "many-threads": ("--read-threads", "16", "--read-ahead", "1M"),
    }.items():
        assert _archive(run, tmp_path, label, *flags) == reference, label
    gnu_untar(tmp_path / "serial" / run.name / f"{run.name}.tar.gz", tmp_path / "out")
    assert tree(tmp_path / "out" / run.name) == tree(run)


def test_the_walk_gives_the_same_manifest_on_any_number_of_threads(tmp_path: Path) -> None:
    run = _mixed_run(tmp_path, n_small=300)
    serial = scan_run_folder(run, 1)
    for threads in (2, 8, 32):
        assert scan_run_folder(run, threads).entries == serial.entries


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["rewritten", "truncated", "deleted"])
def test_a_file_changed_while_it_may_sit_read_ahead_is_still_caught(tmp_path: Path, how: str) -> None:
    """Stopped mid-stream, a file a little ahead of the stream (read ahead already, or
    about to be) is changed: whichever check sees it, the stream's own or the walk that
    closes the archive, the run is not reported archived (exit 3, naming the file)."""
    run = _mixed_run(tmp_path, n_small=3000)
    (run / "d0" / "aaa_first.bin").write_bytes(os.urandom(8 << 20))  # the stream is inside it a while
    dest = tmp_path / "dest"
    part = dest / run.name / f"{run.name}.tar.gz.part"
    proc = start_cli("archive", str(run), "--dest", str(dest), "--journal", str(tmp_path / "j.db"), *FLAGS,
                     "--read-threads", "4", "--read-ahead", "64M", cwd=tmp_path)
    wait_until(lambda: part.exists() and part.stat().st_size > 1 << 20, "1 MiB of archive", proc=proc)
    proc.send_signal(signal.SIGSTOP)
    victim = run / "d0" / "f0005.bcl"
    try:
        st = victim.stat()
        if how == "rewritten":
            victim.write_bytes(bytes(b ^ 0xFF for b in victim.read_bytes()))
            os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
        elif how == "truncated":
            os.truncate(victim, 10)
        else:
            victim.unlink()
    finally:
        proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "f0005.bcl" in err and "Traceback" not in err
    # Not reported archived (an archive of the folder as scanned may be stored: the
    # journal, and so Firestore, say it is not the run's).
    row = journal_row(tmp_path / "j.db", run.name)
    assert row["status"] == "not_running" and row["changed_at"]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kill_9_with_a_full_read_ahead_buffer_resumes_within_the_bound(tmp_path: Path) -> None:
    run = _mixed_run(tmp_path, n_small=4000)
    flags = ("--read-threads", "8", "--read-ahead", "256M")
    reference = _archive(run, tmp_path, "ref", *flags)
    dest = tmp_path / "dest"
    part = dest / run.name / f"{run.name}.tar.gz.part"
    proc = start_cli("archive", str(run), "--dest", str(dest), "--journal", str(tmp_path / "j.db"), *FLAGS, *flags,
                     cwd=tmp_path)
    wait_until(lambda: part.exists() and part.stat().st_size > len(reference) // 2, "half the archive", proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    at_kill = part.stat().st_size
    done = run_in_process("archive", str(run), "--dest", str(dest), "--journal", str(tmp_path / "j.db"), *FLAGS, *flags,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["resumed_from_archive"] > 0 and at_kill - result["resumed_from_archive"] <= (1 << 20) + 65536 + 1024
    assert Path(result["location"]).read_bytes() == reference


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_stop_request_with_the_pool_busy_exits_130_and_resumes(tmp_path: Path) -> None:
    run = _mixed_run(tmp_path, n_small=4000)
    flags = ("--read-threads", "16", "--read-ahead", "256M")
    reference = _archive(run, tmp_path, "ref", *flags)
    dest = tmp_path / "dest"
    db = tmp_path / "j.db"
    stopped = 0
    for fraction in (0.2, 0.5):
        proc = start_cli("archive", str(run), "--dest", str(dest), "--journal", str(db), *FLAGS, *flags, cwd=tmp_path)
        stopped += sigterm_once_past(proc, db, run.name, int(fraction * len(reference)))
    assert stopped >= 1
    done = run_in_process("archive", str(run), "--dest", str(dest), "--journal", str(db), *FLAGS, *flags, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert Path(json.loads(done.stdout)["location"]).read_bytes() == reference


def test_read_settings_are_checked(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for flags, word in ((("--read-threads", "-1"), "read_threads"), (("--read-ahead", "-5"), "read_ahead")):
        bad = run_in_process("archive", str(run), "--dest", str(tmp_path / "d"), *flags, cwd=tmp_path)
        assert bad.returncode == 2 and word in bad.stderr and "Traceback" not in bad.stderr
