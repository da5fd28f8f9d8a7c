"""No upload session id (nor any other credential a URL or header carries) in what
sruns-stream says: `errors.redact`, applied as every error of the tree is built.

The case that leaked: a manifest over 8 MiB is uploaded by google-cloud-storage through
a resumable session of its own, and when that upload fails the library's message quotes
``PUT …?uploadType=resumable&upload_id=…``. Real processes, the GCS emulator behind
tests/faultproxy.py (which answers the manifest's upload 503, a fault the emulator
cannot produce) and, for the daemon, every outlet a failure reaches: stderr, the
journal's ``last_error``, the daemon's log and the run's log, the Firestore emulator's
document, a webhook server and a mail over SMTP on loopback. The oracle is the upload id
itself, as the proxy saw it on the wire.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote_plus

import pytest
from faultproxy import Fault, FaultProxy
from helpers import journal_row, run_cli

from sruns_stream.errors import (
    ConfigError,
    DestinationError,
    FirestoreError,
    IntegrityError,
    SrunsError,
    UploadError,
    UsageError,
    redact,
)
from sruns_stream.state.journal import Journal

RUN = "240101_M00001_0001_000000000-REDCT"
# google-cloud-storage uploads a string over this many bytes through a resumable session
# (`google.cloud.storage.blob._MAX_MULTIPART_SIZE`, 8 MiB), smaller ones in one request.
LIBRARY_RESUMABLE_FROM = 8 << 20


# -- the function ----------------------------------------------------------------------


def test_redact_hides_credentials_in_urls_and_headers_and_keeps_the_rest() -> None:
    secret = "ADPycdv4Xq-_9zZ"
    cases = {
        # As google-cloud-storage words a failed resumable request.
        f"HTTP 503 PUT https://storage.googleapis.com/upload/storage/v1/b/b/o"
        f"?uploadType=resumable&upload_id={secret}: Request failed with status code 503":
        "HTTP 503 PUT https://storage.googleapis.com/upload/storage/v1/b/b/o"
        "?uploadType=resumable&upload_id=<redacted>: Request failed with status code 503",
        # As requests words a connection failure: the path only, then a parenthesis.
        f"ConnectionError: HTTPConnectionPool(host='h', port=1): Max retries exceeded with url: "
        f"/upload?upload_id={secret} (Caused by x)":
        "ConnectionError: HTTPConnectionPool(host='h', port=1): Max retries exceeded with url: "
        "/upload?upload_id=<redacted> (Caused by x)",
        f"GET /o?alt=media&access_token={secret}&userProject=p":
        "GET /o?alt=media&access_token=<redacted>&userProject=p",
        f"https://h/o?X-Goog-Algorithm=A&X-Goog-Credential={secret}/auto&X-Goog-Signature={secret}":
        "https://h/o?X-Goog-Algorithm=A&X-Goog-Credential=<redacted>&X-Goog-Signature=<redacted>",
        f"next=%2Fo%3Fupload_id%3D{secret}": "next=%2Fo%3Fupload_id%3D<redacted>",
        f'{{"url": "/o?a=1\\u0026upload_id={secret}"}}': '{"url": "/o?a=1\\u0026upload_id=<redacted>"}',
        f"Authorization: Bearer {secret}": "Authorization: Bearer <redacted>",
        f"X-GUploader-UploadID: {secret}": "X-GUploader-UploadID: <redacted>",
        # Nothing to hide: unchanged, "bearer" in a sentence included.
        "the session URI is a bearer credential; key=value in prose": "the session URI is a bearer credential; "
        "key=value in prose",
    }
    for given, expected in cases.items():
        assert redact(given) == expected
        assert secret not in redact(given)


def test_every_error_of_the_tree_is_redacted_as_it_is_built() -> None:
    url = "https://storage.googleapis.com/upload/storage/v1/b/b/o?uploadType=resumable&upload_id=SECRET42"
    for cls in (SrunsError, UsageError, ConfigError, DestinationError, UploadError, IntegrityError, FirestoreError):
        err = cls(f"manifest upload: HTTP 400 PUT {url}: bad")
        assert "SECRET42" not in str(err) and "SECRET42" not in repr(err), cls
        assert str(err).endswith("upload_id=<redacted>: bad")
    with pytest.raises(UploadError, match=r"^x \?upload_id=<redacted>$"):
        raise UploadError("x ?upload_id=SECRET42")


def test_the_journal_redacts_a_last_error_whatever_built_it(tmp_path: Path) -> None:
    """The last line of defence: a message that is no error of ours (a bug's, a
    library's that escaped) still reaches the journal, and from it the daemon's log,
    Firestore, webhooks and mail, without the session."""
    journal = Journal(tmp_path / "sruns.db")
    try:
        journal.ensure(RUN, status="uploading")
        journal.update(RUN, last_error="ValueError: PUT http://h/o?upload_id=SECRET42: boom")
    finally:
        journal.close()
    assert journal_row(tmp_path / "sruns.db", RUN)["last_error"] == (
        "ValueError: PUT http://h/o?upload_id=<redacted>: boom"
    )


# -- the manifest's own resumable upload fails: every outlet ---------------------------------


def _run_with_a_large_manifest(folder: Path) -> Path:
    """A small run whose manifest is over 8 MiB: a few thousand empty files under names
    near PATH_MAX (each row holds its path), which archive in seconds."""
    import make_fake_run

    make_fake_run.make_run(folder, "miseq", 1 << 20, seed=41)
    # 13 directories of 250 characters: a row of about 3,600 bytes, a path well under
    # PATH_MAX (4096) even below a long temporary directory.
    deep = folder.joinpath(*(f"{i:02d}" + "d" * 248 for i in range(13)))
    deep.mkdir(parents=True)
    row = len(str(deep.relative_to(folder.parent))) + 250
    count = LIBRARY_RESUMABLE_FROM // row + 200
    for i in range(count):
        fd = os.open(deep / (f"{i:05d}" + "f" * 245), os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
    return folder


def _manifest_sessions(proxy: FaultProxy) -> list[str]:
    """The upload ids of the manifest's sessions as the proxy saw them on the wire (the
    library sends the manifest in one request, the one carrying the total, which the
    proxy failed), in the URL's encoding and decoded."""
    raw = [e.path.split("upload_id=", 1)[1].split("&", 1)[0] for e in proxy.exchanges("final") if e.fault == "status"]
    assert raw, [(e.method, e.target, e.path[:80]) for e in proxy.log]
    return raw + [unquote_plus(r) for r in raw]


def _leaks(ids: list[str], **outlets: str) -> dict[str, str]:
    """The outlets that hold an upload id, or its first 40 characters: a message cut to
    its first 200 characters (`gcs.reason`) would keep a session's start."""
    return {name: text for name, text in outlets.items() for i in ids if i[:40] in text}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_failed_manifest_upload_names_no_session_on_stderr_or_in_the_journal(gcs, tmp_path: Path) -> None:
    run = _run_with_a_large_manifest(tmp_path / RUN)
    db = tmp_path / "sruns.db"
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"upload_retries": 0}))  # one attempt: no backoff to wait for
    with FaultProxy(gcs.url) as proxy:
        proxy.add(Fault("status", target="final", status=503))
        proc = run_cli("archive", str(run), "--dest", f"gs://{gcs.bucket}/runs", "--chunk-size", "256K",
                       "--config", str(conf), "--journal", str(db), cwd=tmp_path,
                       env={"STORAGE_EMULATOR_HOST": proxy.url}, timeout=150)
        ids = _manifest_sessions(proxy)
    assert proc.returncode == 75, proc.stderr  # a 503 that outlasted its retries: temporary
    last_error = journal_row(db, RUN)["last_error"]
    outlets = {"stderr": proc.stderr, "stdout": proc.stdout, "journal": last_error}
    assert not _leaks(ids, **outlets), sorted(_leaks(ids, **outlets))
    # Still says what failed, and where: the object, never the session's URL (the error
    # table words a failure by the answer, `gcs.client.reason`).
    manifest = f"writing gs://{gcs.bucket}/runs/{RUN}/{RUN}.manifest.tsv"
    assert manifest in proc.stderr and "HTTP 503" in proc.stderr and "upload_id" not in proc.stderr
    assert manifest in last_error and "upload_id" not in last_error


@pytest.mark.timeout(300)
def test_a_failed_manifest_upload_names_no_session_in_any_outlet_of_the_daemon(
    gcs, firestore, webhook, smtp, tmp_path: Path
) -> None:
    """The daemon's outlets: its log (stderr), the run's log, the journal, the Firestore
    document, the webhook's payload and the mail of the first failure."""
    posts, hook_url = webhook
    inbox, port = smtp
    (tmp_path / "watch").mkdir()
    _run_with_a_large_manifest(tmp_path / "watch" / RUN)
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({
        "watchdir": str(tmp_path / "watch"),
        "completed_runs_dir": str(tmp_path / "completed"),
        "sqlite_db": str(tmp_path / "sruns.db"),
        "gcp_bucket_name": gcs.bucket,
        "firestore_collection": "sruns",
        "leases": False,  # one daemon: no claims to wait for on the emulator
        "webhook_url": hook_url,
        "mail": {"host": "127.0.0.1", "port": port, "from": "sruns@test.example", "tos": ["ops@test.example"]},
        "cycle_pause_sec": 1,
        "sentinal_file_age_minutes": 0,
        "chunk_size": 256 * 1024,
        "upload_retries": 0,
    }))
    with FaultProxy(gcs.url) as proxy:
        proxy.add(Fault("status", target="final", status=503))
        proc = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path,
                       env={"STORAGE_EMULATOR_HOST": proxy.url}, timeout=240)
        ids = _manifest_sessions(proxy)
    assert proc.returncode == 0, proc.stderr
    row = journal_row(tmp_path / "sruns.db", RUN)
    assert row["status"] == "not_running" and row["failures"] == 1, row
    doc = firestore.document("sruns", RUN)
    assert doc is not None, "the failure never reached Firestore"
    # Decoded: a quoted-printable or base64 body would hide an id from a plain search.
    mails = [r.message.get_body(("plain",)).get_content() for r in inbox.received if "failed" in r.message["Subject"]]
    hooks = [json.dumps(p["json"]) for p in posts.posts]
    assert mails and hooks, ([r.message["Subject"] for r in inbox.received], posts.posts)
    outlets = {
        "daemon log": proc.stderr,
        "run log": (tmp_path / "sruns.db.logs" / f"{RUN}.log").read_text(),
        "journal": row["last_error"],
        "firestore": json.dumps(doc, default=str),
        "webhook": "\n".join(hooks),
        "mail": "\n".join(mails),
    }
    assert not _leaks(ids, **outlets), sorted(_leaks(ids, **outlets))
    for name in ("daemon log", "journal", "firestore", "webhook", "mail"):
        assert f"{RUN}.manifest.tsv" in outlets[name] and "upload_id" not in outlets[name], (name, outlets[name])


def test_an_internal_error_report_names_no_session(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A bug's report (traceback and last line) goes to the run's log too: a library's
    message quoted there is redacted like every error of the tree. The bug is faked:
    no real input is known to reach this path."""
    from sruns_stream import cli

    secret = "ADPycdvSecretUploadId0123456789"

    def bug(argv: object = None) -> int:
        raise ValueError(f"PUT https://storage.googleapis.com/upload?uploadType=resumable&upload_id={secret}: 503")

    monkeypatch.setattr(cli, "main", bug)
    monkeypatch.setattr(cli, "_die_with_parent", lambda: None)
    monkeypatch.setattr(cli.signal, "signal", lambda *a: None)
    with pytest.raises(SystemExit) as exit_info:
        cli.main_cli()
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert secret not in err and "upload_id=<redacted>" in err
    assert err.splitlines()[-1].startswith("sruns-stream: internal error: ")
