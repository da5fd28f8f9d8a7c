"""The daemon end to end in real processes: detection, archiving, moves, retries, limits."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from helpers import gnu_untar, journal_rows, run_cli, start_cli, tree, wait_until

# Real processes killed, stopped or run for many seconds: not the quick inner loop.
pytestmark = pytest.mark.slow


def _config(tmp_path: Path, **extra) -> Path:
    conf = {
        "# an sruns-monitor style config": "comments are keys starting with #",
        "watchdir": str(tmp_path / "watch"),
        "completed_runs_dir": str(tmp_path / "completed"),
        "sqlite_db": str(tmp_path / "sruns.db"),
        "local_dest": str(tmp_path / "archives"),
        "cycle_pause_sec": 1,
        "sentinal_file_age_minutes": 0,
        "threads": 2,
    }
    conf.update(extra)
    path = tmp_path / "conf.json"
    path.write_text(json.dumps(conf))
    return path


def _rows(tmp_path: Path) -> dict[str, dict]:
    return journal_rows(tmp_path / "sruns.db")


@pytest.fixture
def watch(make_run, tmp_path: Path) -> dict[str, Path]:
    import make_fake_run

    w = tmp_path / "watch"
    w.mkdir()
    runs = {
        "miseq": w / "240101_M00001_0001_000000000-AAAAA",
        "novaseq": w / "240101_A00001_0001_BHAAAAAAXX",
        "incomplete": w / "240101_M00001_0002_000000000-BBBBB",
        "errored": w / "240101_A00001_0002_AHBBBBBBXX",
    }
    make_fake_run.make_run(runs["miseq"], "miseq", 3 << 20, seed=1)
    make_fake_run.make_run(runs["novaseq"], "novaseq", 3 << 20, seed=2)
    make_fake_run.make_run(runs["incomplete"], "miseq", 1 << 20, seed=3, markers=False)
    make_fake_run.make_run(runs["errored"], "novaseq", 2 << 20, seed=4, errored=True)
    return runs


@pytest.mark.timeout(180)
def test_once_archives_complete_runs_moves_them_and_leaves_the_rest(watch, tmp_path: Path) -> None:
    copies = {k: tree(p) for k, p in watch.items()}
    proc = run_cli("monitor", "--config", str(_config(tmp_path)), "--once", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = _rows(tmp_path)
    for kind in ("miseq", "novaseq", "errored"):
        name = watch[kind].name
        row = rows[name]
        assert row["status"] == "complete", (kind, row)
        archive = tmp_path / "archives" / name / f"{name}.tar.gz"
        assert row["location"] == str(archive)
        assert not watch[kind].exists() and row["moved_to"] == str(tmp_path / "completed" / name)
        gnu_untar(archive, tmp_path / "out" / kind)
        assert tree(tmp_path / "out" / kind / name) == copies[kind]
    assert rows[watch["errored"].name]["instrument_status"] == "RunErrored"
    assert rows[watch["novaseq"].name]["instrument_status"] == "RunCompleted"
    assert watch["incomplete"].name not in rows and tree(watch["incomplete"]) == copies["incomplete"]


@pytest.mark.timeout(180)
def test_failures_back_off_then_give_up(tmp_path: Path, make_run) -> None:
    import make_fake_run

    (tmp_path / "watch").mkdir()
    run = tmp_path / "watch" / "240101_M00001_0009_000000000-FAILS"
    make_fake_run.make_run(run, "miseq", 1 << 20, seed=9)
    # The destination is a regular file: every attempt fails with a clear error.
    (tmp_path / "archives").write_text("not a directory")
    conf = _config(tmp_path, max_attempts=2)
    proc = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = _rows(tmp_path)[run.name]
    assert row["status"] == "not_running" and row["failures"] == 1
    assert "cannot write" in row["last_error"]
    assert row["next_attempt_at"] > time.time() + 30  # backed off, not retried every cycle
    again = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
    assert again.returncode == 0
    assert _rows(tmp_path)[run.name]["failures"] == 1  # still backing off
    db = sqlite3.connect(tmp_path / "sruns.db")
    db.execute("UPDATE tasks SET next_attempt_at = 0")
    db.commit()
    run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
    row = _rows(tmp_path)[run.name]
    assert row["failures"] == 2 and row["gave_up_at"] is not None
    assert run.exists()  # never moved: it was never archived


@pytest.mark.timeout(180)
def test_sigterm_stops_children_at_a_checkpoint_and_the_next_start_resumes(make_run, tmp_path: Path) -> None:
    import make_fake_run

    (tmp_path / "watch").mkdir()
    run = tmp_path / "watch" / "240101_M00001_0010_000000000-LARGE"
    make_fake_run.make_run(run, "miseq", 60 << 20, seed=10)
    conf = _config(tmp_path, threads=1, block_size=65536, sync_interval=1 << 20)
    daemon = start_cli("monitor", "--config", str(conf), cwd=tmp_path)
    part = tmp_path / "archives" / run.name / f"{run.name}.tar.gz.part"
    wait_until(lambda: part.exists() and part.stat().st_size >= 4 << 20, "4 MiB of archive written", proc=daemon)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
    row = _rows(tmp_path)[run.name]
    assert row["status"] == "not_running" and row["durable_offset"] > 0
    assert row["failures"] == 0  # an interruption is not a failure
    assert row["last_error"] is None and row["interrupted_at"]  # nor recorded as an error
    proc = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = _rows(tmp_path)[run.name]
    assert row["status"] == "complete"
    log = (tmp_path / "sruns.db.logs" / f"{run.name}.log").read_text()
    assert '"resumed_from_archive": 0' not in log.splitlines()[-1]


def _archive_child(daemon_pid: int) -> int | None:
    """The daemon's archive child, found by the kernel's list of the daemon's children the
    moment it has exec'd (not by the journal row, which the child writes only once its
    start-up is over: under load that can come after the limit has already fired)."""
    for task in os.listdir(f"/proc/{daemon_pid}/task"):
        try:
            with open(f"/proc/{daemon_pid}/task/{task}/children") as f:
                children = [int(pid) for pid in f.read().split()]
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        for pid in children:
            # Only once it has exec'd: a child stopped between fork and exec would take
            # the SIGTERM with the daemon's inherited handler, then run on unharmed.
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"archive" in f.read().split(b"\0"):
                        return pid
            except FileNotFoundError:
                continue
    return None


def _pending_signals(pid: int) -> int:
    """The signals waiting for a (stopped) process: /proc's ShdPnd mask."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("ShdPnd:"))


@pytest.mark.timeout(180)
def test_runtime_limit_kills_once_and_mails_once(smtp, tmp_path: Path) -> None:
    """The archive child is frozen (SIGSTOP, as a hung NFS read would hold it) as soon as
    it is forked, so it cannot finish inside the 1 s limit whatever the machine's speed;
    once the daemon's SIGTERM is pending it is let go, and stops (at its next block, or
    at once if the signal finds it still starting up): either way a kill by the limit."""
    import make_fake_run

    inbox, port = smtp
    (tmp_path / "watch").mkdir()
    run = tmp_path / "watch" / "240101_M00001_0011_000000000-SLOWW"
    make_fake_run.make_run(run, "miseq", 8 << 20, seed=11)
    conf = _config(
        tmp_path, threads=1, task_runtime_limit_sec=1,
        mail={"host": "127.0.0.1", "port": port, "from": "sruns@test.example", "tos": ["ops@test.example"]},
    )
    daemon = start_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
    pid = wait_until(lambda: _archive_child(daemon.pid), "the archive child", proc=daemon, poll=0.001)
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: _pending_signals(pid) & (1 << (signal.SIGTERM - 1)), "the daemon's SIGTERM", poll=0.02)
    finally:
        # Gone already only if the daemon's SIGKILL came first (30 s after its SIGTERM, on
        # a very slow machine): the assertions below hold either way.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    _, err = daemon.communicate(timeout=120)
    assert daemon.returncode == 0, err
    row = _rows(tmp_path)[run.name]
    assert row["status"] == "not_running" and "task_runtime_limit_sec" in row["last_error"]
    assert row["failures"] == 1 and run.exists()
    # A second pass inside the backoff neither restarts nor mails again.
    run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
    messages = [r.message for r in inbox.received]
    subjects = [m["Subject"] for m in messages]
    assert sum("killed" in s for s in subjects) == 1, subjects
    assert sum("started" in s for s in subjects) == 1, subjects
    killed = next(m for m in messages if "killed" in m["Subject"])
    assert killed["From"] == "sruns@test.example" and killed["To"] == "ops@test.example"
    assert killed["Date"] and killed["Message-ID"] and run.name in killed["Subject"]


@pytest.mark.timeout(300)
def test_daemon_with_gcs_firestore_and_mail_end_to_end(watch, gcs, firestore, smtp, tmp_path: Path) -> None:
    """The issue's scenario with real parts: GCS and Firestore emulators, an SMTP server."""
    inbox, port = smtp
    conf = _config(
        tmp_path, local_dest=None, gcp_bucket_name=gcs.bucket, gcp_bucket_basedir="runs",
        firestore_collection="sruns", chunk_size=256 * 1024,
        mail={"host": "127.0.0.1", "port": port, "from": "sruns@test.example", "tos": ["ops@test.example"]},
    )
    conf.write_text(json.dumps({k: v for k, v in json.loads(conf.read_text()).items() if v is not None}))
    copies = {k: tree(p) for k, p in watch.items()}
    proc = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = _rows(tmp_path)
    for kind in ("miseq", "novaseq", "errored"):
        name = watch[kind].name
        blob = f"runs/{name}/{name}.tar.gz"
        assert rows[name]["status"] == "complete" and rows[name]["gcp_tarfile"] == f"{gcs.bucket}/{blob}"
        doc = firestore.document("sruns", name)
        assert doc is not None and doc["workflow_status"] == "complete", doc
        assert doc["storage"] == f"{gcs.bucket}/{blob}" and doc["name"] == name
        archive = tmp_path / f"{kind}.tar.gz"
        archive.write_bytes(gcs.download(blob))
        gnu_untar(archive, tmp_path / "out" / kind)
        assert tree(tmp_path / "out" / kind / name) == copies[kind]
        assert not watch[kind].exists()  # moved after verification
    assert firestore.document("sruns", watch["errored"].name)["instrument_status"] == "RunErrored"
    assert firestore.document("sruns", watch["incomplete"].name) is None
    assert tree(watch["incomplete"]) == copies["incomplete"]
    archived = [r.message for r in inbox.received if r.message["Subject"].endswith(": archived")]
    assert len(archived) == 3 and all(m["Date"] and m["From"] == "sruns@test.example" for m in archived)

    # Firestore down during a run: the archive completes; the document catches up later.
    import make_fake_run

    late = tmp_path / "watch" / "240101_A00001_0003_BHLATERXXX"
    make_fake_run.make_run(late, "novaseq", 24 << 20, seed=12)
    daemon = start_cli("monitor", "--config", str(conf), cwd=tmp_path, capture=False)
    try:
        wait_until(lambda: _rows(tmp_path).get(late.name, {}).get("durable_offset"), "a first checkpoint",
                   timeout=120, proc=daemon)
        firestore.stop()
        wait_until(lambda: _rows(tmp_path).get(late.name, {}).get("status") == "complete", "the archive complete",
                   timeout=120, proc=daemon)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
        firestore.start()
    doc = firestore.document("sruns", late.name)
    assert doc is None or doc["workflow_status"] != "complete"
    proc = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert firestore.document("sruns", late.name)["workflow_status"] == "complete"


@pytest.mark.timeout(180)
def test_the_firestore_document_says_where_the_run_was_moved_and_its_run_id(firestore, tmp_path: Path) -> None:
    """`moved_to`, `moved_at` and `run_id` reach the document (the README lists them), with
    a folder whose name is not the id in its RunInfo.xml (a renamed or copied run)."""
    import xml.etree.ElementTree as ET

    import make_fake_run

    (tmp_path / "watch").mkdir()
    made = tmp_path / "watch" / "240101_M00001_0013_000000000-RENAM"
    make_fake_run.make_run(made, "miseq", 1 << 20, seed=14)
    run = made.rename(made.with_name("renamed-run"))
    run_id = ET.parse(run / "RunInfo.xml").getroot().find("Run").get("Id")  # the oracle: the XML itself
    assert run_id and run_id != run.name
    conf = _config(tmp_path, firestore_collection="sruns")
    proc = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    moved = tmp_path / "completed" / run.name
    assert moved.is_dir() and not run.exists()
    doc = firestore.document("sruns", run.name)
    assert doc is not None and doc["workflow_status"] == "complete", doc
    assert doc["run_id"] == run_id and doc["moved_to"] == str(moved)
    row = _rows(tmp_path)[run.name]
    assert doc["moved_at"].timestamp() == pytest.approx(row["moved_at"], abs=1e-3)


@pytest.mark.timeout(300)
def test_kill_9_daemon_mid_upload_then_restart_finishes_without_resending(gcs, tmp_path: Path) -> None:
    import make_fake_run

    (tmp_path / "watch").mkdir()
    run = tmp_path / "watch" / "240101_M00001_0012_000000000-KILLD"
    make_fake_run.make_run(run, "novaseq", 24 << 20, seed=13)
    conf = _config(tmp_path, local_dest=None, gcp_bucket_name=gcs.bucket, chunk_size=256 * 1024, threads=1)
    conf.write_text(json.dumps({k: v for k, v in json.loads(conf.read_text()).items() if v is not None}))
    daemon = start_cli("monitor", "--config", str(conf), cwd=tmp_path, capture=False)
    wait_until(lambda: (_rows(tmp_path).get(run.name, {}).get("durable_offset") or 0) >= 4 << 20,
               "4 MiB stored", timeout=120, proc=daemon)
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    # The archive child dies with the daemon (PR_SET_PDEATHSIG) and stops at a checkpoint.
    wait_until(lambda: _rows(tmp_path)[run.name]["status"] == "not_running", "the child stopped at a checkpoint")
    stored = _rows(tmp_path)[run.name]["durable_offset"]
    assert stored >= 4 << 20
    proc = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = _rows(tmp_path)[run.name]
    assert row["status"] == "complete"
    result = json.loads((tmp_path / "sruns.db.logs" / f"{run.name}.log").read_text().splitlines()[-1])
    assert result["resumed_from_archive"] >= stored  # nothing stored was sent again
    blob = f"{run.name}/{run.name}.tar.gz"
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(gcs.download(blob))
    gnu_untar(archive, tmp_path / "out")
    assert tree(tmp_path / "out" / run.name) == tree(tmp_path / "completed" / run.name)


@pytest.mark.timeout(180)
def test_completed_runs_dir_on_another_filesystem_is_refused_once_and_the_run_stays(
    make_run, tmp_path: Path
) -> None:
    """A move across filesystems would be a long copy; the daemon renames only, says why
    once, and leaves the archived run folder where it is, whole."""
    import make_fake_run

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (CI runs as root)")
    other = tmp_path / "completed"
    other.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(other)], check=False).returncode:
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        (tmp_path / "watch").mkdir()
        run = tmp_path / "watch" / "240101_M00001_0003_000000000-CCCCC"
        make_fake_run.make_run(run, "miseq", 1 << 20, seed=5)
        copy = tree(run)
        conf = _config(tmp_path)
        first = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        row = _rows(tmp_path)[run.name]
        assert row["status"] == "complete" and row["moved_to"] is None
        assert tree(run) == copy and not list(other.iterdir())
        refusals = [line for line in first.stderr.splitlines() if "not moved" in line]
        assert len(refusals) == 1 and "same filesystem" in refusals[0], first.stderr
    finally:
        subprocess.run(["umount", str(other)], check=False)
