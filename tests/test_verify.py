"""`verify`: an archive read back as a stream and checked member by member.

Archives are made by the real `sruns-stream archive` (a subprocess) to a local directory
or to the in-process GCS emulator. Damage is applied to the stored bytes; which member it
hit is decided by an oracle independent of the code under test (zlib + Python's tarfile),
and the report must name that member.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import google_crc32c
import make_fake_run
import pytest
from helpers import run_cli

from sruns_stream.errors import DestinationError, RunFolderMissing, UsageError
from sruns_stream.journal import Journal
from sruns_stream.progress import NoProgress
from sruns_stream.readback import VerifyReport, verify_archive

RUN = "240101_A00001_0001_AHVERIFYXX"


def _archive(run: Path, dest: str, cwd: Path, *extra: str) -> dict:
    proc = run_cli("archive", str(run), "--dest", dest, "--journal", str(cwd / "sruns.db"), "--json", *extra, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    result: dict = json.loads(proc.stdout)
    return result


def _verify(source: str, against: Path | None = None, journal: Journal | None = None) -> VerifyReport:
    return verify_archive(source, against=against, journal=journal, collection=None, progress=NoProgress())


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One novaseq run archived twice, `auto` (.tar.gz, CBCL stored) and `none` (.tar);
    tests copy the archives before damaging them."""
    base = tmp_path_factory.mktemp("verify")
    run = base / RUN
    make_fake_run.make_run(run, "novaseq", 3 << 20, seed=3)
    os.symlink("RunInfo.xml", run / "link_to_runinfo")
    # Names that need pax records and manifest escapes.
    (run / "Logs" / ("l" * 150)).write_text("long name")
    (run / "Logs" / "tab\tnewline\n✓.txt").write_text("escapes")
    (run / "Logs" / os.fsdecode(b"latin1-\xe9.txt")).write_text("not utf-8")
    gz = Path(_archive(run, str(base / "gz"), base)["location"])
    tar = Path(_archive(run, str(base / "tar"), base, "--compression", "none", "--force")["location"])
    return {"run": run, "gz": gz, "tar": tar, "base": base}


def _copy_archive(archive: Path, tmp_path: Path) -> Path:
    """The archive and its manifest, copied where a test may damage them."""
    folder = tmp_path / "copy" / archive.parent.name
    shutil.copytree(archive.parent, folder)
    return folder / archive.name


def _manifest_crcs(manifest: Path) -> dict[str, str]:
    rows = [line.split("\t") for line in manifest.read_text(errors="surrogateescape").split("\n")[1:] if line]
    escapes = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}
    return {re.sub(r"\\.", lambda m: escapes[m.group(0)], r[0]): r[2] for r in rows if r[3] == "f"}


def _changed_members(raw_tar: bytes, manifest: Path) -> set[str]:
    """Oracle: the members whose crc32c differs from the manifest, by Python's tarfile."""
    crcs = _manifest_crcs(manifest)
    changed = set()
    with tarfile.open(fileobj=io.BytesIO(raw_tar), mode="r:") as tf:
        for m in tf:
            if m.isfile():
                f = tf.extractfile(m)
                assert f is not None
                if f"{google_crc32c.value(f.read()):08x}" != crcs[m.name]:
                    changed.add(m.name)
    return changed


def _inflate_ignoring_trailer(gz: bytes) -> bytes:
    """Oracle: zlib inflates the deflate data after our fixed 10-byte gzip header, without
    looking at the CRC32 in the trailer (which the flipped byte breaks)."""
    assert gz[:4] == b"\x1f\x8b\x08\x00"  # no optional header fields
    return zlib.decompressobj(-15).decompress(gz[10:])


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.timeout(60)
def test_good_local_archive_matches_its_manifest_and_the_run_folder(made: dict[str, Path]) -> None:
    for kind in ("gz", "tar"):
        report = _verify(str(made[kind]), against=made["run"])
        assert report.ok, report.problems
        assert report.problem_count == 0 and not report.damaged
        files = [p for p in made["run"].rglob("*") if p.is_file() and not p.is_symlink()]
        assert report.files == len(files)
        assert report.data_bytes == sum(p.stat().st_size for p in files)
        assert report.matched == report.members == len(list(made["run"].rglob("*"))) + 1  # + the run folder
        assert report.archive_bytes == made[kind].stat().st_size
        assert report.summary().startswith("OK: ")
        assert json.loads(json.dumps(report.as_dict()))["ok"] is True
    # The run's folder in a local destination names its archive too.
    assert _verify(str(made["gz"].parent)).ok


@pytest.mark.timeout(60)
def test_good_gcs_archive_verifies_by_url_and_by_run_name(made: dict[str, Path], gcs, tmp_path: Path) -> None:
    # The subprocess inherits STORAGE_EMULATOR_HOST from the gcs fixture.
    result = _archive(made["run"], f"gs://{gcs.bucket}/p", tmp_path)
    url = f"gs://{gcs.bucket}/p/{RUN}/{RUN}.tar.gz"
    report = _verify(url, against=made["run"])
    assert report.ok, report.problems
    assert report.source == url and report.manifest == f"gs://{gcs.bucket}/p/{RUN}/{RUN}.manifest.tsv"
    assert report.archive_bytes == result["archive_bytes"]
    # The run's name, found through the journal the archive was recorded in.
    journal = Journal(tmp_path / "sruns.db")
    try:
        by_name = _verify(RUN, journal=journal)
    finally:
        journal.close()
    assert by_name.ok and by_name.source == url


@pytest.mark.timeout(90)  # a cold Firestore emulator JVM can take a while on a busy machine
def test_run_name_found_through_firestore_when_the_journal_does_not_know_it(
    made: dict[str, Path], firestore, tmp_path: Path
) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import firestore as gfirestore

    client = gfirestore.Client(project=firestore.project, credentials=AnonymousCredentials())
    try:
        # A local destination's document holds the archive's absolute path in `storage`.
        client.collection("runs").document(RUN).set(
            {"name": RUN, "storage": str(made["gz"]), "workflow_status": "complete"}
        )
        client.collection("runs").document("240101_BUSY").set(
            {"name": "240101_BUSY", "storage": None, "workflow_status": "tarring"}
        )
    finally:
        client.close()
    journal = Journal(tmp_path / "empty.db")
    try:
        report = verify_archive(RUN, against=None, journal=journal, collection="runs", progress=NoProgress())
        assert report.ok and report.source == str(made["gz"])
        with pytest.raises(UsageError, match="Firestore collection 'runs' says run 240101_BUSY is tarring"):
            verify_archive("240101_BUSY", against=None, journal=journal, collection="runs", progress=NoProgress())
    finally:
        journal.close()


@pytest.mark.timeout(60)
def test_flipped_byte_in_stored_cbcl_data_names_the_member(made: dict[str, Path], tmp_path: Path) -> None:
    archive = _copy_archive(made["gz"], tmp_path)
    gz = archive.read_bytes()
    # `auto` stores CBCL bytes verbatim (deflate stored blocks): find a window of a CBCL
    # file in the compressed bytes and flip a byte in it. The gzip stream still inflates;
    # only the member's crc32c and the gzip CRC32 can notice.
    cbcl = sorted(made["run"].rglob("*.cbcl"))[5].read_bytes()
    window = cbcl[len(cbcl) // 2 : len(cbcl) // 2 + 48]
    at = gz.find(window)
    assert at > 0
    _flip(archive, at + 24)
    changed = _changed_members(_inflate_ignoring_trailer(archive.read_bytes()), archive.with_name(f"{RUN}.manifest.tsv"))
    assert len(changed) == 1
    member = changed.pop()
    assert member.endswith(".cbcl")

    report = _verify(str(archive))
    assert not report.ok and not report.damaged
    assert report.mismatched == 1 and report.missing == report.extra == 0
    assert any(p.startswith(f"{member}: crc32c ") and "in the manifest" in p for p in report.problems), report.problems
    assert any("gzip CRC32" in p for p in report.problems), report.problems
    assert report.summary().startswith(f"FAILED: {archive}: 2 problems; first: {member}: crc32c")


@pytest.mark.timeout(60)
def test_flipped_data_byte_in_a_plain_tar_names_the_member(made: dict[str, Path], tmp_path: Path) -> None:
    archive = _copy_archive(made["tar"], tmp_path)
    member = f"{RUN}/RunInfo.xml"
    with tarfile.open(archive) as tf:  # oracle: where the member's data starts
        info = tf.getmember(member)
    _flip(archive, info.offset_data + info.size // 2)
    report = _verify(str(archive))
    assert not report.ok
    assert report.problem_count == 1 and report.mismatched == 1
    assert report.problems[0].startswith(f"{member}: crc32c ")


@pytest.mark.timeout(60)
def test_truncated_local_archive_is_reported_with_the_member_it_cut(made: dict[str, Path], tmp_path: Path) -> None:
    for kind in ("gz", "tar"):
        archive = _copy_archive(made[kind], tmp_path / kind)
        data = archive.read_bytes()
        archive.write_bytes(data[: len(data) // 2])
        report = _verify(str(archive))
        assert not report.ok and report.damaged
        assert "truncated" in report.problems[0]
        assert RUN in report.problems[0]  # names the member it stopped in or after
        assert report.missing > 0
        assert any("listed in the manifest, missing from the archive" in p for p in report.problems)


def _put_object(gcs, name: str, data: bytes) -> None:
    """Store an object through the emulator's plain upload endpoint (not our code)."""
    url = (f"{gcs.url}/upload/storage/v1/b/{gcs.bucket}/o?uploadType=media&name="
           f"{urllib.parse.quote(name, safe='')}")
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/gzip"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200


@pytest.mark.timeout(60)
def test_truncated_gcs_object_is_reported(made: dict[str, Path], gcs, tmp_path: Path) -> None:
    _archive(made["run"], f"gs://{gcs.bucket}/p", tmp_path)
    name = f"p/{RUN}/{RUN}.tar.gz"
    data = gcs.download(name)
    _put_object(gcs, name, data[: len(data) - 1000])  # the gzip trailer and the tar's end are gone
    report = _verify(f"gs://{gcs.bucket}/{name}")
    assert not report.ok and report.damaged
    assert "truncated" in report.problems[0] and RUN in report.problems[0]


@pytest.mark.timeout(60)
def test_manifest_listing_a_file_the_archive_lacks(made: dict[str, Path], tmp_path: Path) -> None:
    archive = _copy_archive(made["gz"], tmp_path)
    manifest = archive.with_name(f"{RUN}.manifest.tsv")
    with manifest.open("a") as f:
        f.write(f"{RUN}/Data/not_archived.bin\t10\t0000abcd\tf\t0644\t1704067200\t\n")
    report = _verify(str(archive))
    assert not report.ok
    assert report.missing == 1 and report.problem_count == 1
    assert report.problems == [f"{RUN}/Data/not_archived.bin: listed in the manifest, missing from the archive"]


@pytest.mark.timeout(60)
def test_manifest_without_a_member_reports_it_as_extra(made: dict[str, Path], tmp_path: Path) -> None:
    archive = _copy_archive(made["gz"], tmp_path)
    manifest = archive.with_name(f"{RUN}.manifest.tsv")
    lines = manifest.read_text(errors="surrogateescape").splitlines(keepends=True)
    kept = "".join(line for line in lines if not line.startswith(f"{RUN}/RunInfo.xml\t"))
    manifest.write_text(kept, errors="surrogateescape")
    report = _verify(str(archive))
    assert report.extra == 1 and report.problems == [f"{RUN}/RunInfo.xml: in the archive, not in the manifest"]


@pytest.mark.timeout(60)
def test_against_reports_what_changed_on_disk(made: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / RUN
    shutil.copytree(made["run"], run, symlinks=True)
    (run / "RunInfo.xml").write_bytes((run / "RunInfo.xml").read_bytes().replace(b"Run", b"Rum", 1))
    (run / "late_file.txt").write_text("written after the archive")
    (run / "link_to_runinfo").unlink()
    os.symlink("RunParameters.xml", run / "link_to_runinfo")
    report = _verify(str(made["gz"]), against=run)
    assert not report.ok
    assert report.matched == report.members  # the archive itself is fine
    assert report.disk_mismatched == 2 and report.disk_extra == 1
    text = "\n".join(report.problems)
    assert f"{RUN}/RunInfo.xml: crc32c " in text and "on disk" in text
    assert f"{RUN}/link_to_runinfo: links to 'RunInfo.xml' in the archive, to 'RunParameters.xml' on disk" in text
    assert f"{RUN}/late_file.txt: on disk" in text and "not in the archive" in text


@pytest.mark.timeout(60)
def test_corrupt_deflate_data_or_garbage_is_reported(made: dict[str, Path], tmp_path: Path) -> None:
    archive = _copy_archive(made["gz"], tmp_path / "a")
    # The first KiBs are deflated (small text files): a flipped byte there breaks the
    # deflate stream or the tar headers it carries; either way the stream stops early.
    _flip(archive, 2000)
    report = _verify(str(archive))
    assert not report.ok
    assert report.damaged or report.mismatched or report.extra

    garbage = _copy_archive(made["gz"], tmp_path / "b")
    with garbage.open("ab") as f:
        f.write(b"trailing junk")
    report = _verify(str(garbage))
    assert not report.ok and report.matched == report.members
    assert "unexpected bytes after the end of its gzip stream" in report.problems[0]

    not_gzip = tmp_path / "c" / f"{RUN}.tar.gz"
    not_gzip.parent.mkdir()
    not_gzip.write_bytes(made["tar"].read_bytes())
    report = _verify(str(not_gzip))
    assert not report.ok and "is not a gzip stream" in " ".join(report.problems)


@pytest.mark.timeout(30)
def test_unknown_sources_and_bad_against_are_one_line_errors(made: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is neither a gs:// URL nor an existing path, and no journal"):
        _verify("no_such_run")
    # A path to nothing is a failure to find the archive (exit 1), not a usage error.
    with pytest.raises(DestinationError, match=r"^no archive at .*/nothing/x\.tar\.gz \(nothing there\): check the path"):
        _verify(str(tmp_path / "nothing" / "x.tar.gz"))
    with pytest.raises(DestinationError, match=r"^no archive at .*/RUN\.tar\.gz"):
        _verify("RUN.tar.gz")  # no "/", so first looked up as a run: then a path, not there
    # Something like a URL that is not a form we read: a usage error naming the forms.
    for url in ("gs:/bucket/x.tar.gz", "gs:bucket", "s3://bucket/x.tar.gz", "http://host/x.tar.gz"):
        with pytest.raises(UsageError, match=f"^'{re.escape(url)}' is not a source sruns-stream reads: give a run "
                                             "name, gs://BUCKET/PREFIX/RUN/RUN.tar.gz, file:///PATH or a local path"):
            _verify(url)
    with pytest.raises(RunFolderMissing, match="--against .* is not a directory"):
        _verify(str(made["gz"]), against=tmp_path / "nope")
    journal = Journal(tmp_path / "j.db")
    try:
        with pytest.raises(UsageError, match=r"'no_such_run' is not a run in journal .*j\.db, a gs:// URL, nor an"):
            _verify("no_such_run", journal=journal)
        journal.ensure("240101_RUN_IN_PROGRESS", status="uploading")
        with pytest.raises(UsageError, match="is uploading, not archived"):
            _verify("240101_RUN_IN_PROGRESS", journal=journal)
    finally:
        journal.close()


# --- the CLI (the lead wires `verify` into cli.py) ---------------------------------------


@pytest.mark.timeout(60)
def test_cli_verify_exit_codes_and_json(made: dict[str, Path], tmp_path: Path) -> None:
    good = run_cli("verify", str(made["gz"]), "--against", str(made["run"]), cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("OK: ")

    archive = _copy_archive(made["tar"], tmp_path)
    member = f"{RUN}/RunInfo.xml"
    with tarfile.open(archive) as tf:
        info = tf.getmember(member)
    _flip(archive, info.offset_data + 3)
    bad = run_cli("verify", str(archive), "--json", cwd=tmp_path)
    assert bad.returncode == 1, bad.stderr
    doc = json.loads(bad.stdout)
    assert doc["ok"] is False and doc["problems"][0].startswith(f"{member}: crc32c ")

    missing = run_cli("verify", str(tmp_path / "none.tar.gz"), cwd=tmp_path)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr == f"sruns-stream: error: no archive at {tmp_path / 'none.tar.gz'} (nothing there): check the path\n"

    scheme = run_cli("verify", "gs:/bucket/run.tar.gz", cwd=tmp_path)
    assert scheme.returncode == 2 and scheme.stderr.count("\n") == 1, scheme.stderr
    assert "is not a source sruns-stream reads" in scheme.stderr and "gs://BUCKET/PREFIX/RUN/RUN.tar.gz" in scheme.stderr


@pytest.mark.timeout(60)
def test_cli_verify_of_a_missing_gcs_object_is_a_failure(gcs, tmp_path: Path) -> None:
    url = f"gs://{gcs.bucket}/p/{RUN}/{RUN}.tar.gz"
    proc = run_cli("verify", url, cwd=tmp_path)  # the subprocess inherits STORAGE_EMULATOR_HOST
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"sruns-stream: error: no archive at {url} (bucket '{gcs.bucket}')")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


# --- --against never leaves the run folder ------------------------------------------------


@pytest.mark.timeout(60)
def test_against_never_reads_outside_the_run_folder(made: dict[str, Path], tmp_path: Path) -> None:
    """A symlinked directory in RUNDIR is a difference, not a way out; a FIFO where a file
    was is reported without being opened for reading (which would hang)."""
    run = tmp_path / RUN
    shutil.copytree(made["run"], run, symlinks=True)
    outside = tmp_path / "outside"
    shutil.move(run / "Logs", outside)  # the same bytes, but outside the run folder
    os.symlink(outside, run / "Logs")
    (run / "RunInfo.xml").unlink()
    os.mkfifo(run / "RunInfo.xml")

    report = _verify(str(made["gz"]), against=run)

    assert not report.ok and report.matched == report.members
    text = "\n".join(report.problems)
    assert f"{RUN}/RunInfo.xml: a file in the archive, a fifo on disk" in text
    assert f"{RUN}/Logs: a directory in the archive, a symlink on disk" in text
    logs = sorted(p.name for p in outside.iterdir())
    assert logs
    assert report.disk_mismatched == 2 + len(logs) and report.disk_extra == 0, text
    shown = [p for p in report.problems if p.startswith(f"{RUN}/Logs/")]
    assert shown and all(f": its directory Logs is a symlink to {str(outside)!r} on disk: not followed" in p
                         for p in shown), shown


@pytest.mark.timeout(60)
def test_against_does_not_join_unsafe_member_names_to_the_run_folder(tmp_path: Path) -> None:
    """A crafted archive whose names climb out of the run folder: never compared with what
    lies outside it, even when that matches."""
    run = tmp_path / "x" / "run"
    run.mkdir(parents=True)
    (tmp_path / "x" / "secret.txt").write_bytes(b"secret")
    crafted = tmp_path / "evil" / "run.tar.gz"
    crafted.parent.mkdir()
    with tarfile.open(crafted, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("run", None), ("run/../secret.txt", b"secret"), (str(tmp_path / "x" / "secret.txt"), b"secret")):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE if data is None else tarfile.REGTYPE
            info.size = len(data or b"")
            tf.addfile(info, io.BytesIO(data) if data is not None else None)

    report = _verify(str(crafted), against=run)

    unsafe = [p for p in report.problems if p.endswith(": unsafe name: not compared with the disk")]
    assert unsafe == ["run/../secret.txt: unsafe name: not compared with the disk",
                      f"{tmp_path / 'x' / 'secret.txt'}: unsafe name: not compared with the disk"], report.problems
    assert report.disk_mismatched == 2


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


@pytest.mark.timeout(180)
def test_ctrl_c_during_a_download_backoff_stops_the_verify(made: dict[str, Path], gcs, tmp_path: Path) -> None:
    """Every download fails, so verify sits in its retry backoff (up to 30 s a wait). A
    Ctrl-C there stops it: exit 130 and the verify's one line, not a wait for the retries
    to run out (which would end in exit 1)."""
    import signal
    import subprocess
    import sys

    from helpers import REPO

    _archive(made["run"], f"gs://{gcs.bucket}/p", tmp_path)
    proxy = _FailingDownloads(gcs.url)
    try:
        env = dict(os.environ, PYTHONPATH=str(REPO), STORAGE_EMULATOR_HOST=proxy.url)
        proc = subprocess.Popen(
            [sys.executable, "-m", "sruns_stream", "verify", f"gs://{gcs.bucket}/p/{RUN}/{RUN}.tar.gz"],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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
