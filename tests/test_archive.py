"""`sruns-stream archive` end to end in real processes: round trips, errors, exit codes."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import gnu_untar, gzip_ok, journal_row, run_cli, run_in_process, tree

from sruns_stream.archiver.attempt import Strategy
from sruns_stream.archiver.lock import RunLock
from sruns_stream.archiver.run import choose_strategy
from sruns_stream.archiver.single import SingleStream
from sruns_stream.config import AUTO_STREAMS, ArchiveOptions
from sruns_stream.errors import UploadError
from sruns_stream.progress import NoProgress
from sruns_stream.storage.layout import parse_location


def _archive(run: Path, dest: Path, *extra: str, cwd: Path) -> dict:
    proc = run_in_process("archive", str(run), "--dest", str(dest), "--json", *extra, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["miseq", "novaseq"])
def test_round_trip_through_gnu_tar(make_run, tmp_path: Path, kind: str) -> None:
    run = make_run(kind, 6 << 20)
    os.symlink("RunInfo.xml", run / "link_to_runinfo")
    (run / "an_empty_dir").mkdir()
    result = _archive(run, tmp_path / "dest", cwd=tmp_path)
    archive = Path(result["location"])
    assert archive == tmp_path / "dest" / run.name / f"{run.name}.tar.gz"
    assert not archive.with_name(archive.name + ".part").exists()
    gzip_ok(archive)
    gnu_untar(archive, tmp_path / "out")
    assert tree(tmp_path / "out" / run.name) == tree(run)
    assert result["files"] == sum(1 for p in run.rglob("*") if p.is_file() and not p.is_symlink())
    assert result["archive_bytes"] == archive.stat().st_size
    if kind == "novaseq":
        # Every CBCL byte is stored, not deflated again.
        assert result["stored_bytes"] >= sum(p.stat().st_size for p in run.rglob("*.cbcl")) > 0


@pytest.mark.timeout(120)
def test_same_archive_bytes_for_1_2_and_4_threads_and_a_useful_manifest(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 3 << 20)
    digests = set()
    for threads in ("1", "2", "4"):
        r = _archive(run, tmp_path / f"d{threads}", "--threads", threads, "--force", cwd=tmp_path)
        digests.add(Path(r["location"]).read_bytes())
    assert len(digests) == 1
    tsv = (tmp_path / "d1" / run.name / f"{run.name}.manifest.tsv").read_text().splitlines()
    assert tsv[0].split("\t")[:3] == ["path", "size", "crc32c"]
    import google_crc32c

    rows = {line.split("\t")[0]: line.split("\t") for line in tsv[1:]}
    info = rows[f"{run.name}/RunInfo.xml"]
    assert int(info[1]) == (run / "RunInfo.xml").stat().st_size
    assert info[2] == f"{google_crc32c.value((run / 'RunInfo.xml').read_bytes()):08x}"
    assert all(r[2] for r in rows.values() if r[3] == "f")  # every file has its crc32c


@pytest.mark.timeout(120)
@pytest.mark.parametrize("flags,suffix", [(["--compression", "none"], ".tar"), (["--level", "3"], ".tar.gz")])
def test_compression_choices(make_run, tmp_path: Path, flags: list[str], suffix: str) -> None:
    run = make_run("miseq", 2 << 20)
    result = _archive(run, tmp_path / "dest", *flags, cwd=tmp_path)
    assert result["location"].endswith(suffix)
    assert result["compression"] == ("none" if suffix == ".tar" else "level 3")
    gnu_untar(Path(result["location"]), tmp_path / "out")
    assert tree(tmp_path / "out" / run.name) == tree(run)


def test_human_summary_line_and_sruns_monitor_columns(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 1 << 20)
    proc = run_in_process("archive", str(run), "--dest", str(tmp_path / "d"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert "\n" not in line
    # Human sizes (SI) and the ratio raw / archive, checked against the file and the
    # journal's exact counts (issue 24: the line printed raw byte counts).
    archive = tmp_path / "d" / run.name / f"{run.name}.tar.gz"
    journal = sqlite3.connect(tmp_path / "sruns.db")
    raw_bytes, files = journal.execute("SELECT raw_bytes, file_count FROM tasks").fetchone()
    journal.close()
    m = re.fullmatch(rf"{re.escape(run.name)}: ([\d,]+) files, ([\d.]+) (kB|MB) raw -> ([\d.]+) (kB|MB) archive "
                     r"\(ratio (\d+\.\d\d), auto \(level 1\)\), crc32c [0-9a-f]{8}, [\d.]+ MB/s -> (.+)", line)
    assert m, line
    unit = {"kB": 1e3, "MB": 1e6}
    assert int(m[1].replace(",", "")) == files
    assert float(m[2]) * unit[m[3]] == pytest.approx(raw_bytes, rel=0.006)
    assert float(m[4]) * unit[m[5]] == pytest.approx(archive.stat().st_size, rel=0.006)
    assert m[6] == f"{raw_bytes / archive.stat().st_size:.2f}" and m[7] == str(archive)
    db = sqlite3.connect(tmp_path / "sruns.db")
    name, pid, tarfile, gcp_tarfile, status = db.execute(
        "SELECT name, pid, tarfile, gcp_tarfile, status FROM tasks"
    ).fetchone()
    assert (name, status, gcp_tarfile, pid) == (run.name, "complete", None, None)
    assert tarfile.endswith(f"{run.name}.tar.gz")
    assert oct(os.stat(tmp_path / "sruns.db").st_mode & 0o777) == "0o600"
    again = run_in_process("archive", str(run), "--dest", str(tmp_path / "d"), cwd=tmp_path)
    assert again.returncode == 0 and "already archived" in again.stdout


def _error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_rundir_missing_or_not_a_directory(tmp_path: Path) -> None:
    _error(run_in_process("archive", str(tmp_path / "nope"), cwd=tmp_path), 2, "nope", "does not exist")
    (tmp_path / "f").write_text("x")
    _error(run_in_process("archive", str(tmp_path / "f"), cwd=tmp_path), 2, "not a directory")


def test_bad_usage_and_bad_config_exit_2(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 1 << 20)
    proc = run_in_process("archive", str(run), "--level", "0", cwd=tmp_path)
    _error(proc, 2, "level")
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"watchdir": "/x", "chunk_size": 1000}))
    _error(run_in_process("archive", str(run), "--config", str(conf), cwd=tmp_path), 2, "chunk_size", "256 KiB")
    conf.write_text(json.dumps({"wtachdir": "/x"}))
    _error(run_in_process("archive", str(run), "--config", str(conf), cwd=tmp_path), 2, "wtachdir")


def _without_dac_override() -> list[str]:
    """As root, permission bits are ignored: drop the capabilities that bypass them."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv (util-linux): cannot make a file unreadable")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_unreadable_file_is_named_and_nothing_is_declared_done(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 1 << 20)
    secret = run / "Logs" / "secret.log"
    secret.parent.mkdir(exist_ok=True)
    secret.write_text("x")
    secret.chmod(0)
    proc = run_cli("archive", str(run), "--dest", str(tmp_path / "d"), cwd=tmp_path, timeout=60,
                   prefix=_without_dac_override())
    _error(proc, 1, "secret.log", "permission")
    # Nothing declared done: no archive anywhere, and the journal does not say complete.
    assert not list(tmp_path.rglob("*.tar.gz"))
    assert journal_row(tmp_path / "sruns.db", run.name).get("status") != "complete"


def test_destination_not_writable(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 1 << 20)
    (tmp_path / "file").write_text("x")
    _error(run_in_process("archive", str(run), "--dest", str(tmp_path / "file" / "sub"), cwd=tmp_path), 1,
           "cannot write")


def test_second_archive_of_the_same_run_is_refused(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 1 << 20)
    with RunLock(tmp_path / "sruns.db", run.name):
        # 75: temporary, the same command later works (once the other process is done).
        _error(run_in_process("archive", str(run), "--dest", str(tmp_path / "d"), cwd=tmp_path), 75,
               "already being archived")
    assert run_in_process("archive", str(run), "--dest", str(tmp_path / "d"), cwd=tmp_path).returncode == 0


@pytest.mark.slow  # a small filesystem filled for real, then resumed: seconds
@pytest.mark.timeout(120)
def test_disk_full_keeps_progress_and_resumes_once_there_is_space(make_run, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=False)
    if mounted.returncode != 0:
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        run = make_run("novaseq", 3 << 20)  # incompressible: ~3 MiB of archive
        args = ("archive", str(run), "--dest", str(small), "--block-size", "64K", "--sync-interval", "256K")
        _error(run_in_process(*args, cwd=tmp_path), 1, "no space left")
        assert not list(small.rglob("*.tar.gz"))
        db = sqlite3.connect(tmp_path / "sruns.db")
        status, durable = db.execute("SELECT status, durable_offset FROM tasks").fetchone()
        assert status == "not_running" and durable > 0
        subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
        proc = run_in_process(*args, "--json", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["resumed_from_archive"] == durable
        gnu_untar(Path(result["location"]), tmp_path / "out")
        assert tree(tmp_path / "out" / run.name) == tree(run)
    finally:
        subprocess.run(["umount", str(small)], check=True)


def _patch_bucket(gcs, **fields: object) -> None:  # type: ignore[no-untyped-def]
    """Bucket settings set over the emulator's JSON API, as an administrator would."""
    request = urllib.request.Request(
        f"{gcs.url}/storage/v1/b/{gcs.bucket}", data=json.dumps(fields).encode(), method="PATCH",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60):
        pass


@pytest.mark.timeout(120)
def test_the_strategy_is_picked_once_from_the_destination_and_the_buckets_policy(gcs) -> None:  # type: ignore[no-untyped-def]
    big = 64 << 30  # a tar stream of this size: no byte is produced here
    notes = io.StringIO()

    def pick(dest: str, size: int = big, **options: Any) -> Strategy:
        return choose_strategy(parse_location(dest), size, ArchiveOptions(**options), NoProgress(notes), "run1")

    # Only GCS has parts to compose: any other destination is one stream, however large.
    assert isinstance(pick("/tmp/somewhere", upload_streams=4), SingleStream)
    assert isinstance(pick("null", upload_streams=4), SingleStream)
    # One stream asked for, no volumes needed: decided without asking the bucket.
    assert isinstance(pick("gs://no-such-bucket-anywhere/p", upload_streams=1), SingleStream)
    # Large enough for the automatic streams, in a plain bucket: segments.
    auto = pick(f"gs://{gcs.bucket}/p")
    assert not isinstance(auto, SingleStream) and auto.streams == AUTO_STREAMS
    # Volumes need parts, even on one stream.
    assert pick(f"gs://{gcs.bucket}/p", upload_streams=1, volume_size=8 << 30).streams == 1
    assert not isinstance(pick(f"gs://{gcs.bucket}/p", upload_streams=1, volume_size=8 << 30), SingleStream)
    assert notes.getvalue() == ""

    # A class that bills early deletion: one stream, said once; volumes still use parts, said too.
    _patch_bucket(gcs, storageClass="NEARLINE")
    assert isinstance(pick(f"gs://{gcs.bucket}/p", upload_streams=4), SingleStream)
    assert "run1: one upload stream, not 4: bucket" in notes.getvalue() and "NEARLINE" in notes.getvalue()
    assert not isinstance(pick(f"gs://{gcs.bucket}/p", upload_streams=4, volume_size=8 << 30), SingleStream)
    assert "volumes need parts, so they are used" in notes.getvalue()

    # A retention policy: parts could never be deleted; volumes cannot be made there at all.
    _patch_bucket(gcs, storageClass="STANDARD", retentionPolicy={"retentionPeriod": "86400"})
    assert isinstance(pick(f"gs://{gcs.bucket}/p", upload_streams=4), SingleStream)
    with pytest.raises(UploadError) as e:
        pick(f"gs://{gcs.bucket}/p", upload_streams=4, volume_size=8 << 30)
    e.match(r"run1 needs several volumes .* it has a retention policy \(86400 s\).*archive it to another bucket")
