"""The journal: its own schema, and sruns-monitor's journals taken over in place.

sruns-monitor 0.1.9 (PyPI) made ``tasks(name, pid, tarfile, gcp_tarfile)``; 1.x adds an
untyped ``rundir_path``. It wrote ``''`` for what it had not done yet and ``pid`` 0, set
``tarfile`` once a local tarball was written (possibly partial when killed), and
``gcp_tarfile`` (``bucket/blob``) once it was uploaded. Its Firestore documents hold
``name``, ``workflow_status`` and ``storage``, and other tools add fields of their own.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
from pathlib import Path

import pytest
from helpers import REPO, gnu_untar, run_cli, run_in_process, tree

from sruns_stream.state.journal import STATUS_MEANINGS, STATUSES, Journal

SCHEMAS = {
    "0.1.9": "CREATE TABLE IF NOT EXISTS tasks (name text PRIMARY KEY, pid integer, tarfile text, gcp_tarfile text)",
    "1.x": "CREATE TABLE IF NOT EXISTS tasks (name text PRIMARY KEY, pid integer, tarfile text, gcp_tarfile text,"
           " rundir_path)",
}
FINISHED = "230101_M00001_0001_000000000-DONE1"
HALFWAY = "230101_M00001_0002_000000000-HALF2"
NEW = "230101_M00001_0003_000000000-NEW03"


def _legacy_journal(path: Path, version: str, watch: Path, bucket: str, basedir: str = "runs") -> None:
    """A journal as sruns-monitor leaves it: one run uploaded, one tarred (its tarball
    still on disk), one just seen."""
    with sqlite3.connect(path) as db:
        db.execute(SCHEMAS[version])
        rows = [
            (FINISHED, 0, f"{FINISHED}.tar.gz", f"{bucket}/{basedir}/{FINISHED}/{FINISHED}.tar.gz"),
            (HALFWAY, 4242, str(watch.parent / f"{HALFWAY}.tar.gz"), ""),
            (NEW, 0, "", ""),
        ]
        for name, pid, tarfile, gcp in rows:
            if version == "1.x":
                db.execute("INSERT INTO tasks VALUES (?, ?, ?, ?, ?)", (name, pid, tarfile, gcp, str(watch / name)))
            else:
                db.execute("INSERT INTO tasks VALUES (?, ?, ?, ?)", (name, pid, tarfile, gcp))
    os.chmod(path, 0o644)


@pytest.mark.parametrize("version", ["0.1.9", "1.x"])
def test_an_sruns_monitor_journal_migrates_and_keeps_its_columns(tmp_path: Path, version: str) -> None:
    db = tmp_path / "sruns.db"
    _legacy_journal(db, version, tmp_path / "watch", "bkt")
    proc = run_in_process("status", "--journal", str(db), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows[FINISHED]["status"] == "complete"
    # As gcloud, verify and restore take it; gcp_tarfile keeps sruns-monitor's form.
    assert rows[FINISHED]["location"] == f"gs://bkt/runs/{FINISHED}/{FINISHED}.tar.gz"
    assert rows[FINISHED]["gcp_tarfile"] == f"bkt/runs/{FINISHED}/{FINISHED}.tar.gz"
    assert rows[HALFWAY]["status"] == "new" and rows[HALFWAY]["legacy_tarfile"].endswith(f"{HALFWAY}.tar.gz")
    assert rows[NEW]["status"] == "new" and rows[NEW]["legacy_tarfile"] is None
    text = run_in_process("status", "--journal", str(db), "--long", cwd=tmp_path).stdout
    assert "sruns-monitor's local tarball" in text and f"{HALFWAY}.tar.gz" in text
    assert f"gs://bkt/runs/{FINISHED}/{FINISHED}.tar.gz" in text

    journal = Journal(db)
    finished = journal.get(FINISHED)
    assert finished is not None and finished.destination == "gs://bkt/runs" and finished.pid is None
    if version == "1.x":
        assert finished.rundir_found == str(tmp_path / "watch" / FINISHED)
    journal.close()
    # Its own columns are kept, with the values it reads after a roll-back.
    with sqlite3.connect(db) as conn:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(tasks)")]
        assert cols[:4] == ["name", "pid", "tarfile", "gcp_tarfile"]
        if version == "1.x":
            assert cols[4] == "rundir_path"
            assert conn.execute("SELECT rundir_path FROM tasks WHERE name = ?", (NEW,)).fetchone()[0] == str(
                tmp_path / "watch" / NEW)
        assert conn.execute("SELECT tarfile, gcp_tarfile FROM tasks WHERE name = ?", (FINISHED,)).fetchone() == (
            f"{FINISHED}.tar.gz", f"bkt/runs/{FINISHED}/{FINISHED}.tar.gz")
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_the_readme_status_table_is_the_journal_s() -> None:
    """One statement of what each workflow_status means: journal.STATUS_MEANINGS. The
    README's table must say exactly that."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Workflow status") :].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| (.*) \|$", section, re.MULTILINE))
    assert list(rows) == list(STATUSES)
    assert rows == STATUS_MEANINGS


# The journal holds upload session URIs, bearer credentials: 0600.
def test_a_journal_made_by_another_tool_is_made_0600_with_its_wal_and_shm(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # sruns-monitor's table, the file left 0644
        conn.execute("CREATE TABLE tasks (name text PRIMARY KEY, pid integer, tarfile text, gcp_tarfile text)")
    os.chmod(db, 0o644)
    holder = sqlite3.connect(db)  # keeps -wal and -shm in place while we look
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("SELECT * FROM tasks").fetchall()
    try:
        for suffix in ("-wal", "-shm"):
            if Path(f"{db}{suffix}").exists():
                os.chmod(f"{db}{suffix}", 0o644)
        # Opened by a command that writes (status only reads: it changes no file).
        Journal(db).close()
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{db}{suffix}")
            assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600, suffix
    finally:
        holder.close()


def test_a_transaction_cut_short_by_a_signal_does_not_wedge_the_journal(tmp_path: Path) -> None:
    """A KeyboardInterrupt (a second Ctrl-C lands wherever it lands) between BEGIN and the
    try that rolls back leaves the connection inside a transaction; the next write, the
    one that marks the row resumable, must still land."""
    import sqlite3

    from sruns_stream.state.journal import Journal

    journal = Journal(tmp_path / "j.db")
    journal.ensure("RUN1", status="uploading")
    journal._db.execute("BEGIN IMMEDIATE")  # what the interrupted write left behind
    journal._db.execute("UPDATE tasks SET status = 'tarring' WHERE name = 'RUN1'")
    journal.update("RUN1", status="not_running", last_error="signal 15")
    other = sqlite3.connect(tmp_path / "j.db")
    assert other.execute("SELECT status, last_error FROM tasks").fetchone() == ("not_running", "signal 15")
    other.close()
    journal.close()


def test_a_status_none_of_ours_is_read_as_not_running_with_why_until_the_next_write(tmp_path: Path) -> None:
    """A damaged or hand-edited status: never a crash in every command that lists the
    journal, and never "archived" (so nothing moves or sweeps the folder): read as
    not_running, the reason in last_error, and the first status written repairs it."""
    import io

    from sruns_stream.cli import main

    db = tmp_path / "j.db"
    journal = Journal(db)
    journal.ensure("RUN1", status="complete", last_error="disk hiccup")
    other = sqlite3.connect(db)
    with other:
        other.execute("UPDATE tasks SET status = 'Complete' WHERE name = 'RUN1'")
    other.close()
    why = "the journal's status 'Complete' is not one of ours (damaged); read as not_running"
    for reader in (journal, Journal(db, readonly=True)):
        task = reader.get("RUN1")
        assert task is not None and task.status == "not_running"
        assert task.last_error == f"{why}; last error: disk hiccup"
    out, err = io.StringIO(), io.StringIO()
    assert main(["status", "--journal", str(db), "--long"], out=out, err=err) == 0, err.getvalue()
    assert "RUN1  not_running: failed\n" in out.getvalue() and f"  error      {why}; " in out.getvalue()
    journal.update("RUN1", status="new")
    task = journal.get("RUN1")
    assert task is not None and task.status == "new" and task.last_error == "disk hiccup"
    journal.close()


def test_a_misspelt_status_passed_untyped_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    """mypy checks a ``status=`` written at the call; one that comes in a ``**fields``
    dict (typed ``dict[str, Any]``) is checked when it is written."""
    journal = Journal(tmp_path / "j.db")
    journal.ensure("RUN1", status="tarring")
    fields: dict[str, object] = {"status": "complet", "pid": None}
    with pytest.raises(ValueError, match=r"^unknown workflow status 'complet': one of new, starting, .*not_running$"):
        journal.update("RUN1", **fields)  # type: ignore[arg-type]  # the mistake under test
    task = journal.get("RUN1")
    assert task is not None and task.status == "tarring"
    journal.close()


# Each line ending in "# error" must be refused by mypy, every other line accepted.
_TYPED_CALLS = """\
from sruns_stream.state.journal import IN_PROGRESS, Journal, Task


def transitions(journal: Journal, task: Task) -> bool:
    journal.update("RUN", status="complete", pid=None)
    journal.ensure("RUN", status="new")
    journal.update("RUN", status="complet", pid=None)  # error
    journal.ensure("RUN", status="tarrring")  # error
    if task.status == "uploading_complete" or task.status in IN_PROGRESS:
        return True
    return task.status == "not-running"  # error
"""


@pytest.mark.slow  # mypy takes 3 to 7 s to load the package
@pytest.mark.timeout(120)
def test_mypy_refuses_a_misspelt_status(tmp_path: Path) -> None:
    snippet = tmp_path / "calls.py"
    snippet.write_text(_TYPED_CALLS)
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--cache-dir", str(tmp_path / "cache"),
         snippet.name],
        # This checkout's package, not an installed one.
        cwd=tmp_path, env={**os.environ, "MYPYPATH": str(REPO)}, capture_output=True, text=True, check=False,
    )
    flagged = sorted({int(m) for m in re.findall(r"^calls\.py:(\d+): error:", proc.stdout, re.M)})
    expected = [i for i, line in enumerate(_TYPED_CALLS.splitlines(), 1) if line.endswith("# error")]
    assert proc.returncode == 1 and flagged == expected, proc.stdout + proc.stderr


def _upload(gcs, blob: str, data: bytes) -> None:
    """Put an object in the emulator the way sruns-monitor's upload left it."""
    import urllib.parse
    import urllib.request

    url = f"{gcs.url}/upload/storage/v1/b/{gcs.bucket}/o?uploadType=media&name={urllib.parse.quote(blob, safe='')}"
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/gzip"})
    urllib.request.urlopen(req, timeout=30).close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("version", ["0.1.9", "1.x"])
def test_an_upgraded_daemon_archives_what_sruns_monitor_had_not_and_leaves_the_rest(
    gcs, firestore, tmp_path: Path, version: str
) -> None:
    import make_fake_run
    from google.cloud import firestore as gfs

    watch = tmp_path / "watch"
    for i, name in enumerate((FINISHED, HALFWAY, NEW)):
        make_fake_run.make_run(watch / name, "miseq", 1 << 20, seed=40 + i)
    copies = {name: tree(watch / name) for name in (FINISHED, HALFWAY, NEW)}
    db = tmp_path / "sruns.db"
    _legacy_journal(db, version, watch, gcs.bucket)
    old_blob = f"runs/{FINISHED}/{FINISHED}.tar.gz"
    _upload(gcs, old_blob, b"sruns-monitor's tarball")
    (tmp_path / f"{HALFWAY}.tar.gz").write_bytes(b"a partial tarball")  # left on local disk
    client = gfs.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"])
    for name, status, storage in ((FINISHED, "complete", f"{gcs.bucket}/{old_blob}"), (HALFWAY, "tarring", None)):
        doc = {"name": name, "workflow_status": status, "samplesheet_pubsub_data": {"from": "another tool"}}
        if storage:
            doc["storage"] = storage
        client.collection("sruns").document(name).set(doc)

    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({
        "watchdirs": [str(watch)], "completed_runs_dir": str(tmp_path / "completed"), "sqlite_db": str(db),
        "gcp_bucket_name": gcs.bucket, "gcp_bucket_basedir": "runs", "firestore_collection": "sruns",
        "cycle_pause_sec": 1, "sentinal_file_age_minutes": 0, "chunk_size": 262144, "leases": False,
    }))
    proc = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    journal = Journal(db)
    finished, halfway, new = (journal.get(n) for n in (FINISHED, HALFWAY, NEW))
    journal.close()
    assert finished is not None and halfway is not None and new is not None
    # Finished by sruns-monitor: not archived again (its object is untouched), not moved
    # (no manifest to compare the folder with).
    assert finished.status == "complete" and gcs.download(old_blob) == b"sruns-monitor's tarball"
    assert not (db.parent / "sruns.db.logs" / f"{FINISHED}.log").exists()
    assert (watch / FINISHED).is_dir()
    # Half-way and new: archived by streaming, verified, moved; the old tarball is kept.
    for name in (HALFWAY, NEW):
        row = halfway if name == HALFWAY else new
        assert row.status == "complete" and row.gcp_tarfile == f"{gcs.bucket}/runs/{name}/{name}.tar.gz", row
        archive = tmp_path / f"{name}.tgz"
        archive.write_bytes(gcs.download(f"runs/{name}/{name}.tar.gz"))
        gnu_untar(archive, tmp_path / "out" / name)
        assert tree(tmp_path / "out" / name / name) == copies[name]
    assert (tmp_path / f"{HALFWAY}.tar.gz").read_bytes() == b"a partial tarball"
    log = (tmp_path / "sruns.db.logs" / f"{HALFWAY}.log").read_text()
    assert f"sruns-monitor's local tarball {tmp_path / HALFWAY}.tar.gz" in log and "can be deleted" in log
    # The documents it wrote are updated in place: other tools' fields survive.
    doc = firestore.document("sruns", HALFWAY)
    assert doc is not None and doc["workflow_status"] == "complete"
    assert doc["storage"] == f"{gcs.bucket}/runs/{HALFWAY}/{HALFWAY}.tar.gz"
    assert doc["samplesheet_pubsub_data"] == {"from": "another tool"}
    doc = firestore.document("sruns", FINISHED)
    assert doc is not None and doc["storage"] == f"{gcs.bucket}/{old_blob}"
    assert doc["workflow_status"] == "complete" and doc["samplesheet_pubsub_data"] == {"from": "another tool"}

    # By hand, too: a finished run is reported archived (by sruns-monitor), not redone.
    again = run_in_process("archive", str(watch / FINISHED), "--config", str(conf), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "already archived" in again.stdout and "sruns-monitor" in again.stdout
    # Its object deleted since: archived again (by streaming), not "already archived".
    import urllib.parse
    import urllib.request

    quoted = urllib.parse.quote(old_blob, safe="")
    urllib.request.urlopen(urllib.request.Request(
        f"{gcs.url}/storage/v1/b/{gcs.bucket}/o/{quoted}", method="DELETE"), timeout=30).close()
    redone = run_in_process("archive", str(watch / FINISHED), "--config", str(conf), "--json", cwd=tmp_path)
    assert redone.returncode == 0, redone.stderr
    result = json.loads(redone.stdout)
    assert not result["already_complete"] and "is gone" in result["restart_reason"]
    archive = tmp_path / "finished.tgz"
    archive.write_bytes(gcs.download(old_blob))
    gnu_untar(archive, tmp_path / "out" / "finished")
    assert tree(tmp_path / "out" / "finished" / FINISHED) == copies[FINISHED]
