"""The gs:// destination against the real gcp-storage-emulator, over loopback.

Oracles: the archive of the same folder to a local --dest (byte equality), gzip -t,
GNU tar and the input tree. Faults the emulator cannot produce (resets, 503/429,
lost or missing answers, partial chunks, flipped bytes) come from tests/faultproxy.py,
a fake used only for that; everything else is the emulator's own behaviour.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import google_crc32c
import pytest
from faultproxy import Exchange, Fault, FaultProxy, resent
from helpers import (
    gnu_untar,
    gzip_ok,
    journal_row,
    kill_at_hold,
    run_cli,
    run_in_process,
    sigterm_once_past,
    start_cli,
    tree,
)

from sruns_stream import __version__
from sruns_stream.archiver.run import archive_run
from sruns_stream.config import ArchiveOptions
from sruns_stream.errors import IntegrityError, UploadError
from sruns_stream.state.journal import Journal
from sruns_stream.storage.gcs.parts import Parts
from sruns_stream.storage.gcs.upload import GcsSink
from sruns_stream.storage.layout import blob_name
from sruns_stream.storage.retry import RETRY

CHUNK = 256 * 1024  # the smallest legal chunk: many chunks from a small run
FLAGS = ("--chunk-size", "256K", "--threads", "2", "--json")
PREFIX = "runs/2024"


def _blob(run: Path, prefix: str = PREFIX, ext: str = ".tar.gz") -> str:
    name = f"{run.name}/{run.name}{ext}"
    return f"{prefix}/{name}" if prefix else name


def _options(**kw: Any) -> ArchiveOptions:
    return ArchiveOptions(threads=2, chunk_size=CHUNK, **kw)


def _local_archive(run: Path, tmp_path: Path) -> bytes:
    """The oracle: the same folder archived to a local directory."""
    journal = Journal(tmp_path / "local.db")
    try:
        result = archive_run(run, str(tmp_path / "local"), _options(), journal)
    finally:
        journal.close()
    return Path(result.location).read_bytes()


def _untars_to(data: bytes, run: Path, tmp_path: Path, name: str = "download.tar.gz") -> None:
    path = tmp_path / name
    path.write_bytes(data)
    if name.endswith(".gz"):
        gzip_ok(path)
    gnu_untar(path, tmp_path / f"{name}.out")
    assert tree(tmp_path / f"{name}.out" / run.name) == tree(run)


def _start(run: Path, dest: str, db: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return start_cli("archive", str(run), "--dest", dest, "--journal", str(db), *FLAGS, cwd=cwd, env=env)


# -- the sink on its own ------------------------------------------------------------------


def test_blob_names_follow_the_sruns_monitor_layout() -> None:
    assert blob_name("", "RUN", ".tar.gz") == "RUN/RUN.tar.gz"
    assert blob_name("/runs/2024/", "RUN", ".tar") == "runs/2024/RUN/RUN.tar"


@pytest.mark.timeout(60)
def test_state_names_the_session_and_its_age_and_reopening_reuses_or_replaces_it(gcs) -> None:
    notes: list[str] = []
    sink = GcsSink(gcs.bucket, PREFIX, "RUN", ".tar.gz", _options(), note=notes.append)
    assert sink.open(None, 0) == 0
    state = sink.state()
    assert state is not None
    saved = json.loads(state)
    assert saved["bucket"] == gcs.bucket and saved["blob"] == f"{PREFIX}/RUN/RUN.tar.gz"
    assert "upload_id=" in saved["session"] and saved["created"] > 0
    # The workflow opens again when a resume falls back to zero: same empty session.
    assert sink.open(None, 0) == 0 and sink.state() == state
    sink.abort()

    # A new process resumes the same session; nothing was stored yet.
    again = GcsSink(gcs.bucket, PREFIX, "RUN", ".tar.gz", _options(), note=notes.append)
    assert again.open(state, 0) == 0 and again.state() == state
    again.abort()
    assert notes == []

    # The journal's session belongs to another object: a new session, said so.
    other = GcsSink(gcs.bucket, "elsewhere", "RUN", ".tar.gz", _options(), note=notes.append)
    assert other.open(state, 0) == 0
    assert json.loads(other.state() or "{}")["session"] != saved["session"]
    assert notes == ["RUN: the journal's upload session was for another object: starting a new session from zero"]
    other.abort()


# -- (a) a plain archive through the CLI ----------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "prefix,flags,ext,content_type",
    [
        (PREFIX, (), ".tar.gz", "application/gzip"),
        ("", ("--compression", "none"), ".tar", "application/x-tar"),
    ],
    ids=["prefix-tar.gz", "no-prefix-tar"],
)
def test_archive_to_gs_equals_the_local_archive_and_untars_to_the_input(
    gcs, make_run, tmp_path: Path, prefix: str, flags: tuple[str, ...], ext: str, content_type: str
) -> None:
    run = make_run("miseq", 3 << 20)
    local = run_in_process("archive", str(run), "--dest", str(tmp_path / "local"), *FLAGS, *flags,
                           "--journal", str(tmp_path / "local.db"), cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    local_archive = Path(json.loads(local.stdout)["location"])

    db = tmp_path / "sruns.db"
    dest = f"gs://{gcs.bucket}/{prefix}" if prefix else f"gs://{gcs.bucket}"
    proc = run_in_process("archive", str(run), "--dest", dest, *FLAGS, *flags, "--journal", str(db), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    blob = _blob(run, prefix, ext)
    assert not blob.startswith("/")
    assert result["location"] == f"{gcs.bucket}/{blob}"

    data = gcs.download(blob)
    assert data == local_archive.read_bytes()
    _untars_to(data, run, tmp_path, f"download{ext}")

    obj = gcs.resource(blob)
    assert obj is not None
    assert obj["contentType"] == content_type
    assert f"{google_crc32c.value(data):08x}" == result["crc32c"]
    assert obj["metadata"] == {
        "run": run.name,
        "raw_bytes": str(result["raw_bytes"]),
        "file_count": str(result["files"]),
        "tar_crc32": result["tar_crc32"],
        "compression": result["compression"],
        "tool_version": __version__,
        "manifest": f"{run.name}.manifest.tsv",
    }
    manifest_blob = blob.rsplit("/", 1)[0] + f"/{run.name}.manifest.tsv"
    assert result["manifest_location"] == f"{gcs.bucket}/{manifest_blob}"
    assert gcs.download(manifest_blob) == local_archive.with_name(f"{run.name}.manifest.tsv").read_bytes()

    task = journal_row(db, run.name)
    assert task["gcp_tarfile"] == f"{gcs.bucket}/{blob}"
    assert task["status"] == "complete"
    # The session URI is a bearer credential: only the journal may hold it.
    assert "upload_id" not in proc.stdout + proc.stderr


# -- (b) kill -9, twice, then resume ---------------------------------------------------


@pytest.mark.timeout(180)
def test_kill_9_twice_mid_upload_then_resume_gives_the_same_object_resending_at_most_a_chunk(
    gcs, make_run, tmp_path: Path
) -> None:
    run = make_run("miseq", 8 << 20, seed=1)
    reference = _local_archive(run, tmp_path)
    assert len(reference) > 12 * CHUNK
    db = tmp_path / "sruns.db"
    dest = f"gs://{gcs.bucket}/{PREFIX}"
    with FaultProxy(gcs.url) as proxy:
        env = {"STORAGE_EMULATOR_HOST": proxy.url}

        # Crash 1 in the middle of the 5th chunk: that chunk never reaches the server.
        proxy.add(Fault("hold", nth=5))
        kill_at_hold(_start(run, dest, db, env, tmp_path), proxy)
        assert 0 < journal_row(db, run.name)["durable_offset"] <= 4 * CHUNK

        # Crash 2 after the 4th chunk of the next run reached the server, before its
        # answer reached us: the server is now ahead of the journal.
        proxy.epoch = 1
        proxy.add(Fault("hold_stored", nth=4))
        kill_at_hold(_start(run, dest, db, env, tmp_path), proxy)
        held = proxy.exchanges("chunk", epoch=1)[-1]
        assert held.start is not None
        server_has = held.start + held.received
        assert journal_row(db, run.name)["durable_offset"] <= held.start < server_has

        proxy.epoch = 2
        proc = run_in_process("archive", str(run), "--dest", dest, *FLAGS, "--journal", str(db), cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)

    # It continued from the server's offset, not the journal's older one.
    assert result["resumed_from_archive"] == server_has
    data = gcs.download(_blob(run))
    assert data == reference
    _untars_to(data, run, tmp_path)
    # What went over the wire again: crash 1 lost half a chunk in flight; crash 2 lost
    # nothing (the server had the chunk). Never more than one chunk per crash.
    assert [resent(proxy.log, 1), resent(proxy.log, 2)] == [CHUNK // 2, 0]
    assert all(resent(proxy.log, e) <= CHUNK for e in (1, 2))


@pytest.mark.timeout(120)
def test_a_crash_after_the_last_request_committed_finishes_without_sending_again(
    gcs, make_run, tmp_path: Path
) -> None:
    # Real GCS answers a status query on a committed session with 200 and the object;
    # the emulator forgets the session instead (404), so the proxy answers as GCS does,
    # with the object resource the emulator itself holds.
    run = make_run("miseq", 3 << 20)
    reference = _local_archive(run, tmp_path)
    db = tmp_path / "sruns.db"
    dest = f"gs://{gcs.bucket}/{PREFIX}"
    with FaultProxy(gcs.url) as proxy:
        env = {"STORAGE_EMULATOR_HOST": proxy.url}
        proxy.add(Fault("hold_stored", target="final"))
        kill_at_hold(_start(run, dest, db, env, tmp_path), proxy)
        committed = gcs.resource(_blob(run))
        assert committed is not None and int(committed["size"]) == len(reference)
        proxy.epoch = 1
        proxy.add(Fault("status", target="query", status=200, body=json.dumps(committed).encode()))
        proc = run_in_process("archive", str(run), "--dest", dest, *FLAGS, "--journal", str(db), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["resumed_from_archive"] == len(reference)
    assert proxy.exchanges("chunk", epoch=1) == [] and proxy.exchanges("final", epoch=1) == []
    assert gcs.download(_blob(run)) == reference
    assert journal_row(db, run.name)["status"] == "complete"


@pytest.mark.timeout(240)
def test_sigterm_mid_upload_at_many_moments_exits_130_and_ends_in_the_same_object(
    gcs, make_run, tmp_path: Path
) -> None:
    """SIGTERM lands wherever it lands (a chunk in flight on the uploader thread, a status
    query, a journal write): always exit 130, resumable, and finally the same object."""
    run = make_run("miseq", 8 << 20, seed=4)
    reference = _local_archive(run, tmp_path)
    db = tmp_path / "sruns.db"
    dest = f"gs://{gcs.bucket}/{PREFIX}"
    env = {"STORAGE_EMULATOR_HOST": gcs.url}
    stopped = 0
    # The first stop comes during start-up; the others once this process has moved the
    # journal's durable offset past a given fraction of the object.
    for fraction in (None, 0.1, 0.3, 0.5, 0.7, 0.9):
        at = None if fraction is None else int(fraction * len(reference))
        if not sigterm_once_past(_start(run, dest, db, env, tmp_path), db, run.name, at) and at:
            break
        stopped += 1
    assert stopped >= 2
    proc = run_in_process("archive", str(run), "--dest", dest, *FLAGS, "--journal", str(db), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert gcs.download(_blob(run)) == reference


# -- (c) faults the emulator cannot produce ----------------------------------------------

# A crc32c mismatch as GCS words it, for the answer to a last request carrying X-Goog-Hash.
_HASH_MISMATCH = json.dumps(
    {"error": {"code": 400, "message": 'Provided CRC32C "AAAAAA==" doesn\'t match calculated CRC32C "BBBBBB==".'}}
).encode()


def _gcs_factory(sleeps: list[float], **kw: Any) -> Callable[[str, str, str, ArchiveOptions], GcsSink]:
    """Sinks whose backoff is recorded instead of slept."""

    def make(dest: str, run: str, extension: str, options: ArchiveOptions) -> GcsSink:
        bucket, _, prefix = dest[5:].partition("/")
        return GcsSink(bucket, prefix, run, extension, options, sleep=sleeps.append, **kw)

    return make


def _archive_gs(run: Path, gcs, tmp_path: Path, sleeps: list[float], options: ArchiveOptions | None = None,
                **kw: Any):
    journal = Journal(tmp_path / "sruns.db")
    try:
        return archive_run(run, f"gs://{gcs.bucket}/{PREFIX}", options or _options(), journal,
                           sink_factory=_gcs_factory(sleeps, **kw))
    finally:
        journal.close()


def _session_requests(proxy: FaultProxy) -> list[Exchange]:
    return [e for e in proxy.log if e.target in ("create", "chunk", "final", "query")]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "faults",
    [
        pytest.param([Fault("reset", nth=2)], id="reset-mid-chunk"),
        pytest.param([Fault("reset", nth=1)], id="reset-mid-first-chunk"),
        pytest.param([Fault("status", status=503, nth=2)], id="503"),
        pytest.param([Fault("status", status=429, nth=3)], id="429"),
        pytest.param([Fault("lost", nth=2)], id="lost-answer-after-the-server-stored-the-chunk"),
        pytest.param([Fault("lost", target="final")], id="lost-answer-to-the-last-request"),
        pytest.param([Fault("silent", nth=2)], id="unanswered-request"),
        pytest.param([Fault("partial", nth=2)], id="server-kept-half-a-chunk"),
        pytest.param([Fault("status", status=503, target="create")], id="503-on-session-creation"),
        pytest.param([Fault("reset", nth=2), Fault("status", status=500, target="query")],
                     id="500-on-the-status-query-after-a-reset"),
    ],
)
def test_each_fault_ends_in_the_correct_object(
    gcs, make_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, faults: list[Fault]
) -> None:
    run = make_run("miseq", 3 << 20)
    reference = _local_archive(run, tmp_path)
    assert len(reference) > 4 * CHUNK
    sleeps: list[float] = []
    with FaultProxy(gcs.url) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        for fault in faults:
            proxy.add(fault)
        # A short read timeout, so that the unanswered request is given up quickly.
        result = _archive_gs(run, gcs, tmp_path, sleeps, timeout=(10.0, 2.0))

    assert gcs.download(_blob(run)) == reference
    assert result.crc32c == f"{google_crc32c.value(reference):08x}"
    faulted = [e for e in proxy.log if e.fault]
    assert len(faulted) == len(faults)
    session = _session_requests(proxy)
    if faulted[0].fault == "partial":
        # Not a failure: the 308 said how much was kept, and the next chunk starts there.
        assert sleeps == []
        e = faulted[0]
        assert e.start is not None
        assert session[session.index(e) + 1].start == e.start + e.received // 2
        return
    # Backed off once per failed attempt, and through the injected sleep.
    assert len(sleeps) == len(faults)
    assert all(0 <= s <= RETRY.max_wait for s in sleeps)
    # Every retry on a session starts with a status query.
    for e in faulted:
        after = session[session.index(e) + 1]
        assert after.target == ("create" if e.target == "create" else "query")


@pytest.mark.timeout(90)
def test_retries_are_bounded_then_the_same_command_resumes(
    gcs, make_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run("miseq", 3 << 20)
    reference = _local_archive(run, tmp_path)
    sleeps: list[float] = []
    with FaultProxy(gcs.url) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        proxy.add(Fault("status", status=503, nth=2, times=1000))
        with pytest.raises(UploadError, match=r"failed 3 times, last: .*HTTP 503.*run the same command again") as err:
            _archive_gs(run, gcs, tmp_path, sleeps, _options(upload_retries=2))
        assert len(sleeps) == 2
        journal = Journal(tmp_path / "sruns.db")
        task = journal.get(run.name)
        journal.close()
        assert task is not None and task.sink_state
        uri = json.loads(task.sink_state)["session"]
        upload_id = uri.split("upload_id=")[1]
        assert uri not in str(err.value) and upload_id not in str(err.value)

        proxy.clear()
        result = _archive_gs(run, gcs, tmp_path, sleeps)
    # The first chunk was acknowledged before the failures; the server's word for it
    # is what the resume trusts (the journal may not have caught up).
    assert result.resumed_from_archive == CHUNK
    assert gcs.download(_blob(run)) == reference


@pytest.mark.timeout(60)
def test_a_permanent_error_fails_at_once_naming_bucket_and_blob(
    gcs, make_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run("miseq", 2 << 20)
    sleeps: list[float] = []
    denied = json.dumps({"error": {"code": 403, "message": "caller does not have storage.objects.create"}})
    with FaultProxy(gcs.url) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        proxy.add(Fault("status", status=403, nth=2, body=denied.encode()))
        with pytest.raises(UploadError, match=rf"^permission denied: writing gs://{gcs.bucket}/{_blob(run)}: "
                                              rf"HTTP 403 caller does not have storage.objects.create$"):
            _archive_gs(run, gcs, tmp_path, sleeps)
    assert sleeps == []


# -- (d) expired or forgotten sessions -----------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["older-than-7-days", "unknown-to-the-server"])
def test_an_expired_session_starts_a_new_one_from_zero(gcs, make_run, tmp_path: Path, how: str) -> None:
    run = make_run("miseq", 3 << 20)
    reference = _local_archive(run, tmp_path)
    db = tmp_path / "sruns.db"
    dest = f"gs://{gcs.bucket}/{PREFIX}"
    with FaultProxy(gcs.url) as proxy:
        env = {"STORAGE_EMULATOR_HOST": proxy.url}
        proxy.add(Fault("hold", nth=4))
        kill_at_hold(_start(run, dest, db, env, tmp_path), proxy)
        old_state = json.loads(journal_row(db, run.name)["sink_state"])
        assert journal_row(db, run.name)["durable_offset"] > 0
        if how == "older-than-7-days":
            old_state["created"] -= 8 * 24 * 3600
            # Through the journal, which keeps the checkpoint's checksum right: a bare
            # UPDATE would be taken for a damaged row (tested in test_archive_trust).
            journal = Journal(db)
            t = journal.get(run.name)
            assert t is not None
            journal.record_checkpoint(t, t.durable_offset, t.checkpoint, [], t.files_crc32c, json.dumps(old_state))
            journal.close()
            said = "days ago and has expired (GCS keeps sessions 7 days): starting a new session from zero"
        else:
            gcs.forget_sessions()
            said = "(expired or cancelled): starting a new session from zero"
        proc = run_in_process("archive", str(run), "--dest", dest, *FLAGS, "--journal", str(db), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert said in proc.stderr
    assert "upload_id" not in proc.stderr
    assert json.loads(proc.stdout)["resumed_from_archive"] == 0
    assert json.loads(journal_row(db, run.name)["sink_state"])["session"] != old_state["session"]
    assert gcs.download(_blob(run)) == reference


# -- (e) integrity ------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_corrupted_chunk_fails_the_run_and_leaves_no_object(gcs, make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 3 << 20)
    db = tmp_path / "sruns.db"
    with FaultProxy(gcs.url) as proxy:
        proxy.add(Fault("corrupt", nth=2))
        proc = run_in_process("archive", str(run), "--dest", f"gs://{gcs.bucket}/{PREFIX}", *FLAGS,
                              "--journal", str(db), cwd=tmp_path, env={"STORAGE_EMULATOR_HOST": proxy.url})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sruns-stream: error: ")
    assert f"gs://{gcs.bucket}/{_blob(run)} holds" in lines[0] and "were sent; it was deleted" in lines[0]
    assert gcs.resource(_blob(run)) is None  # nothing corrupt under the archive's name
    task = journal_row(db, run.name)
    assert task["status"] == "not_running" and "crc32c" in task["last_error"]
    assert task["gcp_tarfile"] is None


@pytest.mark.timeout(60)
def test_gcs_refusing_the_last_request_for_its_crc32c_is_an_integrity_error(
    gcs, make_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real GCS checks the X-Goog-Hash sent with the last request; the emulator does not,
    # so the proxy answers as GCS would.
    run = make_run("miseq", 2 << 20)
    with FaultProxy(gcs.url) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        proxy.add(Fault("status", status=400, target="final", body=_HASH_MISMATCH))
        with pytest.raises(IntegrityError, match="GCS refused to commit .* the upload was corrupted"):
            _archive_gs(run, gcs, tmp_path, [])
        final = proxy.exchanges("final")
    assert len(final) == 1


# -- (f) the bucket is missing -----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_missing_bucket_is_one_clear_line_and_exit_1(gcs, make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 1 << 20)
    proc = run_in_process("archive", str(run), "--dest", "gs://no-such-bucket/runs", *FLAGS,
                          "--journal", str(tmp_path / "sruns.db"), cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        (
            f"sruns-stream: error: bucket 'no-such-bucket' does not exist "
            f"(cannot start the upload for gs://no-such-bucket/runs/{run.name}/{run.name}.tar.gz)"
        )
    ]
    assert gcs.names() == []


# -- (g) one error table for every GCS call ------------------------------------------------------


_DENIED = json.dumps({"error": {"code": 403, "message": "caller lacks the permission"}}).encode()


@pytest.mark.timeout(120)
def test_a_403_is_the_same_line_for_an_upload_a_compose_a_list_and_a_read(
    gcs, make_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run("miseq", 1 << 20)
    dest = f"gs://{gcs.bucket}/{PREFIX}"
    made = run_cli("archive", str(run), "--dest", dest, *FLAGS, "--journal", str(tmp_path / "a.db"), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    other = make_run("miseq", 1 << 20, seed=1, name="240102_M00001_0002_000000000-OTHER")
    lines: dict[str, str] = {}
    with FaultProxy(gcs.url) as proxy:
        env = {"STORAGE_EMULATOR_HOST": proxy.url}
        # An upload: the session's first chunk (a PUT the sink sends itself).
        proxy.add(Fault("status", status=403, target="chunk", body=_DENIED))
        proc = run_cli("archive", str(other), "--dest", dest, *FLAGS, "--journal", str(tmp_path / "b.db"),
                       cwd=tmp_path, env=env)
        assert proc.returncode == 1  # not 75: this will not work until someone grants the permission
        lines["writing"] = proc.stderr.strip().splitlines()[-1].removeprefix("sruns-stream: error: ")
        # A read: verify looks the archive up (a call through google-cloud-storage).
        proxy.clear()
        proxy.add(Fault("status", status=403, target="metadata", body=_DENIED))
        proc = run_cli("verify", f"{dest}/{run.name}/{run.name}.tar.gz", cwd=tmp_path, env=env)
        assert proc.returncode == 1
        lines["reading"] = proc.stderr.strip().splitlines()[-1].removeprefix("sruns-stream: error: ")
        # Compose and list, as a segmented archive calls them.
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        parts = Parts(gcs.bucket)
        try:
            proxy.clear()
            # Every such request from here on: which one comes first is the library's affair.
            proxy.add(Fault("status", status=403, target="compose", body=_DENIED, times=1000))
            with pytest.raises(UploadError) as composing:
                parts.compose([_blob(run)], "scratch/composed", "application/gzip", "scratch/tmp-")
            lines["composing"] = str(composing.value)
            proxy.clear()
            proxy.add(Fault("status", status=403, target="other", body=_DENIED, times=1000))
            with pytest.raises(UploadError) as listing:
                parts.names("scratch/")
            lines["listing"] = str(listing.value)
        finally:
            parts.close()
    objects = {
        "writing": f"{_blob(other)}",
        "reading": _blob(run),
        "composing": "scratch/composed",
        "listing": "scratch/*",
    }
    for doing, line in lines.items():
        assert line == f"permission denied: {doing} gs://{gcs.bucket}/{objects[doing]}: HTTP 403 caller lacks the " \
                       "permission", lines


@pytest.mark.timeout(120)
def test_the_upload_retries_setting_bounds_the_retries_of_a_compose(gcs, make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 10 << 20)  # segments are at least 8 chunks (2 MiB): several of them
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"upload_retries": 2}))
    with FaultProxy(gcs.url) as proxy:
        proxy.add(Fault("status", status=503, target="compose", times=1000))
        proc = run_cli("archive", str(run), "--dest", f"gs://{gcs.bucket}/{PREFIX}", *FLAGS, "--streams", "2",
                       "--config", str(conf), "--journal", str(tmp_path / "sruns.db"),
                       cwd=tmp_path, env={"STORAGE_EMULATOR_HOST": proxy.url})
        composes = proxy.exchanges("compose")
    assert proc.returncode == 75, proc.stderr  # temporary: the same command, later, may well work
    assert len(composes) == 3 and all(e.status == 503 for e in composes)
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"sruns-stream: error: composing gs://{gcs.bucket}/{_blob(run)} failed 3 times, "
                           "last: HTTP 503"), line
    assert line.endswith("; run the same command again"), line
