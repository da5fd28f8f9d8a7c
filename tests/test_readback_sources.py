"""`readback.locate` and `readback.sources`: finding an archive (run name via the journal
then Firestore, gs://, file://, a path) and reading its bytes resumably (a dropped connection re-opens at
the byte where it stopped, with bounded, stop-aware retries).

Faults the GCS emulator cannot produce on cue (a download cut mid-body, every download
answered 503) come from small proxies in front of it.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from helpers import child_env, run_in_process, tree
from readback_helpers import RUN, archive, archived, odd_novaseq, one_run_archived_twice, verified

from sruns_stream.errors import DestinationError, RunFolderMissing, UsageError
from sruns_stream.progress import NoProgress
from sruns_stream.readback import restore_archive, verify_archive
from sruns_stream.readback.sources import ConnectionDropped, ResumableReader
from sruns_stream.state.journal import Journal
from sruns_stream.storage.layout import local_temporary, volume_names, volume_number, volume_of
from sruns_stream.storage.volumes import is_stored_form

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; only the type checker needs it


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return one_run_archived_twice(tmp_path_factory.mktemp("verify"))


@pytest.fixture
def novaseq(make_run) -> Path:
    return odd_novaseq(make_run)


# --- finding the archive --------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_unknown_sources_and_bad_against_are_one_line_errors(made: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is neither a gs:// URL nor an existing path, and no journal"):
        verified("no_such_run")
    # A path to nothing is a failure to find the archive (exit 1), not a usage error.
    with pytest.raises(
        DestinationError, match=r"^no archive at .*/nothing/x\.tar\.gz \(nothing there\): check the path"
    ):
        verified(str(tmp_path / "nothing" / "x.tar.gz"))
    with pytest.raises(DestinationError, match=r"^no archive at .*/RUN\.tar\.gz"):
        verified("RUN.tar.gz")  # no "/", so first looked up as a run: then a path, not there
    # Something like a URL that is not a form we read: a usage error naming the forms.
    for url in ("gs:/bucket/x.tar.gz", "gs:bucket", "s3://bucket/x.tar.gz", "http://host/x.tar.gz"):
        with pytest.raises(UsageError, match=f"^'{re.escape(url)}' is not a source sruns-stream reads: give a run "
                                             "name, gs://BUCKET/PREFIX/RUN/RUN.tar.gz, file:///PATH or a local path"):
            verified(url)
    with pytest.raises(RunFolderMissing, match="--against .* is not a directory"):
        verified(str(made["gz"]), against=tmp_path / "nope")
    journal = Journal(tmp_path / "j.db")
    try:
        with pytest.raises(UsageError, match=r"'no_such_run' is not a run in journal .*j\.db, a gs:// URL, nor an"):
            verified("no_such_run", journal=journal)
        journal.ensure("240101_RUN_IN_PROGRESS", status="uploading")
        with pytest.raises(UsageError, match="is uploading, not archived"):
            verified("240101_RUN_IN_PROGRESS", journal=journal)
    finally:
        journal.close()


def _firestore_documents(firestore, documents: dict[str, dict[str, Any]]) -> None:
    """Documents of collection ``runs``, written as another host (or anyone who can
    write the collection) would."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import firestore as gfirestore

    client = gfirestore.Client(project=firestore.project, credentials=AnonymousCredentials())
    try:
        for name, fields in documents.items():
            client.collection("runs").document(name).set({"name": name, **fields})
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.timeout(90)  # a cold Firestore emulator JVM can take a while on a busy machine
def test_run_name_found_through_firestore_when_the_journal_does_not_know_it(
    made: dict[str, Path], gcs, firestore, tmp_path: Path
) -> None:
    from sruns_stream.storage.gcs.client import make_client

    blob = f"runs/{RUN}/{RUN}.tar.gz"
    client = make_client()
    try:
        for path in made["gz"].parent.iterdir():  # the archive and what lies beside it
            client.bucket(gcs.bucket).blob(f"runs/{RUN}/{path.name}").upload_from_filename(str(path))
    finally:
        client.close()
    _firestore_documents(firestore, {
        RUN: {"storage": f"{gcs.bucket}/{blob}", "workflow_status": "complete"},
        "240101_BUSY": {"storage": None, "workflow_status": "tarring"},
    })
    journal = Journal(tmp_path / "empty.db")
    try:
        report = verify_archive(RUN, against=None, journal=journal, collection="runs", progress=NoProgress())
        assert report.ok and report.source == f"gs://{gcs.bucket}/{blob}"
        with pytest.raises(UsageError, match="Firestore collection 'runs' says run 240101_BUSY is tarring"):
            verify_archive("240101_BUSY", against=None, journal=journal, collection="runs", progress=NoProgress())
    finally:
        journal.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_firestore_record_naming_a_local_file_is_refused_and_the_file_never_read(
    made: dict[str, Path], firestore, tmp_path: Path
) -> None:
    """A document is shared by every host: one whose `storage` is a local path (say
    /etc/shadow) must not make ls, verify, restore or cat open that path here."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"root:$6$NOT-FOR-YOUR-EYES$x:19000:0:99999:7:::\n")
    # A valid archive too: the refusal is about where the record points, not what is there.
    _firestore_documents(firestore, {
        "240101_SECRET": {"storage": str(secret), "workflow_status": "complete"},
        RUN: {"storage": str(made["gz"]), "workflow_status": "complete"},
    })
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"firestore_collection": "runs", "sqlite_db": str(tmp_path / "empty.db")}))
    for run, path in (("240101_SECRET", secret), (RUN, made["gz"])):
        for command in (("ls", run), ("verify", run), ("restore", run, str(tmp_path / "out")),
                        ("cat", run, f"{RUN}/RunInfo.xml")):
            proc = run_in_process(*command, "--config", str(conf), cwd=tmp_path)
            assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
            assert proc.stderr == (
                f"sruns-stream: error: Firestore collection 'runs' says run {run} is stored at {str(path)!r}, "
                "not in GCS: a record shared by every host may only name a gs:// location, so it is not read; "
                "give the archive's path if it is on this host\n"
            ), command
            assert "NOT-FOR-YOUR-EYES" not in proc.stdout + proc.stderr and proc.stdout == ""
            assert not (tmp_path / "out").exists()
    # Not even a string: the same line, not a traceback.
    _firestore_documents(firestore, {"240101_NUMBER": {"storage": 42, "workflow_status": "complete"}})
    proc = run_in_process("verify", "240101_NUMBER", "--config", str(conf), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith(
        "sruns-stream: error: Firestore collection 'runs' says run 240101_NUMBER is stored at 42, not in GCS"
    ) and proc.stderr.count("\n") == 1, proc.stderr
    # A gs:// name no GCS object has: a forged line, terminal escapes, or 200,000 bytes.
    _firestore_documents(firestore, {
        "240101_NEWLINE": {"storage": "bkt/x\nFAKE: verify OK\n/y.tar.gz", "workflow_status": "complete"},
        "240101_ESCAPE": {"storage": "bkt/x\x1b[31mRED.tar.gz", "workflow_status": "complete"},
        "240101_LONG": {"storage": "bkt/" + "a" * 200_000, "workflow_status": "complete"},
    })
    for run in ("240101_NEWLINE", "240101_ESCAPE", "240101_LONG"):
        proc = run_in_process("verify", run, "--config", str(conf), cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and len(proc.stderr) < 600, proc.stderr
        assert "not a GCS object name" in proc.stderr and "\x1b" not in proc.stderr and "FAKE" not in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_cli_verify_of_a_missing_gcs_object_is_a_failure(gcs, tmp_path: Path) -> None:
    url = f"gs://{gcs.bucket}/p/{RUN}/{RUN}.tar.gz"
    proc = run_in_process("verify", url, cwd=tmp_path)  # the subprocess inherits STORAGE_EMULATOR_HOST
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"sruns-stream: error: no archive at {url} (bucket '{gcs.bucket}')")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


# --- resuming an interrupted download -----------------------------------------------------


class _FlakySource:
    """A fake ByteSource that drops the connection after ``cut`` bytes of its first
    stream: a fault the GCS emulator cannot produce."""

    def __init__(self, data: bytes, cut: int, drops: int = 1) -> None:
        self.data = data
        self.size = len(data)
        self.description = "fake://flaky"
        self.cut = cut
        self.drops = drops
        self.starts: list[int] = []

    def open_at(self, start: int, end: int | None = None) -> Iterator[bytes]:
        self.starts.append(start)
        pos = start
        while pos < self.size:
            if self.drops and pos >= self.cut:
                self.drops -= 1
                raise ConnectionDropped("connection reset by peer")
            piece = self.data[pos : min(pos + 1000, self.size)]
            pos += len(piece)
            yield piece


@pytest.mark.timeout(10)
def test_reader_resumes_at_the_byte_it_stopped_at_and_gives_up_after_bounded_retries() -> None:
    data = os.urandom(10_000)
    source = _FlakySource(data, cut=3000, drops=2)
    waits: list[float] = []
    reader = ResumableReader(source, sleep=waits.append)
    got = b"".join(iter(reader.read_piece, b""))
    assert got == data
    assert source.starts == [0, 3000, 3000]  # never from zero again
    assert len(waits) == 2 and reader.reconnects == 2

    dead = _FlakySource(data, cut=5000, drops=100)
    waits = []
    reader = ResumableReader(dead, attempts=4, sleep=waits.append)
    with pytest.raises(DestinationError, match=r"reading fake://flaky failed 4 times at byte 5000 of 10000"):
        while reader.read_piece():
            pass
    assert dead.starts == [0, 5000, 5000, 5000] and len(waits) == 3


class _CuttingProxy:
    """Forwards GETs to the GCS emulator; the first download of ``target`` is cut after
    ``cut`` body bytes (the connection closes mid-body). A fake, because the emulator
    cannot drop a download half-way. Records each download's Range header."""

    def __init__(self, upstream: str, target: str, cut: int) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        proxy = self
        self.ranges: list[str | None] = []
        self.cuts = 1

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request("GET", self.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                download = "alt=media" in self.path and target in self.path
                if download:
                    proxy.ranges.append(self.headers.get("Range"))
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("content-length", "connection", "transfer-encoding", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if download and proxy.cuts and len(body) > cut:
                    proxy.cuts -= 1
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_gcs_download_cut_mid_body_resumes_with_a_ranged_get(
    novaseq: Path, gcs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archived(novaseq, f"gs://{gcs.bucket}/p", tmp_path)
    archive_size = len(gcs.download(f"p/{novaseq.name}/{novaseq.name}.tar.gz"))
    cut = (1 << 20) + 300_000
    assert archive_size > cut
    with _CuttingProxy(gcs.url, f"{novaseq.name}.tar.gz", cut) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        notes = io.StringIO()
        report = restore_archive(
            f"gs://{gcs.bucket}/p/{novaseq.name}/{novaseq.name}.tar.gz", tmp_path / "out", include=[], force=False,
            journal=None, collection=None, progress=NoProgress(notes),
        )
    assert report.ok, report.problems
    assert report.reconnects == 1 and report.archive_bytes == archive_size
    assert tree(tmp_path / "out" / novaseq.name) == tree(novaseq)
    # The second request asked for the rest only: from the last byte received, not zero.
    assert len(proxy.ranges) == 2 and proxy.ranges[0] is None
    resumed_at = int(proxy.ranges[1].removeprefix("bytes=").removesuffix("-"))
    assert 1 << 20 <= resumed_at <= cut
    assert f"again from byte {resumed_at}" in notes.getvalue()


# --- a stop request during a download's backoff ----------------------------------------------


class _FailingDownloads:
    """Forwards requests to the GCS emulator but answers every download (alt=media) with
    503, so a read is retried with backoff until it gives up: a fault the emulator cannot
    produce on cue. ``downloads`` is set at the first one."""

    def __init__(self, upstream: str) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        host, port = upstream.removeprefix("http://").split(":")
        self.downloads = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if "alt=media" in self.path:
                    proxy.downloads.set()
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request("GET", self.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("content-length", "connection", "transfer-encoding", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ctrl_c_during_a_download_backoff_stops_the_verify(made: dict[str, Path], gcs, tmp_path: Path) -> None:
    """Every download fails, so verify sits in its retry backoff (up to 30 s a wait). A
    Ctrl-C there stops it: exit 130 and the verify's one line, not a wait for the retries
    to run out (which would end in exit 1)."""
    import signal
    import subprocess
    import sys

    archive(made["run"], f"gs://{gcs.bucket}/p", tmp_path)
    proxy = _FailingDownloads(gcs.url)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sruns_stream", "verify", f"gs://{gcs.bucket}/p/{RUN}/{RUN}.tar.gz"],
            env=child_env({"STORAGE_EMULATOR_HOST": proxy.url}), cwd=tmp_path, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        try:
            assert proxy.downloads.wait(60), "verify never tried to download"
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    finally:
        proxy.close()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "sruns-stream: interrupted; the archive was not fully verified"
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("field, value, why", [
    ("archive_bytes", -1, "expected a whole number from 0 to 2^63-1"),
    ("raw_bytes", True, "expected a whole number from 0 to 2^63-1"),
    ("file_count", "many", "expected a whole number from 0 to 2^63-1"),
    ("crc32c", "not-a-crc", "expected 8 hexadecimal digits"),
    ("volumes", [1, 2], "expected a list of locations"),
    ("workflow_status", "archived!", "expected one of new, starting"),
    ("finished_at", "yesterday", "expected a timestamp"),
])
def test_a_firestore_field_out_of_type_or_range_is_one_line(firestore, tmp_path: Path, field: str, value: Any,
                                                            why: str) -> None:
    """Every field of a document is checked where it is read: a value another host (or
    anyone who can write the collection) put there is one line naming it, never a
    traceback and never a size or checksum used further on."""
    run = "240101_HOSTILE"
    _firestore_documents(firestore, {run: {"storage": "bucket/runs/x.tar.gz", "workflow_status": "complete",
                                           field: value}})
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"firestore_collection": "runs", "sqlite_db": str(tmp_path / "empty.db")}))
    proc = run_in_process("verify", run, "--config", str(conf), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"sruns-stream: error: run {run}: its Firestore document's {field} is "), proc.stderr
    assert why in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_volume_names_are_written_and_read_by_one_parser() -> None:
    archive = "runs/R/R.tar.gz"
    names = volume_names(archive, 1001)
    assert names[0] == "runs/R/R.tar.gz.0000" and names[-1] == "runs/R/R.tar.gz.1000"
    assert [volume_number(archive, n) for n in names] == list(range(1001))
    assert {volume_of(n) for n in names} == {archive}
    for other in ("runs/R/R.tar.gz.volumes.tsv", "runs/R/R.tar.gz.", "runs/R/R.tar.gz.0a", "runs/R/R.tar.gzx.000",
                  "runs/R/R.manifest.tsv.000"):
        assert volume_number(archive, other) is None and volume_of(other) is None, other
    assert is_stored_form(archive, archive) and is_stored_form(archive, names[7])
    assert is_stored_form(archive, "runs/R/R.tar.gz.volumes.tsv") and is_stored_form(archive, "runs/R/R.volumes.tsv")
    assert not is_stored_form(archive, "runs/R/R.tar.gz.part") and not is_stored_form(archive, "runs/R/R.tar.gz.0a")
    assert local_temporary("R.tar.gz") == "R.tar.gz.part" and local_temporary("R.tar.gz", 2) == "R.tar.gz.part.2"
