"""Crashes are part of the contract: kill -9 at any moment, run again, get the same bytes.

These tests SIGKILL a real `sruns-stream archive` process while it writes, then run
the same command again, and compare against an uninterrupted run of the same folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import zlib
from pathlib import Path

import google_crc32c
import pytest
from helpers import gnu_untar, journal_row, run_cli, sigterm_once_past, start_cli, tree, wait_until

from sruns_stream.state.journal import Journal

# Real processes killed, stopped or run for many seconds: not the quick inner loop.
pytestmark = pytest.mark.slow

BLOCK = 64 * 1024
SYNC = 1 << 20
# --not-finished: folders made for what is tested here, not for their completion markers.
FLAGS = ("--block-size", "64K", "--sync-interval", "1M", "--threads", "2", "--json", "--not-finished")
# What a local archive can hold past the journal's checkpoint at a kill, whatever the
# machine's load (pieces are blocks' deflate output: a block plus its framing at most):
# - a sync starts once the writer is half an interval past the previous sync's start and
#   that sync has finished, so the disk is at most one interval and two pieces ahead of
#   what is synced;
# - the main thread records a sync after its next piece is queued: one more piece;
# - the checkpoint recorded is the newest at or below the synced offset: a block below.
REDO_BOUND = SYNC + 4 * BLOCK + 1024


def _start(run: Path, dest: Path, cwd: Path, *extra: str) -> subprocess.Popen[str]:
    return start_cli("archive", str(run), "--dest", str(dest), *FLAGS, *extra, cwd=cwd)


def _kill_when_part_reaches(proc: subprocess.Popen[str], part: Path, size: int) -> int:
    """SIGKILL the process once the .part file holds at least ``size`` bytes; its size then."""
    wait_until(lambda: part.exists() and part.stat().st_size >= size, f"{part.name} at {size} bytes", proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return part.stat().st_size


def _reference(run: Path, tmp_path: Path) -> bytes:
    """The archive of an uninterrupted run with the same flags: the oracle for resumes."""
    ref = run_cli("archive", str(run), "--dest", str(tmp_path / "ref"), *FLAGS,
                  "--journal", str(tmp_path / "ref.db"), cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    return Path(json.loads(ref.stdout)["location"]).read_bytes()


def _raw_len(gz_prefix: bytes) -> int:
    """How many raw bytes a prefix of the archive decodes to (the oracle for redone work)."""
    return len(zlib.decompressobj(31).decompress(gz_prefix))


@pytest.mark.timeout(240)
def test_kill_9_twice_then_resume_gives_identical_bytes_and_bounded_rework(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 40 << 20, seed=3)
    reference = _reference(run, tmp_path)

    dest = tmp_path / "dest"
    part = dest / run.name / f"{run.name}.tar.gz.part"
    final = part.with_name(f"{run.name}.tar.gz")
    for fraction in (0.25, 0.6):
        proc = _start(run, dest, tmp_path)
        at_kill = _kill_when_part_reaches(proc, part, int(len(reference) * fraction))
        assert not final.exists()  # nothing half-written is ever under the final name
        # What was on disk at the kill is a prefix of the right archive.
        assert part.read_bytes()[: at_kill] == reference[: at_kill] or part.stat().st_size < at_kill

    proc = run_cli("archive", str(run), "--dest", str(dest), *FLAGS, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert final.read_bytes() == reference
    assert result["resumed_from_archive"] > 0
    # Work redone: what was written after the last durable checkpoint, at most one
    # sync interval plus one block, whatever the size of the run.
    redone_archive = at_kill - result["resumed_from_archive"]
    assert 0 <= redone_archive <= REDO_BOUND
    redone_raw = _raw_len(reference[:at_kill]) - result["resumed_from_raw"]
    assert redone_raw <= REDO_BOUND * 3  # miseq-style data compresses < 3x
    assert result["raw_processed"] == result["raw_bytes"] - result["resumed_from_raw"]
    gnu_untar(final, tmp_path / "out")
    assert tree(tmp_path / "out" / run.name) == tree(run)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["novaseq", "hiseq"])
def test_resume_with_stored_members_and_many_small_files(make_run, tmp_path: Path, kind: str) -> None:
    run = make_run(kind, 16 << 20, seed=5)
    reference = _reference(run, tmp_path)
    dest = tmp_path / "dest"
    part = dest / run.name / f"{run.name}.tar.gz.part"
    proc = _start(run, dest, tmp_path)
    at_kill = _kill_when_part_reaches(proc, part, len(reference) // 2)
    done = run_cli("archive", str(run), "--dest", str(dest), *FLAGS, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    resumed = json.loads(done.stdout)["resumed_from_archive"]
    # The journal keeps up with the disk: what is redone stays within one sync interval
    # (plus four blocks), however far ahead of the disk the compressors were.
    assert resumed > 0 and at_kill - resumed <= REDO_BOUND
    assert part.with_name(f"{run.name}.tar.gz").read_bytes() == reference


@pytest.mark.timeout(120)
def test_changed_run_folder_or_parameters_restart_from_zero_and_say_so(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 12 << 20, seed=7)
    dest = tmp_path / "dest"
    part = dest / run.name / f"{run.name}.tar.gz.part"
    proc = _start(run, dest, tmp_path)
    _kill_when_part_reaches(proc, part, 2 << 20)

    # A different level changes the bytes: resuming would splice two streams.
    again = run_cli("archive", str(run), "--dest", str(dest), *FLAGS, "--level", "2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "starting from zero" in again.stderr and "level" in again.stderr
    assert json.loads(again.stdout)["resumed_from_archive"] == 0

    proc = _start(run, dest, tmp_path, "--force")  # the level 2 archive finished
    _kill_when_part_reaches(proc, part, 2 << 20)
    victim = next(p for p in sorted(run.rglob("*.bcl")))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    os.utime(victim, (1, 1))
    again = run_cli("archive", str(run), "--dest", str(dest), *FLAGS, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "changed since its manifest" in again.stderr and victim.name in again.stderr
    gnu_untar(Path(json.loads(again.stdout)["location"]), tmp_path / "out")
    assert tree(tmp_path / "out" / run.name) == tree(run)


@pytest.mark.timeout(300)
def test_sigterm_at_many_moments_always_exits_130_resumable_and_ends_identical(make_run, tmp_path: Path) -> None:
    """SIGTERM (what a daemon and systemd send) is an interruption, never a failure:
    exit 130 with one line, the journal row resumable, and the same bytes at the end."""

    run = make_run("miseq", 24 << 20, seed=11)
    reference = _reference(run, tmp_path)
    dest = tmp_path / "dest"
    part = dest / run.name / f"{run.name}.tar.gz.part"
    stopped = 0
    for fraction in (0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75):
        proc = _start(run, dest, tmp_path)
        if not sigterm_once_past(proc, tmp_path / "sruns.db", run.name, int(fraction * len(reference))):
            break
        stopped += 1
    assert stopped >= 3
    done = run_cli("archive", str(run), "--dest", str(dest), *FLAGS, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert part.with_name(f"{run.name}.tar.gz").read_bytes() == reference


@pytest.mark.timeout(240)
def test_a_byte_the_disk_changed_under_the_checkpoint_fails_the_run_then_it_starts_over(
    make_run, tmp_path: Path
) -> None:
    """The part file's synced bytes are read back into the crc32c that finalize checks.
    The read-back position is saved with each checkpoint, so a resume reads back only
    what the killed process had not (here: the second half of the durable prefix, as if
    it was killed between an fsync and its read-back). A flipped byte there is never
    reported as archived, and the next attempt, which cannot trust those bytes, starts
    from zero and ends in the right archive."""

    run = make_run("miseq", 12 << 20, seed=13)
    reference = _reference(run, tmp_path)
    dest = tmp_path / "dest"
    part = dest / run.name / f"{run.name}.tar.gz.part"
    final = part.with_name(f"{run.name}.tar.gz")
    proc = _start(run, dest, tmp_path)
    wait_until(lambda: (journal_row(tmp_path / "sruns.db", run.name).get("durable_offset") or 0) >= len(reference) // 3,
               "a third of the archive durable", proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    journal = Journal(tmp_path / "sruns.db")
    task = journal.get(run.name)
    assert task is not None and task.sink_state is not None
    state = json.loads(task.sink_state)
    half = task.durable_offset // 2
    with open(part, "rb") as f:
        state["read_back"] = [half, google_crc32c.value(f.read(half))]
    journal.record_checkpoint(task, task.durable_offset, task.checkpoint, [], task.files_crc32c, json.dumps(state))
    journal.close()
    with open(part, "r+b") as f:  # the disk hands back another byte than was synced
        f.seek(half + 100)
        byte = f.read(1)
        f.seek(half + 100)
        f.write(bytes([byte[0] ^ 0x01]))

    failed = run_cli("archive", str(run), "--dest", str(dest), *FLAGS, cwd=tmp_path)
    assert failed.returncode == 1
    assert "the disk lost data" in failed.stderr.strip().splitlines()[-1]
    assert not final.exists()

    again = run_cli("archive", str(run), "--dest", str(dest), *FLAGS, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["resumed_from_archive"] == 0
    # The reason is the one the last attempt recorded, not a guess.
    assert "the last attempt left nothing to resume" in result["restart_reason"]
    assert "the disk lost data" in result["restart_reason"]
    assert final.read_bytes() == reference
