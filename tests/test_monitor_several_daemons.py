"""Several daemons on one share: each run archived exactly once, and a dead one's run
taken over after its lease. Real processes against the GCS and Firestore emulators."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import gnu_untar, journal_row, journal_rows, start_cli, tree, wait_until

# Real processes killed, stopped or run for many seconds: not the quick inner loop.
pytestmark = pytest.mark.slow


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


def _daemon(conf: Path, cwd: Path) -> subprocess.Popen[str]:
    return start_cli("monitor", "--config", str(conf), cwd=cwd, capture=False)


def _complete(db: Path) -> set[str]:
    return {name for name, row in journal_rows(db).items() if row["status"] == "complete"}


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
        wait_until(lambda: _complete(tmp_path / "hostA.db") | _complete(tmp_path / "hostB.db") >= set(names),
                   "every run complete on one host or the other", timeout=180)
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

    try:
        wait_until(lambda: (journal_row(tmp_path / "hostA.db", run.name).get("durable_offset") or 0) >= 1 << 20,
                   "host A storing 1 MiB", timeout=120, proc=a)
    finally:
        a.send_signal(signal.SIGKILL)  # also when the wait failed: never leave a daemon behind
        a.wait()
    b = _daemon(_conf(tmp_path, gcs, "hostB", lease_sec=3), tmp_path)
    try:
        wait_until(lambda: run.name in _complete(tmp_path / "hostB.db"), "host B completing the run", timeout=180)
    finally:
        b.send_signal(signal.SIGTERM)
        assert b.wait(60) == 0
    assert run.name not in _complete(tmp_path / "hostA.db")
    blob = f"runs/{run.name}/{run.name}.tar.gz"
    (tmp_path / "a.tar.gz").write_bytes(gcs.download(blob))
    gnu_untar(tmp_path / "a.tar.gz", tmp_path / "out")
    assert tree(tmp_path / "out" / run.name) == original
    assert firestore.document("sruns", run.name)["host"] == "hostB"
