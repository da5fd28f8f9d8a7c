"""Trust: nothing reported archived, moved or deleted that is not in a verified archive;
nothing read outside the run folder or written outside the destination.

Every test here drives real `sruns-stream` processes on real files and checks the
outcome with an oracle (GNU tar, gzip -t, the input tree byte for byte, the files a
planted link points to). The daemon's tests are in test_monitor_trust.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from helpers import (
    UMASK_000,
    gnu_untar,
    gzip_ok,
    journal_row,
    run_cli,
    run_in_process,
    start_cli,
    tree,
    wait_until,
)

from sruns_stream.state.journal import Journal

# --not-finished: these folders are made to test trust, not completion markers.
FLAGS = ("--block-size", "64K", "--sync-interval", "1M", "--threads", "2", "--json", "--not-finished")


def _archive(
    run: Path, dest: Path | str, cwd: Path, *extra: str, db: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return run_in_process("archive", str(run), "--dest", str(dest), *FLAGS, "--journal", str(db or cwd / "sruns.db"),
                          *extra, cwd=cwd)


def _ok(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _one_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _start(run: Path, dest: Path, cwd: Path, *extra: str, db: Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return start_cli("archive", str(run), "--dest", str(dest), *FLAGS, "--journal", str(db or cwd / "sruns.db"),
                     *extra, cwd=cwd, env=env)


def _stop_when_part_reaches(proc: subprocess.Popen[str], part: Path, size: int, sig: int) -> None:
    """Send ``sig`` once the .part file holds at least ``size`` bytes."""
    wait_until(lambda: part.exists() and part.stat().st_size >= size, f"{part.name} at {size} bytes", proc=proc)
    proc.send_signal(sig)


def _reference(run: Path, tmp_path: Path, name: str = "ref") -> bytes:
    result = _ok(_archive(run, tmp_path / name, tmp_path, db=tmp_path / f"{name}.db"))
    return Path(result["location"]).read_bytes()


def _big_run(tmp_path: Path, name: str = "240101_M00001_0001_000000000-TRUST") -> Path:
    """A run whose first file in archive order is large and incompressible (the reader
    is inside it for a while) and whose later files are small."""
    run = tmp_path / name
    (run / "Data").mkdir(parents=True)
    (run / "Data" / "aaa_big.bin").write_bytes(os.urandom(24 << 20))
    (run / "RunInfo.xml").write_text('<RunInfo><Run Id="X"><Instrument>M00001</Instrument></Run></RunInfo>')
    (run / "zzz").mkdir()
    (run / "zzz" / "late.txt").write_text("late file " * 100)
    return run


# -- 1. "already archived" only when it is -------------------------------------------------


def test_already_archived_is_checked_against_the_archive_and_the_folder(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 2 << 20)
    dest = tmp_path / "dest"
    first = _ok(_archive(run, dest, tmp_path))
    archive = Path(first["location"])
    again = _ok(_archive(run, dest, tmp_path))
    assert again["already_complete"] and again["location"] == str(archive)

    archive.unlink()  # the archive was deleted
    redone = _archive(run, dest, tmp_path)
    result = _ok(redone)
    assert not result["already_complete"] and "no longer exists" in result["restart_reason"]
    assert archive.exists() and not _ok(_archive(run, dest, tmp_path)).get("restart_reason")

    with open(archive, "ab") as f:  # truncated or grown: not the archive that was verified
        f.write(b"x")
    assert "holds" in _ok(_archive(run, dest, tmp_path))["restart_reason"]

    (run / "Logs" / "added_after.txt").write_text("new")  # the folder changed
    result = _ok(_archive(run, dest, tmp_path))
    assert not result["already_complete"] and "1 new" in result["restart_reason"]
    gnu_untar(archive, tmp_path / "out")
    assert tree(tmp_path / "out" / run.name) == tree(run)


def test_a_run_folder_that_is_gone_is_exit_2_even_when_the_journal_knows_it(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 1 << 20)
    _ok(_archive(run, tmp_path / "dest", tmp_path))
    moved = tmp_path / "elsewhere"
    run.rename(moved)
    _one_error(_archive(run, tmp_path / "dest", tmp_path), 2, "does not exist")


def test_another_folder_with_the_same_name_is_archived_again(make_run, tmp_path: Path) -> None:
    import make_fake_run

    run = make_run("miseq", 2 << 20, seed=1)
    dest = tmp_path / "dest"
    _ok(_archive(run, dest, tmp_path))
    other = tmp_path / "other" / run.name
    make_fake_run.make_run(other, "miseq", 2 << 20, seed=2)
    result = _ok(_archive(other, dest, tmp_path))
    assert not result["already_complete"] and str(run) in result["restart_reason"]
    proc = run_in_process("verify", result["location"], "--against", str(other), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.timeout(120)
def test_a_deleted_gcs_object_is_archived_again(gcs, make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 1 << 20)
    dest = f"gs://{gcs.bucket}/runs"
    first = _ok(_archive(run, dest, tmp_path, "--chunk-size", "256K"))
    blob = first["location"].split("/", 1)[1]
    assert _ok(_archive(run, dest, tmp_path))["already_complete"]
    quoted = urllib.parse.quote(blob, safe="")
    urllib.request.urlopen(urllib.request.Request(
        f"{gcs.url}/storage/v1/b/{gcs.bucket}/o/{quoted}", method="DELETE"), timeout=30).close()
    result = _ok(_archive(run, dest, tmp_path, "--chunk-size", "256K"))
    assert not result["already_complete"] and "no longer exists" in result["restart_reason"]
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(gcs.download(blob))
    gnu_untar(archive, tmp_path / "out")
    assert tree(tmp_path / "out" / run.name) == tree(run)


# -- 2. the folder must still hold what was archived ----------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_a_file_written_while_the_run_streams_means_not_archived_exit_3(tmp_path: Path) -> None:
    run = _big_run(tmp_path)
    dest = tmp_path / "dest"
    part = dest / run.name / f"{run.name}.tar.gz.part"
    proc = _start(run, dest, tmp_path)
    _stop_when_part_reaches(proc, part, 1 << 20, signal.SIGSTOP)
    try:
        (run / "Alignment_1").mkdir()  # as MiSeq Reporter does after RTAComplete
        (run / "Alignment_1" / "sample.fastq.gz").write_bytes(b"@r\nACGT\n+\nIIII\n")
    finally:
        proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "changed while it was archived" in err and "Alignment_1" in err
    row = Journal(tmp_path / "sruns.db").get(run.name)
    assert row is not None and row.status == "not_running" and row.changed_at
    # The next attempt archives everything there is.
    result = _ok(_archive(run, dest, tmp_path))
    assert result["resumed_from_archive"] == 0
    gnu_untar(Path(result["location"]), tmp_path / "out")
    assert tree(tmp_path / "out" / run.name) == tree(run)


# -- 3. checkpoints are checked before they are trusted --------------------------------------


def _killed_half_way(run: Path, tmp_path: Path, reference: bytes) -> Path:
    dest = tmp_path / "dest"
    part = dest / run.name / f"{run.name}.tar.gz.part"
    proc = _start(run, dest, tmp_path)
    _stop_when_part_reaches(proc, part, len(reference) // 2, signal.SIGKILL)
    proc.communicate()
    assert journal_row(tmp_path / "sruns.db", run.name)["durable_offset"] > 0
    return dest


@pytest.mark.timeout(120)
@pytest.mark.parametrize("damage", ["ck_crc32", "ck_raw", "durable_offset", "member_crc", "manifest_size"])
@pytest.mark.slow
def test_one_wrong_value_in_the_journal_restarts_from_zero(make_run, tmp_path: Path, damage: str) -> None:
    run = make_run("miseq", 12 << 20, seed=21)
    reference = _reference(run, tmp_path)
    dest = _killed_half_way(run, tmp_path, reference)
    with sqlite3.connect(tmp_path / "sruns.db") as db:
        if damage == "member_crc":
            seq, pairs = db.execute("SELECT seq, pairs FROM member_crcs ORDER BY seq LIMIT 1").fetchone()
            pairs = bytearray(pairs)
            pairs[4] ^= 0x01  # the first member's crc32c, one bit off
            db.execute("UPDATE member_crcs SET pairs = ? WHERE seq = ?", (bytes(pairs), seq))
        elif damage == "manifest_size":
            db.execute("UPDATE manifest SET size = size + 1 WHERE idx = (SELECT MAX(idx) FROM manifest)")
        else:
            db.execute(f"UPDATE tasks SET {damage} = {damage} + 1")
    result = _ok(_archive(run, dest, tmp_path))
    assert result["resumed_from_archive"] == 0 and "damaged" in result["restart_reason"]
    final = Path(result["location"])
    gzip_ok(final)
    assert final.read_bytes() == reference


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_a_file_rewritten_in_place_with_size_and_mtime_kept_restarts_from_zero(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 12 << 20, seed=22)
    reference = _reference(run, tmp_path)
    dest = _killed_half_way(run, tmp_path, reference)
    # A file the stream already passed: rewritten in place, its size and mtime put back.
    entries = Journal(tmp_path / "sruns.db").entries(run.name)
    victim = next(run.parent / os.fsdecode(e.path) for e in entries if e.kind == "f" and e.size > 100)
    st = victim.stat()
    victim.write_bytes(bytes(b ^ 0xFF for b in victim.read_bytes()))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    result = _ok(_archive(run, dest, tmp_path))
    assert result["resumed_from_archive"] == 0 and "rewritten in place" in result["restart_reason"]
    final = Path(result["location"])
    gzip_ok(final)
    gnu_untar(final, tmp_path / "out")
    assert tree(tmp_path / "out" / run.name) == tree(run)


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_a_dictionary_that_reads_back_differently_restarts_from_zero(make_run, tmp_path: Path) -> None:
    """The 32 KiB before the checkpoint are deflate's dictionary; the checkpoint keeps
    their crc. A journal whose recorded crc no longer matches the folder (here: set so,
    through the journal API, with a valid checksum) must not be resumed."""
    run = make_run("miseq", 12 << 20, seed=23)
    reference = _reference(run, tmp_path)
    dest = _killed_half_way(run, tmp_path, reference)
    journal = Journal(tmp_path / "sruns.db")
    t = journal.get(run.name)
    assert t is not None and t.checkpoint.raw_offset > 0
    from dataclasses import replace

    wrong = replace(t.checkpoint, window_crc32=t.checkpoint.window_crc32 ^ 1)
    journal.record_checkpoint(t, t.durable_offset, wrong, [], t.files_crc32c, t.sink_state)
    journal.close()
    proc = _archive(run, dest, tmp_path)
    result = _ok(proc)
    assert result["resumed_from_archive"] == 0 and "32 KiB before the checkpoint" in proc.stderr
    assert Path(result["location"]).read_bytes() == reference


# -- 4. destinations that look like URLs ------------------------------------------------------


@pytest.mark.parametrize("dest", ["gs:/bucket/x", "gs:bucket", "s3://bucket/x", "http://host/x",
                                  "gs://Bad_Bucket!/x", "gs://ab"])
def test_a_destination_that_is_no_known_form_is_a_usage_error(make_run, tmp_path: Path, dest: str) -> None:
    run = make_run("miseq", 1 << 20)
    _one_error(run_in_process("archive", str(run), "--dest", dest, cwd=tmp_path), 2, dest.split("/")[0][:3])
    assert not any(p.name.startswith(("gs", "s3", "http")) for p in tmp_path.iterdir())


# -- 5. links are never followed, FIFOs never opened, swaps never read -------------------------


def _paused_before(run: Path, rel: str, tmp_path: Path, dest: Path) -> tuple[subprocess.Popen[str], Path]:
    """An archive of ``run`` stopped just before it opens member ``rel`` (memberio's test
    hook), and the FIFO that lets it go on once the test has closed its end."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    proc = _start(run, dest, tmp_path, env={"SRUNS_TEST_PAUSE_BEFORE": f"{rel}={gate}"})
    wait_until(lambda: Path(f"{gate}.reached").exists(), f"the archive at {rel}", proc=proc)
    return proc, gate


def _bind_socket(path: Path) -> None:
    """A Unix socket at ``path``, bound by another process from the directory itself:
    bind() takes at most 107 bytes of path, fewer than a pytest tmp_path may need."""
    subprocess.run([sys.executable, "-c", f"import socket; socket.socket(socket.AF_UNIX).bind({path.name!r})"],
                   cwd=path.parent, check=True)


@pytest.mark.slow  # a real process paused at a member by its hook, five times
@pytest.mark.timeout(120)
@pytest.mark.parametrize("swap", ["file-to-symlink", "dir-to-symlink", "file-to-fifo", "file-to-dir", "file-to-socket"])
def test_an_entry_swapped_mid_archive_is_never_read(tmp_path: Path, swap: str) -> None:
    run = _big_run(tmp_path)
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    late = run / "zzz" / "late.txt"
    secret.write_bytes(b"S" * late.stat().st_size)  # same size: only a link check can tell
    dest = tmp_path / "dest"
    part = dest / run.name / f"{run.name}.tar.gz.part"
    # Swapped after the scan and before the archive opens it: the archive cannot finish
    # (or read it) first, whatever the load.
    proc, gate = _paused_before(run, "zzz/late.txt", tmp_path, dest)
    with open(gate, "wb"):  # the archive goes on when this closes
        st = late.stat()
        if swap == "file-to-symlink":
            late.unlink()
            late.symlink_to(secret)
            os.utime(late, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        elif swap == "dir-to-symlink":
            late.rename(tmp_path / "moved-away.txt")
            (run / "zzz").rmdir()
            (run / "zzz").symlink_to(secret.parent)
            (secret.parent / "late.txt").write_bytes(b"S" * st.st_size)
            os.utime(secret.parent / "late.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
        elif swap == "file-to-fifo":
            late.unlink()
            os.mkfifo(late)
        elif swap == "file-to-socket":
            late.unlink()
            _bind_socket(late)
        else:
            late.unlink()
            late.mkdir()
    out, err = proc.communicate(timeout=60)  # a FIFO opened for reading would hang here
    line = _one_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), 3, "late.txt")
    now = {"file-to-socket": "a socket", "file-to-fifo": "a FIFO", "file-to-dir": "a directory"}.get(swap)
    if now is not None:  # one line for every kind, naming what stands there now
        assert f"is no longer a regular file (replaced by {now})" in line, line
    assert not (dest / run.name / f"{run.name}.tar.gz").exists()
    leaked = part.read_bytes() if part.exists() else b""
    assert b"SSSSSSSS" not in leaked


@pytest.mark.timeout(120)
def test_a_run_folder_deleted_mid_archive_is_said_gone_exit_3(tmp_path: Path) -> None:
    run = _big_run(tmp_path)
    dest = tmp_path / "dest"
    proc, gate = _paused_before(run, "zzz/late.txt", tmp_path, dest)
    with open(gate, "wb"):
        shutil.rmtree(run)
    out, err = proc.communicate(timeout=60)
    line = _one_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), 3,
                      str(run), "the run folder disappeared during the archive")
    assert "late.txt" not in line
    row = Journal(tmp_path / "sruns.db").get(run.name)
    # Not "changed": nothing waits for a quiet folder that is not there.
    assert row is not None and row.status == "not_running" and row.changed_at is None
    assert row.last_error is not None and "disappeared during the archive" in row.last_error


@pytest.mark.timeout(120)
def test_the_directories_an_archive_makes_are_0755_under_umask_000(make_run, tmp_path: Path) -> None:
    """As tar makes its own: a umask of 000 must not leave a destination anyone may write
    into (and delete or replace an archive in)."""
    run = make_run("miseq", 1 << 20)
    dest = tmp_path / "new" / "archives"
    _ok(run_cli("archive", str(run), "--dest", str(dest), *FLAGS, "--journal", str(tmp_path / "sruns.db"),
                cwd=tmp_path, prefix=UMASK_000))
    made = {tmp_path / "new": 0o755, dest: 0o755, dest / run.name: 0o755, tmp_path / "sruns.db.locks": 0o700}
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in made} == {str(p): oct(m) for p, m in made.items()}


# -- 6. planted links in the destination are refused ---------------------------------------------


@pytest.mark.parametrize("where", ["part", "manifest-temp", "run-dir", "lock"])
def test_planted_links_in_the_destination_are_never_written_through(make_run, tmp_path: Path, where: str) -> None:
    run = make_run("miseq", 1 << 20)
    dest = tmp_path / "dest"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (dest / run.name).mkdir(parents=True)
    if where == "part":
        (dest / run.name / f"{run.name}.tar.gz.part").symlink_to(victim)
    elif where == "manifest-temp":
        (dest / run.name / f"{run.name}.manifest.tsv.part").symlink_to(victim)
    elif where == "run-dir":
        (dest / run.name).rmdir()
        (tmp_path / "elsewhere").mkdir()
        (dest / run.name).symlink_to(tmp_path / "elsewhere")
    else:
        locks = tmp_path / "sruns.db.locks"
        locks.mkdir()
        (locks / f"{run.name}.lock").symlink_to(victim)
    proc = _archive(run, dest, tmp_path)
    assert victim.read_text() == "precious"
    if where == "manifest-temp":
        # A leftover name is ours to remove (the link itself, not what it points to).
        result = _ok(proc)
        assert Path(result["location"]).exists()
    else:
        _one_error(proc, 1, "symlink")
    if where == "run-dir":
        assert not list((tmp_path / "elsewhere").iterdir())


def test_a_part_file_with_other_hard_links_is_refused(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 1 << 20)
    dest = tmp_path / "dest"
    (dest / run.name).mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.link(victim, dest / run.name / f"{run.name}.tar.gz.part")
    _one_error(_archive(run, dest, tmp_path), 1, "hard links")
    assert victim.read_text() == "precious"


# -- 7. run names, and places that must not be inside the run folder ---------------------------------


def test_dot_dot_and_links_are_resolved_to_the_run_folder_itself(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 1 << 20)
    inner = run / "Logs"
    inner.mkdir(exist_ok=True)
    dest = tmp_path / "dest"
    result = _ok(run_in_process("archive", "..", "--dest", str(dest), "--journal", str(tmp_path / "j.db"), "--json",
                                cwd=inner))
    assert result["run"] == run.name and Path(result["location"]) == dest / run.name / f"{run.name}.tar.gz"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([run.name, "dest", "j.db", "j.db.locks"] + [
        p.name for p in tmp_path.iterdir() if p.name.startswith("j.db-")])
    names = subprocess.run(["tar", "-tzf", result["location"]], capture_output=True, text=True, check=True)
    assert all(n.startswith(run.name + "/") or n == run.name + "/" for n in names.stdout.split())
    _one_error(run_in_process("archive", "/", "--dest", str(dest), cwd=tmp_path), 2, "names no run folder")


def test_a_journal_or_destination_inside_the_run_folder_is_refused(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 1 << 20)
    _one_error(run_in_process("archive", ".", "--dest", str(tmp_path / "d"), cwd=run), 2, "journal",
               "inside the run folder")
    _one_error(run_in_process("archive", str(run), "--dest", str(run / "out"), cwd=tmp_path), 2, "destination",
               "inside the run folder")
    assert not (run / "sruns.db").exists() and not (run / "out").exists()


# -- 11. a part file shorter than the journal says: no hang ---------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["truncated", "deleted", "renamed-to-final"])
@pytest.mark.slow
def test_a_part_file_shorter_than_the_journal_starts_over_without_hanging(make_run, tmp_path: Path, how: str) -> None:
    run = make_run("miseq", 12 << 20, seed=24)
    reference = _reference(run, tmp_path)
    dest = _killed_half_way(run, tmp_path, reference)
    part = dest / run.name / f"{run.name}.tar.gz.part"
    if how == "truncated":
        os.truncate(part, 1000)
    elif how == "deleted":
        part.unlink()
    else:  # as if killed between the final rename and the journal's update
        part.rename(part.with_name(f"{run.name}.tar.gz"))
    proc = _archive(run, dest, tmp_path)
    result = _ok(proc)
    assert result["resumed_from_archive"] == 0 and "starting from zero" in proc.stderr
    assert Path(result["location"]).read_bytes() == reference


# -- 12. tracebacks that were -------------------------------------------------------------------------


def test_a_fifo_or_link_named_like_a_marker_never_hangs_the_completion_check(tmp_path: Path) -> None:
    from sruns_stream.runfolder.completion import CompletionRules, run_state

    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "RunInfo.xml")  # open() for reading would wait for a writer forever
    assert not run_state(run, CompletionRules(), time.time()).complete
    (run / "RunInfo.xml").unlink()
    outside = tmp_path / "RunInfo.xml"
    outside.write_text('<RunInfo><Run Id="X"><Instrument>M1</Instrument></Run></RunInfo>')
    (run / "RunInfo.xml").symlink_to(outside)
    (run / "CopyComplete.txt").write_text("")
    state = run_state(run, CompletionRules(), time.time())
    assert not state.complete and "RunInfo" in state.reason  # the link is not the run's RunInfo.xml


# -- 15. two writers of one archive ----------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_a_second_writer_with_another_journal_is_told_so(tmp_path: Path) -> None:
    run = _big_run(tmp_path)
    dest = tmp_path / "dest"
    part = dest / run.name / f"{run.name}.tar.gz.part"
    first = _start(run, dest, tmp_path, db=tmp_path / "a.db")
    _stop_when_part_reaches(first, part, 1 << 20, signal.SIGSTOP)
    try:
        second = _archive(run, dest, tmp_path, db=tmp_path / "b.db")
    finally:
        first.send_signal(signal.SIGCONT)
    _one_error(second, 75, "another process is writing")  # temporary: once the first is done, it works
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    gnu_untar(Path(json.loads(out)["location"]), tmp_path / "out")
    assert tree(tmp_path / "out" / run.name) == tree(run)


# -- 14. checkpoints for runs that compress very well; the read-back is not repeated -----------------------


@pytest.mark.timeout(180)
@pytest.mark.slow
def test_a_run_that_compresses_100_to_1_still_checkpoints_and_resumes(tmp_path: Path) -> None:
    run = tmp_path / "240101_M00001_0001_000000000-ZEROS"
    for d in range(40):
        (run / f"d{d:02d}").mkdir(parents=True)
        for f in range(100):
            (run / f"d{d:02d}" / f"f{f:03d}.bin").write_bytes(bytes(8000))
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"checkpoint_raw_interval": 1 << 20}))
    dest = tmp_path / "dest"
    args = ("--sync-interval", "16M", "--config", str(conf))
    reference = _ok(_archive(run, tmp_path / "ref", tmp_path, *args, db=tmp_path / "ref.db"))
    assert reference["archive_bytes"] < 16 << 20 < reference["raw_bytes"]  # never fills a sync interval
    proc = _start(run, dest, tmp_path, *args)
    wait_until(lambda: journal_row(tmp_path / "sruns.db", run.name).get("durable_offset"), "a first checkpoint",
               proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    result = _ok(_archive(run, dest, tmp_path, *args))
    assert result["resumed_from_archive"] > 0 and result["resumed_from_raw"] > 0
    assert Path(result["location"]).read_bytes() == Path(reference["location"]).read_bytes()


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@pytest.mark.slow
def test_a_resumed_local_archive_is_not_read_back_from_the_start(tmp_path: Path) -> None:
    """The read-back position and crc32c travel with the checkpoint: the bytes read
    back at resume are those after it, not the whole prefix (hours on a TB over NFS)."""
    import google_crc32c

    from sruns_stream.storage.local import LocalSink
    from sruns_stream.storage.sink import ArchiveInfo

    prefix = os.urandom(32 << 20)
    sink = LocalSink(tmp_path, "RUN", ".tar.gz", sync_interval=1 << 20)
    sink.open(None, 0)
    sink.write(prefix)
    sink.request_durable()
    wait_until(lambda: json.loads(sink.state() or "{}")["read_back"][0] == len(prefix), "the read-back")
    state = sink.state()
    sink.abort()
    assert json.loads(state or "{}")["read_back"][0] == len(prefix)

    resumed = LocalSink(tmp_path, "RUN", ".tar.gz", sync_interval=1 << 20)
    before = _rchar()
    assert resumed.open(state, len(prefix)) == len(prefix)
    resumed.write(b"tail")
    info = ArchiveInfo("RUN", len(prefix) + 4, google_crc32c.value(prefix + b"tail"), 0, 0, 0, "x", "x")
    stored = resumed.finalize(info, b"manifest")
    assert stored.crc32c == info.crc32c
    assert _rchar() - before < 1 << 20  # the 32 MiB prefix was not read again
