"""Several upload streams and volumes, against the real gcp-storage-emulator.

Oracles: the archive of the same folder made by one stream to a local --dest (byte
equality of the object, and of the volumes' concatenation), GNU tar and the input tree,
the manifest written beside it. Faults (a kill while a request is held, a flipped byte)
come from tests/faultproxy.py, a fake used only for faults the emulator cannot produce;
what went over the wire again after a crash is counted there too.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

import google_crc32c
import pytest
from faultproxy import Fault, FaultProxy, resent
from helpers import (
    journal_row,
    kill_at_hold,
    run_in_process,
    start_cli,
    tree,
    untars_to_the_input,
    wait_until,
)

from sruns_stream.archiver.run import archive_run
from sruns_stream.config import ArchiveOptions
from sruns_stream.errors import IntegrityError, Interrupted
from sruns_stream.progress import NoProgress
from sruns_stream.storage import gzidx, volumes
from sruns_stream.storage.layout import PARTS_FOLDER

CHUNK = 256 * 1024
FLAGS = ("--chunk-size", "256K", "--block-size", "64K", "--threads", "2", "--json")
PREFIX = "runs"


def _run_with_a_big_file(make_run, size: int = 10 << 20, big: int = 7 << 20, seed: int = 0) -> Path:
    """A run folder holding, besides its usual files, one file spanning several segments
    (segments are at least 8 chunks: 2 MiB here), half random and half compressible."""
    run = make_run("miseq", size, seed=seed)
    rng = random.Random(seed)
    data = rng.randbytes(big // 2) + bytes(range(256)) * (big // 512)
    (run / "Data" / "big.bin").write_bytes(data)
    return run


def _archive(run: Path, dest: str, db: Path, cwd: Path, *extra: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    return run_in_process("archive", str(run), "--dest", dest, *FLAGS, *extra, "--journal", str(db), cwd=cwd, env=env)


def _reference(run: Path, tmp_path: Path) -> tuple[bytes, bytes]:
    """(archive, manifest) of one stream to a local directory, with no volumes."""
    proc = _archive(run, str(tmp_path / "ref"), tmp_path / "ref.db", tmp_path)
    assert proc.returncode == 0, proc.stderr
    path = Path(json.loads(proc.stdout)["location"])
    return path.read_bytes(), path.with_name(f"{run.name}.manifest.tsv").read_bytes()


def _blob(run: Path) -> str:
    return f"{PREFIX}/{run.name}/{run.name}.tar.gz"


def _manifest_blob(run: Path) -> str:
    return f"{PREFIX}/{run.name}/{run.name}.manifest.tsv"


def _index_blob(run: Path) -> str:
    return f"{PREFIX}/{run.name}/{run.name}.index.tsv"


def _read_index_blobs(run: Path) -> list[str]:
    """The indexes other tools read, beside the archive (`storage.read_indexes`)."""
    return [f"{_blob(run)}.gzidx", f"{_blob(run)}.index.sqlite"]


def _upload(gcs, name: str, data: bytes) -> None:
    url = f"{gcs.url}/upload/storage/v1/b/{gcs.bucket}/o?uploadType=media&name={urllib.parse.quote(name, safe='')}"
    urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"), timeout=60).read()


def _delete(gcs, name: str) -> None:
    url = f"{gcs.url}/storage/v1/b/{gcs.bucket}/o/{urllib.parse.quote(name, safe='')}"
    urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=60).read()


# -- one object from several streams --------------------------------------------------------


@pytest.mark.timeout(300)
def test_streams_1_2_and_7_give_the_same_object_which_untars_to_the_input(gcs, make_run, tmp_path: Path) -> None:
    run = _run_with_a_big_file(make_run)
    reference, manifest = _reference(run, tmp_path)
    for streams in (1, 2, 7):
        db = tmp_path / f"s{streams}.db"
        proc = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", db, tmp_path, "--streams", str(streams), "--force")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["streams"] == streams and result["volumes"] == 1
        data = gcs.download(_blob(run))
        assert data == reference, f"--streams {streams}"
        assert f"{google_crc32c.value(data):08x}" == result["crc32c"]
        assert gcs.download(_manifest_blob(run)) == manifest  # member crc32c joined across segments
        # The GZIDX beside it holds the access index's points, joined across segments too.
        points = [tuple(int(v) for v in line.split("\t")) for line in
                  gcs.download(_index_blob(run)).decode().splitlines()[1:]]
        parsed = gzidx.parse(gcs.download(_read_index_blobs(run)[0]), "gzidx")
        assert [(p.raw, p.archive) for p in parsed.points] == points and parsed.compressed_size == len(data)
        # The temporaries are gone: the archive and its manifest are all that is left.
        assert gcs.names() == sorted([_blob(run), _manifest_blob(run), _index_blob(run), *_read_index_blobs(run)])
        if streams > 1:
            segments = journal_rows_of(db, run.name)
            assert len(segments) >= 3
            big = (run / "Data" / "big.bin").stat().st_size
            assert big > 2 * max(s["raw_end"] - s["raw_start"] for s in segments)  # spans 3+ segments
    untars_to_the_input(gcs.download(_blob(run)), run, tmp_path, "streams")


def journal_rows_of(db: Path, run: str) -> list[dict[str, int]]:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT raw_start, raw_end FROM segments WHERE task = ? ORDER BY seq", (run,)).fetchall()
    finally:
        con.close()
    return [{"raw_start": a, "raw_end": b} for a, b in rows]


# -- crash and resume -------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_kill_9_twice_during_a_parallel_upload_then_the_same_command_gives_the_same_object(
    gcs, make_run, tmp_path: Path
) -> None:
    run = _run_with_a_big_file(make_run, seed=1)
    reference, _ = _reference(run, tmp_path)
    db = tmp_path / "sruns.db"
    dest = f"gs://{gcs.bucket}/{PREFIX}"
    streams = 3
    args = ("archive", str(run), "--dest", dest, *FLAGS, "--streams", str(streams), "--journal", str(db))
    with FaultProxy(gcs.url) as proxy:
        env = {"STORAGE_EMULATOR_HOST": proxy.url}
        # Crash 1 while the 6th chunk (of any segment) is half sent.
        proxy.add(Fault("hold", nth=6))
        kill_at_hold(start_cli(*args, cwd=tmp_path, env=env), proxy)
        # Crash 2 after a chunk reached the server, before its answer reached the client.
        proxy.epoch = 1
        proxy.add(Fault("hold_stored", nth=5))
        kill_at_hold(start_cli(*args, cwd=tmp_path, env=env), proxy)
        proxy.epoch = 2
        proc = run_in_process(*args, cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["resumed_from_raw"] > 0 or "resum" in proc.stderr
    data = gcs.download(_blob(run))
    assert data == reference
    assert gcs.names() == sorted([_blob(run), _manifest_blob(run), _index_blob(run), *_read_index_blobs(run)])
    # Counted on the wire, per session: at most one chunk per stream went again.
    assert resent(proxy.log, 1) <= streams * CHUNK
    assert resent(proxy.log, 2) <= streams * CHUNK
    assert resent(proxy.log, 1) + resent(proxy.log, 2) > 0  # the crashes did cut chunks


class _StopAtTheFirstBlock(NoProgress):
    """A stop asked for once the first block is out (as SIGTERM is honoured between blocks)."""

    def update(self, done: int, output_bytes: int, files_done: int | None = None) -> None:
        raise Interrupted("stopped for the test")


@pytest.mark.timeout(240)
def test_a_run_begun_on_one_stream_is_not_continued_in_segments(gcs, make_run, tmp_path: Path, journal) -> None:  # type: ignore[no-untyped-def]
    """In process: the strategy is picked after the decision to resume, and a resume
    made with the other strategy's progress starts from zero, saying why."""
    run = _run_with_a_big_file(make_run)
    reference, _ = _reference(run, tmp_path)
    dest = f"gs://{gcs.bucket}/{PREFIX}"
    one = ArchiveOptions(chunk_size=CHUNK, block_size=64 << 10, threads=2, upload_streams=1)
    with pytest.raises(Interrupted):
        archive_run(run, dest, one, journal, _StopAtTheFirstBlock(io.StringIO()))
    task = journal.get(run.name)
    assert task is not None and task.manifest_id is not None  # resumable, by one stream
    notes = io.StringIO()
    result = archive_run(run, dest, replace(one, upload_streams=2), journal, NoProgress(notes))
    assert (result.restart_reason, result.streams) == ("the number of upload streams changed", 2)
    assert f"{run.name}: starting from zero: the number of upload streams changed" in notes.getvalue()
    assert gcs.download(_blob(run)) == reference


@pytest.mark.timeout(240)
def test_a_crash_after_compose_before_the_temporaries_are_deleted_leaves_no_orphan(
    gcs, make_run, tmp_path: Path
) -> None:
    run = _run_with_a_big_file(make_run, seed=2)
    reference, _ = _reference(run, tmp_path)
    db = tmp_path / "sruns.db"
    args = ("archive", str(run), "--dest", f"gs://{gcs.bucket}/{PREFIX}", *FLAGS, "--streams", "2",
            "--journal", str(db))
    with FaultProxy(gcs.url) as proxy:
        env = {"STORAGE_EMULATOR_HOST": proxy.url}
        proxy.add(Fault("hold", target="delete"))
        kill_at_hold(start_cli(*args, cwd=tmp_path, env=env), proxy)
        assert any(e.target == "compose" for e in proxy.log)
        names = gcs.names()
        assert _blob(run) in names and any(f"/{PARTS_FOLDER}/" in n for n in names)
        assert journal_row(db, run.name)["status"] != "complete"
        proxy.epoch = 1
        proc = run_in_process(*args, cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
        # Composed already: the next run finishes the job, it does not upload again.
        assert not [e for e in proxy.exchanges("chunk", epoch=1)]
    assert gcs.download(_blob(run)) == reference
    assert gcs.names() == sorted([_blob(run), _manifest_blob(run), _index_blob(run), *_read_index_blobs(run)])
    assert journal_row(db, run.name)["status"] == "complete"


@pytest.mark.timeout(240)
def test_a_segment_whose_crc32c_does_not_match_fails_loudly_and_the_next_run_mends_it(
    gcs, make_run, tmp_path: Path
) -> None:
    run = _run_with_a_big_file(make_run, seed=3)
    reference, _ = _reference(run, tmp_path)
    db = tmp_path / "sruns.db"
    args = ("archive", str(run), "--dest", f"gs://{gcs.bucket}/{PREFIX}", *FLAGS, "--streams", "2",
            "--journal", str(db))
    with FaultProxy(gcs.url) as proxy:
        proxy.add(Fault("corrupt", nth=3))  # one byte flipped in a chunk of some segment
        proc = run_in_process(*args, cwd=tmp_path, env={"STORAGE_EMULATOR_HOST": proxy.url})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("sruns-stream: error: ") and "crc32c" in lines[-1], proc.stderr
    assert f"/{PARTS_FOLDER}/" in lines[-1]  # names the temporary that came out wrong
    assert gcs.resource(_blob(run)) is None  # nothing under the archive's name
    assert "crc32c" in journal_row(db, run.name)["last_error"]
    proc = run_in_process(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert gcs.download(_blob(run)) == reference
    assert gcs.names() == sorted([_blob(run), _manifest_blob(run), _index_blob(run), *_read_index_blobs(run)])


# -- volumes ----------------------------------------------------------------------------------


def _volume_names(names: list[str], archive: str) -> list[str]:
    return sorted(n for n in names if n.startswith(archive + ".") and n[len(archive) + 1:].isdigit())


@pytest.mark.timeout(300)
def test_volumes_on_gcs_concatenate_to_the_archive_and_verify_and_restore_name_a_bad_one(
    gcs, make_run, tmp_path: Path
) -> None:
    run = _run_with_a_big_file(make_run, size=4 << 20, big=3 << 20, seed=4)
    reference, manifest = _reference(run, tmp_path)
    db = tmp_path / "sruns.db"
    proc = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", db, tmp_path, "--streams", "2", "--volume-size", "1M")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    names = gcs.names()
    vols = _volume_names(names, _blob(run))
    assert len(vols) >= 3 and result["volumes"] == len(vols)
    assert _blob(run) not in names  # no object has the archive's own name then
    assert all(gcs.resource(v)["size"] and int(gcs.resource(v)["size"]) <= 1 << 20 for v in vols)
    assert b"".join(gcs.download(v) for v in vols) == reference
    assert gcs.download(_manifest_blob(run)) == manifest
    listed = volumes.parse(gcs.download(volumes.listing_name(_blob(run))), "listing")
    assert [f"{PREFIX}/{run.name}/{v.name}" for v in listed] == vols
    assert [v.crc32c for v in listed] == [google_crc32c.value(gcs.download(v)) for v in vols]
    task = journal_row(db, run.name)
    assert task["gcp_tarfile"] == f"{gcs.bucket}/{_blob(run)}"
    assert json.loads(task["volumes"]) == [f"{gcs.bucket}/{v}" for v in vols]
    assert gcs.names() == sorted([*vols, _manifest_blob(run), _index_blob(run), volumes.listing_name(_blob(run)),
                                  *_read_index_blobs(run)])

    # The same command again: already archived (every volume is looked at).
    again = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", db, tmp_path, "--streams", "2", "--volume-size", "1M")
    assert again.returncode == 0 and json.loads(again.stdout)["already_complete"], again.stderr

    verify = run_in_process("verify", run.name, "--journal", str(db), cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr + verify.stdout
    restored = tmp_path / "restored"
    restore = run_in_process("restore", f"gs://{gcs.bucket}/{_blob(run)}", str(restored), cwd=tmp_path)
    assert restore.returncode == 0, restore.stderr + restore.stdout
    assert tree(restored / run.name) == tree(run)

    # A truncated volume, then a missing one: verify names it.
    second = gcs.download(vols[1])
    _upload(gcs, vols[1], second[: len(second) // 2])
    verify = run_in_process("verify", run.name, "--journal", str(db), cwd=tmp_path)
    assert verify.returncode == 1
    assert f"gs://{gcs.bucket}/{vols[1]} (volume 2 of {len(vols)})" in verify.stdout + verify.stderr
    assert "truncated" in verify.stdout + verify.stderr
    _delete(gcs, vols[1])
    verify = run_in_process("verify", run.name, "--journal", str(db), cwd=tmp_path)
    assert verify.returncode == 1
    assert f"gs://{gcs.bucket}/{vols[1]} (volume 2 of {len(vols)}) is missing" in verify.stdout + verify.stderr
    # And the archive command no longer calls the run archived: it archives it again.
    proc = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", db, tmp_path, "--streams", "2", "--volume-size", "1M")
    assert proc.returncode == 0 and not json.loads(proc.stdout)["already_complete"], proc.stderr
    assert b"".join(gcs.download(v) for v in vols) == reference


@pytest.mark.timeout(240)
def test_a_single_object_archive_replaces_earlier_volumes(gcs, make_run, tmp_path: Path) -> None:
    run = _run_with_a_big_file(make_run, size=4 << 20, big=3 << 20, seed=5)
    reference, _ = _reference(run, tmp_path)
    db = tmp_path / "sruns.db"
    assert _archive(run, f"gs://{gcs.bucket}/{PREFIX}", db, tmp_path, "--volume-size", "1M").returncode == 0
    assert len(_volume_names(gcs.names(), _blob(run))) >= 3
    proc = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", db, tmp_path, "--force")
    assert proc.returncode == 0, proc.stderr
    # `gcloud storage cat .../RUN.tar.gz.[0-9]*` must never find an older archive's volumes.
    assert gcs.names() == sorted([_blob(run), _manifest_blob(run), _index_blob(run), *_read_index_blobs(run)])
    assert gcs.download(_blob(run)) == reference


@pytest.mark.slow  # kills a real process
@pytest.mark.timeout(300)
def test_local_volumes_concatenate_to_the_archive_resume_after_kill_9_and_a_bad_one_is_named(
    make_run, tmp_path: Path
) -> None:
    run = _run_with_a_big_file(make_run, size=6 << 20, big=5 << 20, seed=6)
    reference, manifest = _reference(run, tmp_path)
    dest = tmp_path / "dest"
    db = tmp_path / "sruns.db"
    args = ("archive", str(run), "--dest", str(dest), *FLAGS, "--volume-size", "1M", "--sync-interval", "256K",
            "--journal", str(db))
    # Killed while the third volume is being written.
    proc = start_cli(*args, cwd=tmp_path)
    third = dest / run.name / f"{run.name}.tar.gz.part.2"
    wait_until(lambda: third.exists() and third.stat().st_size >= 300_000, f"{third.name} written", proc=proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert journal_row(db, run.name)["durable_offset"] > 2 << 20
    done = run_in_process(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["resumed_from_archive"] > 2 << 20

    folder = dest / run.name
    vols = sorted(p for p in folder.iterdir() if p.name[len(run.name) + 8:].isdigit()
                  and p.name.startswith(f"{run.name}.tar.gz."))
    assert len(vols) >= 3 and result["volumes"] == len(vols)
    assert [p.stat().st_size for p in vols[:-1]] == [1 << 20] * (len(vols) - 1)
    assert b"".join(p.read_bytes() for p in vols) == reference
    assert (folder / f"{run.name}.manifest.tsv").read_bytes() == manifest
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*(p.name for p in vols), f"{run.name}.manifest.tsv", f"{run.name}.index.tsv", f"{run.name}.volumes.tsv",
         f"{run.name}.tar.gz.gzidx", f"{run.name}.tar.gz.index.sqlite"]
    )  # no part file left, no file under the archive's own name (the indexes for other tools describe it)
    assert gzidx.parse((folder / f"{run.name}.tar.gz.gzidx").read_bytes(), "gzidx").compressed_size == len(reference)
    listed = volumes.parse((folder / f"{run.name}.volumes.tsv").read_bytes(), "listing")
    assert [(v.name, v.size, v.crc32c) for v in listed] == [
        (p.name, p.stat().st_size, google_crc32c.value(p.read_bytes())) for p in vols
    ]
    assert json.loads(journal_row(db, run.name)["volumes"]) == [str(p) for p in vols]
    # The README's local recipe: the shell's glob of the volumes, GNU tar.
    (tmp_path / "by-tar").mkdir()
    untar = subprocess.run(["bash", "-o", "pipefail", "-c", f"cat {folder}/{run.name}.tar.gz.[0-9]* | tar xz"],
                           cwd=tmp_path / "by-tar", capture_output=True, text=True, timeout=120)
    assert untar.returncode == 0 and untar.stderr == "", untar.stderr
    assert tree(tmp_path / "by-tar" / run.name) == tree(run)

    verify = run_in_process("verify", run.name, "--journal", str(db), cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr + verify.stdout
    restore = run_in_process("restore", str(vols[0]), str(tmp_path / "restored"), cwd=tmp_path)  # one volume named
    assert restore.returncode == 0, restore.stderr + restore.stdout
    assert tree(tmp_path / "restored" / run.name) == tree(run)

    original = vols[1].read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    vols[1].write_bytes(bytes(flipped))
    verify = run_in_process("verify", str(folder), cwd=tmp_path)
    assert verify.returncode == 1
    assert f"{vols[1]} (volume 2 of {len(vols)})" in verify.stdout + verify.stderr
    vols[1].unlink()
    verify = run_in_process("verify", str(folder), cwd=tmp_path)
    assert verify.returncode == 1 and f"{vols[1]} (volume 2 of {len(vols)}) is missing" in verify.stdout
    vols[1].write_bytes(original)
    assert run_in_process("verify", str(folder), cwd=tmp_path).returncode == 0


def test_the_volume_listing_reads_back_what_it_wrote_and_refuses_what_it_is_not() -> None:
    listed = [volumes.Volume("R.tar.gz.000", 1 << 20, 0x1C2D3E4F), volumes.Volume("R.tar.gz.001", 5, 0)]
    assert volumes.parse(volumes.render(listed), "x") == listed
    for bad in (b"", b"name\tsize\n", b"volume\tsize\tcrc32c\n", b"volume\tsize\tcrc32c\nR.000\tx\t0\n",
                b"volume\tsize\tcrc32c\n../R.000\t1\t0\n", b"\xff\xfe"):
        with pytest.raises(IntegrityError):
            volumes.parse(bad, "x")
    assert volumes.combined([(3, google_crc32c.value(b"abc")), (2, google_crc32c.value(b"de"))]) == (
        5, google_crc32c.value(b"abcde"))
    assert volumes.is_stored_form("R.tar.gz", "R.tar.gz.007") and volumes.is_stored_form("R.tar.gz", "R.tar.gz")
    assert volumes.is_stored_form("R.tar.gz", "R.volumes.tsv") and volumes.listing_name("R.tar.gz") == "R.volumes.tsv"
    assert volumes.is_stored_form("R.tar.gz", "R.tar.gz.volumes.tsv")  # the listing's name before issue 24
    assert volumes.listing_name("p/R/R.tar") == "p/R/R.volumes.tsv"
    assert volumes.stored_forms_prefix("p/R/R.tar") == "p/R/R."
    assert not volumes.is_stored_form("R.tar.gz", "R.tar.gz.part") and not volumes.is_stored_form("R.tar.gz", "R.tar")


# -- compose and the bucket's settings ---------------------------------------------------------


@pytest.mark.timeout(120)
def test_compose_nests_past_32_sources_and_the_result_is_their_concatenation(
    gcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sruns_stream.storage.gcs.parts import COMPOSE_LIMIT, Parts

    pieces = [os.urandom(100 + i) for i in range(70)]
    with FaultProxy(gcs.url) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        parts = Parts(gcs.bucket)
        try:
            for i, piece in enumerate(pieces):
                parts.upload(f"tmp/p{i:03d}", piece, "application/octet-stream")
            info = parts.compose([f"tmp/p{i:03d}" for i in range(70)], "out", "application/gzip", "tmp/scratch-")
        finally:
            parts.close()
    whole = b"".join(pieces)
    assert gcs.download("out") == whole
    assert (info.size, info.crc32c) == (len(whole), google_crc32c.value(whole))
    composes = [e for e in proxy.log if e.target == "compose"]
    # 70 sources: 3 intermediate composites (32 + 32 + 6), then the result from those 3.
    assert [e.sources for e in composes] == [32, 32, 6, 3]
    assert all(e.sources is not None and e.sources <= COMPOSE_LIMIT for e in composes)


def _patch_bucket(gcs, settings: dict[str, object]) -> None:
    """Set what the emulator stores of a bucket's settings (it enforces none of them: the
    code under test only reads them)."""
    request = urllib.request.Request(f"{gcs.url}/storage/v1/b/{gcs.bucket}", data=json.dumps(settings).encode(),
                                     method="PATCH", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=60).read()


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("settings", "why"), [
    ({"retentionPolicy": {"retentionPeriod": "86400"}}, "it has a retention policy (86400 s)"),
    ({"storageClass": "NEARLINE"}, "its storage class is NEARLINE"),
])
def test_a_bucket_that_would_keep_or_bill_parts_gets_one_stream_said_in_one_line(
    gcs, make_run, tmp_path: Path, settings: dict[str, object], why: str
) -> None:
    run = _run_with_a_big_file(make_run, size=4 << 20, big=3 << 20, seed=7)
    reference, _ = _reference(run, tmp_path)
    _patch_bucket(gcs, settings)
    with FaultProxy(gcs.url) as proxy:
        env = {"STORAGE_EMULATOR_HOST": proxy.url}
        proc = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", tmp_path / "a.db", tmp_path, "--streams", "3", env=env)
        assert proc.returncode == 0, proc.stderr
        assert not [e for e in proxy.log if e.target == "compose"]
    notes = [line for line in proc.stderr.splitlines() if "one upload stream" in line]
    assert len(notes) == 1, proc.stderr
    assert notes[0].startswith(f"sruns-stream: {run.name}: one upload stream, not 3: bucket {gcs.bucket!r}: {why}")
    assert json.loads(proc.stdout)["streams"] == 1
    assert gcs.download(_blob(run)) == reference
    assert not [n for n in gcs.names() if PARTS_FOLDER in n]

    # Volumes need parts: refused where parts would stay, used (and said) where they are billed.
    proc = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", tmp_path / "v.db", tmp_path, "--volume-size", "1M",
                    "--force")
    if "retention" in why:
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "needs several volumes" in lines[0] and "another bucket" in lines[0]
    else:
        assert proc.returncode == 0, proc.stderr
        assert "volumes need parts, so they are used" in proc.stderr
        vols = _volume_names(gcs.names(), _blob(run))
        assert len(vols) >= 3 and b"".join(gcs.download(v) for v in vols) == reference


def _gcloud_env(gcs, tmp_path: Path) -> dict[str, str]:
    """`gcloud storage` pointed at the emulator: its own config directory (the user's is
    never touched), the storage endpoint overridden, no credentials asked for."""
    return dict(os.environ, CLOUDSDK_CONFIG=str(tmp_path / "gcloud-config"),
                CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE=gcs.url + "/", CLOUDSDK_AUTH_DISABLE_CREDENTIALS="True",
                CLOUDSDK_CORE_PROJECT="test", CLOUDSDK_CORE_DISABLE_PROMPTS="1")


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="needs the Google Cloud SDK's gcloud")
@pytest.mark.timeout(300)
def test_the_readmes_recipe_restores_volumes_with_gcloud_and_tar_alone(gcs, make_run, tmp_path: Path) -> None:
    """Issue 24: the listing was `RUN.tar.gz.volumes.tsv`, which `RUN.tar.gz.*` matched, so
    the README's recipe fed it to tar (and would feed the .gzidx and .index.sqlite beside
    the volumes, issue 23). Now the recipe, which globs the numbered volumes only, run as the README gives it (real
    gcloud against the emulator, GNU tar, gzip -t), restores the run exactly; an archive
    with the old listing name is still read, and archiving again removes that name."""
    run = _run_with_a_big_file(make_run, size=4 << 20, big=3 << 20, seed=7)
    db = tmp_path / "sruns.db"
    proc = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", db, tmp_path, "--volume-size", "1M")
    assert proc.returncode == 0, proc.stderr
    vols = _volume_names(gcs.names(), _blob(run))
    listing = f"{PREFIX}/{run.name}/{run.name}.volumes.tsv"
    beside = [_manifest_blob(run), _index_blob(run), listing, *_read_index_blobs(run)]
    assert len(vols) >= 3 and gcs.names() == sorted([*vols, *beside])
    # What a bare `RUN.tar.gz.*` would also take: the indexes other tools read.
    assert [name for name in beside if name.startswith(f"{_blob(run)}.")] == _read_index_blobs(run)

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    recipe = "gcloud storage cat 'gs://BUCKET/PREFIX/RUN/RUN.tar.gz.[0-9]*' | tar xz"
    assert f"\n  {recipe}\n" in readme
    command = recipe.replace("BUCKET", gcs.bucket).replace("PREFIX", PREFIX).replace("RUN", run.name)
    out = tmp_path / "out"
    out.mkdir()
    env = _gcloud_env(gcs, tmp_path)
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=out, env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert tree(out / run.name) == tree(run)
    checked = subprocess.run(["bash", "-o", "pipefail", "-c", command.replace("tar xz", "gzip -t")], env=env,
                             capture_output=True, text=True, timeout=240)
    assert checked.returncode == 0, checked.stderr

    # An archive from before the rename: its listing under the old name is still read.
    old = f"{_blob(run)}.volumes.tsv"
    _upload(gcs, old, gcs.download(listing))
    _delete(gcs, listing)
    verify = run_in_process("verify", f"gs://{gcs.bucket}/{_blob(run)}", cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    _upload(gcs, old, b"volume\tsize\tcrc32c\nnot-a-volume\t1\t00000000\n")  # and it is what was read
    verify = run_in_process("verify", f"gs://{gcs.bucket}/{_blob(run)}", cwd=tmp_path)
    assert verify.returncode == 1 and f"gs://{gcs.bucket}/{old} names 'not-a-volume'" in verify.stderr + verify.stdout
    # Archived again, cut the same way: the old name goes, the new one is written.
    proc = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", db, tmp_path, "--volume-size", "1M", "--force")
    assert proc.returncode == 0, proc.stderr
    assert gcs.names() == sorted([*vols, *beside])
