"""A kill before the manifest's entries commit still resumes the upload where it was.

The entries go into the journal on a thread while the upload starts (`Journal.write_entries`):
a crash can land after chunks are stored and checkpointed but before the entries commit.
These tests put a real `sruns-stream archive` exactly there (the entries writer holds
when ``SRUNS_TEST_HOLD_ENTRIES`` names a file, and tests/faultproxy.py holds a chunk),
SIGKILL it, run it again, and count on the wire what was sent twice.

Oracles: the archive of the same folder made by one stream to a local --dest (byte
equality), GNU tar and the input tree, the bytes the proxy received, and the sessions
they went to.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from pathlib import Path

import pytest
from faultproxy import Exchange, Fault, FaultProxy, resent
from helpers import journal_row, run_in_process, start_cli, untars_to_the_input, wait_until

from sruns_stream.runfolder.scan import fingerprint
from sruns_stream.state.journal import Journal

CHUNK = 256 * 1024
# --not-finished: folders made for what is tested here, not for their completion markers.
FLAGS = ("--chunk-size", "256K", "--block-size", "64K", "--threads", "2", "--json", "--not-finished")
PREFIX = "runs"


def _reference(run: Path, tmp_path: Path) -> bytes:
    """The archive of one uninterrupted stream to a local directory."""
    proc = run_in_process("archive", str(run), "--dest", str(tmp_path / "ref"), *FLAGS, "--journal",
                          str(tmp_path / "ref.db"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return Path(json.loads(proc.stdout)["location"]).read_bytes()


def _kill_with_entries_held(proc: subprocess.Popen[str], proxy: FaultProxy, held: Path) -> None:
    """SIGKILL the archive once its entries writer holds and the proxy holds a chunk."""
    wait_until(held.exists, "the entries writer held", proc=proc)
    wait_until(lambda: proxy.holds.held.is_set(), "a chunk held by the proxy", proc=proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    proxy.release()
    held.unlink()


def _entries_committed(db: Path, run: str) -> bool:
    journal = Journal(db, readonly=True)
    try:
        return fingerprint(journal.entries(run)) == journal_row(db, run)["manifest_id"]
    finally:
        journal.close()


def _uploads(proxy: FaultProxy) -> list[Exchange]:
    return [e for e in proxy.log if e.target in ("chunk", "final")]


@pytest.mark.timeout(240)
def test_kill_9_twice_before_the_entries_commit_resumes_the_same_session_resending_at_most_a_chunk(
    gcs, make_run, tmp_path: Path
) -> None:
    run = make_run("miseq", 8 << 20, seed=11)
    reference = _reference(run, tmp_path)
    assert len(reference) > 12 * CHUNK
    db = tmp_path / "sruns.db"
    held = tmp_path / "entries-held"
    args = ("archive", str(run), "--dest", f"gs://{gcs.bucket}/{PREFIX}", *FLAGS, "--journal", str(db))
    with FaultProxy(gcs.url) as proxy:
        env = {"STORAGE_EMULATOR_HOST": proxy.url, "SRUNS_TEST_HOLD_ENTRIES": str(held)}

        # Crash 1: two chunks stored and checkpointed, the 3rd half sent, no entry committed.
        proxy.add(Fault("hold", nth=3))
        _kill_with_entries_held(start_cli(*args, cwd=tmp_path, env=env), proxy, held)
        assert journal_row(db, run.name)["durable_offset"] == 2 * CHUNK
        assert not _entries_committed(db, run.name)

        # Crash 2: the resumed attempt writes the entries again; killed before they commit,
        # after its 2nd chunk reached the server and before the answer reached it.
        proxy.epoch = 1
        proxy.add(Fault("hold_stored", nth=2))
        _kill_with_entries_held(start_cli(*args, cwd=tmp_path, env=env), proxy, held)
        last = proxy.exchanges("chunk", epoch=1)[-1]
        assert last.start is not None
        server_has = last.start + last.received
        assert not _entries_committed(db, run.name)

        proxy.epoch = 2
        env.pop("SRUNS_TEST_HOLD_ENTRIES")
        proc = run_in_process(*args, cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)

    assert "starting from zero" not in proc.stderr
    assert result["resumed_from_archive"] == server_has
    data = gcs.download(f"{PREFIX}/{run.name}/{run.name}.tar.gz")
    assert data == reference
    untars_to_the_input(data, run, tmp_path)
    # On the wire: one session for all three processes; crash 1 lost the half chunk in
    # flight, crash 2 nothing (the server had it).
    uploads = _uploads(proxy)
    assert {e.session for e in uploads} == {uploads[0].session}
    assert sum(e.received for e in uploads) - len(reference) == CHUNK // 2
    assert [resent(proxy.log, 1), resent(proxy.log, 2)] == [CHUNK // 2, 0]
    # The entries are in the journal now: the next run proves the folder archived from them.
    assert _entries_committed(db, run.name)
    again = run_in_process(*args, cwd=tmp_path, env={"STORAGE_EMULATOR_HOST": gcs.url})
    assert again.returncode == 0 and json.loads(again.stdout)["already_complete"], again.stderr


@pytest.mark.timeout(300)
def test_a_kill_before_the_entries_commit_during_a_parallel_upload_resends_at_most_a_chunk_per_stream(
    gcs, make_run, tmp_path: Path
) -> None:
    run = make_run("miseq", 10 << 20, seed=12)
    # One file over several segments (at least 8 chunks each), half random, half compressible.
    rng = random.Random(12)
    (run / "Data" / "big.bin").write_bytes(rng.randbytes(7 << 19) + bytes(range(256)) * (7 << 11))
    reference = _reference(run, tmp_path)
    db = tmp_path / "sruns.db"
    held = tmp_path / "entries-held"
    streams = 3
    args = ("archive", str(run), "--dest", f"gs://{gcs.bucket}/{PREFIX}", *FLAGS, "--streams", str(streams),
            "--journal", str(db))
    with FaultProxy(gcs.url) as proxy:
        env = {"STORAGE_EMULATOR_HOST": proxy.url, "SRUNS_TEST_HOLD_ENTRIES": str(held)}
        # Killed while the 9th chunk (of any segment) is half sent, no entry committed.
        proxy.add(Fault("hold", nth=9))
        _kill_with_entries_held(start_cli(*args, cwd=tmp_path, env=env), proxy, held)
        assert not _entries_committed(db, run.name)
        sent_before = sum(e.received for e in _uploads(proxy))
        assert sent_before > streams * CHUNK

        proxy.epoch = 1
        env.pop("SRUNS_TEST_HOLD_ENTRIES")
        proc = run_in_process(*args, cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr

    assert "starting from zero" not in proc.stderr
    data = gcs.download(f"{PREFIX}/{run.name}/{run.name}.tar.gz")
    assert data == reference
    untars_to_the_input(data, run, tmp_path)
    # Every segment's bytes went once, but for at most one chunk in flight per stream.
    assert sum(e.received for e in _uploads(proxy)) - len(reference) <= streams * CHUNK
    assert resent(proxy.log, 1) <= streams * CHUNK
    assert _entries_committed(db, run.name)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("change", ["none", "rewritten", "added"])
def test_a_kill_with_part_of_the_entries_committed_resumes_only_an_unchanged_folder(
    gcs, make_run, tmp_path: Path, change: str
) -> None:
    # Over 4096 entries: the writer commits its first slice and holds before the last.
    run = make_run("hiseq", 6 << 20, seed=13, files=6000)
    db = tmp_path / "sruns.db"
    held = tmp_path / "entries-held"
    args = ("archive", str(run), "--dest", f"gs://{gcs.bucket}/{PREFIX}", *FLAGS, "--journal", str(db))
    with FaultProxy(gcs.url) as proxy:
        env = {"STORAGE_EMULATOR_HOST": proxy.url, "SRUNS_TEST_HOLD_ENTRIES": str(held)}
        proxy.add(Fault("hold", nth=3))
        _kill_with_entries_held(start_cli(*args, cwd=tmp_path, env=env), proxy, held)
        journal = Journal(db, readonly=True)
        try:
            committed = journal.entries(run.name)
        finally:
            journal.close()
        assert 0 < len(committed) < 6000 and not _entries_committed(db, run.name)
        if change == "rewritten":
            # A file whose entry was not committed, rewritten in place with its size and mtime
            # put back: only its ctime tells, and the scan that stands for the entries must see it.
            committed_paths = {e.path for e in committed}
            victim = next(p for p in sorted(run.rglob("*")) if p.is_file() and p.stat().st_size > 100
                          and os.fsencode(p.relative_to(run.parent)) not in committed_paths)
            st = victim.stat()
            victim.write_bytes(bytes(b ^ 0xFF for b in victim.read_bytes()))
            os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
        elif change == "added":
            (run / "Data" / "written-after.txt").write_text("analysis output\n")

        proxy.epoch = 1
        env.pop("SRUNS_TEST_HOLD_ENTRIES")
        proc = run_in_process(*args, cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)

    data = gcs.download(f"{PREFIX}/{run.name}/{run.name}.tar.gz")
    untars_to_the_input(data, run, tmp_path)
    sessions = {e.session for e in _uploads(proxy)}
    if change == "none":
        assert result["restart_reason"] is None and result["resumed_from_archive"] == 2 * CHUNK
        assert len(sessions) == 1 and resent(proxy.log, 1) == CHUNK // 2
    else:
        reason = {"rewritten": "rewritten in place", "added": "changed since it was scanned"}[change]
        assert result["resumed_from_archive"] == 0 and reason in result["restart_reason"], result
        assert len(sessions) == 2
    assert _entries_committed(db, run.name)


@pytest.mark.timeout(180)
def test_a_kill_after_the_last_request_committed_before_the_entries_commit_sends_nothing_again(
    gcs, make_run, tmp_path: Path
) -> None:
    run = make_run("miseq", 4 << 20, seed=14)
    reference = _reference(run, tmp_path)
    db = tmp_path / "sruns.db"
    held = tmp_path / "entries-held"
    args = ("archive", str(run), "--dest", f"gs://{gcs.bucket}/{PREFIX}", *FLAGS, "--journal", str(db))
    with FaultProxy(gcs.url) as proxy:
        env = {"STORAGE_EMULATOR_HOST": proxy.url, "SRUNS_TEST_HOLD_ENTRIES": str(held)}
        # The request carrying the last bytes reaches the server; its answer never comes back.
        proxy.add(Fault("hold_stored", target="final"))
        _kill_with_entries_held(start_cli(*args, cwd=tmp_path, env=env), proxy, held)
        assert not _entries_committed(db, run.name)
        committed = gcs.resource(f"{PREFIX}/{run.name}/{run.name}.tar.gz")
        assert committed is not None and int(committed["size"]) == len(reference)
        proxy.epoch = 1
        # Real GCS answers a status query on a committed session with 200 and the object;
        # the emulator forgets the session (404), so the proxy answers as GCS does.
        proxy.add(Fault("status", target="query", status=200, body=json.dumps(committed).encode()))
        env.pop("SRUNS_TEST_HOLD_ENTRIES")
        proc = run_in_process(*args, cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
    assert "starting from zero" not in proc.stderr
    assert json.loads(proc.stdout)["resumed_from_archive"] == len(reference)
    assert gcs.download(f"{PREFIX}/{run.name}/{run.name}.tar.gz") == reference
    assert [e for e in _uploads(proxy) if e.epoch == 1] == []
    assert _entries_committed(db, run.name)
