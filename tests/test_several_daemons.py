"""Several daemons on one share: each run archived exactly once, and a dead one's run
taken over after its lease. Real processes against the GCS and Firestore emulators."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, gnu_untar, tree


def _conf(tmp_path: Path, gcs, who: str, **extra) -> Path:
    conf = {
        "watchdir": str(tmp_path / "watch"),
        "completed_runs_dir": str(tmp_path / "completed"),
        "sqlite_db": str(tmp_path / f"{who}.db"),
        "gcp_bucket_name": gcs.bucket,
        "gcp_bucket_basedir": "runs",
        "firestore_collection": "sruns",
        "host_id": who,
        "cycle_pause_sec": 1,
        "chunk_size": 256 * 1024,
        "threads": 1,
    }
    conf.update(extra)
    path = tmp_path / f"{who}.json"
    path.write_text(json.dumps(conf))
    return path


def _daemon(conf: Path, cwd: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "sruns_stream", "monitor", "--config", str(conf)],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _complete(db: Path) -> set[str]:
    if not db.exists():
        return set()
    con = sqlite3.connect(db)
    try:
        return {r[0] for r in con.execute("SELECT name FROM tasks WHERE status = 'complete'")}
    except sqlite3.OperationalError:  # the daemon has created the file, not yet its tables
        return set()
    finally:
        con.close()


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.timeout(300)
def test_two_daemons_archive_every_run_exactly_once(gcs, firestore, tmp_path: Path) -> None:
    import make_fake_run

    (tmp_path / "watch").mkdir()
    names = []
    for i in range(4):
        run = tmp_path / "watch" / f"240101_M00001_00{i:02d}_000000000-TWO{i:02d}"
        make_fake_run.make_run(run, "miseq", 2 << 20, seed=20 + i)
        names.append(run.name)
    a = _daemon(_conf(tmp_path, gcs, "hostA"), tmp_path)
    b = _daemon(_conf(tmp_path, gcs, "hostB"), tmp_path)
    try:
        assert _wait(lambda: _complete(tmp_path / "hostA.db") | _complete(tmp_path / "hostB.db") >= set(names), 180)
    finally:
        for d in (a, b):
            d.send_signal(signal.SIGTERM)
        for d in (a, b):
            assert d.wait(60) == 0
    done_a, done_b = _complete(tmp_path / "hostA.db"), _complete(tmp_path / "hostB.db")
    assert not done_a & done_b, "a run was archived twice"
    assert done_a | done_b == set(names)
    for name in names:
        doc = firestore.document("sruns", name)
        assert doc is not None and doc["workflow_status"] == "complete"
        assert doc["host"] == ("hostA" if name in done_a else "hostB")


@pytest.mark.timeout(300)
def test_a_dead_daemons_run_is_taken_over_after_its_lease(gcs, firestore, tmp_path: Path) -> None:
    import make_fake_run

    (tmp_path / "watch").mkdir()
    run = tmp_path / "watch" / "240101_A00001_0099_BHTAKEOVER"
    make_fake_run.make_run(run, "novaseq", 24 << 20, seed=30)
    original = tree(run)
    a = _daemon(_conf(tmp_path, gcs, "hostA", lease_sec=3), tmp_path)

    def a_stored_some() -> bool:
        if not (tmp_path / "hostA.db").exists():
            return False
        con = sqlite3.connect(tmp_path / "hostA.db")
        try:
            row = con.execute("SELECT durable_offset FROM tasks WHERE name = ?", (run.name,)).fetchone()
        except sqlite3.OperationalError:  # the daemon has created the file, not yet its tables
            return False
        finally:
            con.close()
        return bool(row and row[0] >= 1 << 20)

    try:
        assert _wait(a_stored_some, 120)
    finally:
        a.send_signal(signal.SIGKILL)  # also when the wait failed: never leave a daemon behind
        a.wait()
    b = _daemon(_conf(tmp_path, gcs, "hostB", lease_sec=3), tmp_path)
    try:
        assert _wait(lambda: run.name in _complete(tmp_path / "hostB.db"), 180)
    finally:
        b.send_signal(signal.SIGTERM)
        assert b.wait(60) == 0
    assert run.name not in _complete(tmp_path / "hostA.db")
    blob = f"runs/{run.name}/{run.name}.tar.gz"
    (tmp_path / "a.tar.gz").write_bytes(gcs.download(blob))
    gnu_untar(tmp_path / "a.tar.gz", tmp_path / "out")
    assert tree(tmp_path / "out" / run.name) == original
    assert firestore.document("sruns", run.name)["host"] == "hostB"
