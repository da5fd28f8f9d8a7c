"""What the daemon checks before it starts, in real processes: the destination bucket
exists and these credentials may archive into it, and a GOOGLE_APPLICATION_CREDENTIALS
that names a missing or broken file is named, with what is wrong (issue 24: a mistyped
bucket passed start-up and was found run by run, after backoffs; a broken key file read
as "no credentials"). Each is one line, exit 2, and no journal is made."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from faultproxy import Fault, FaultProxy
from helpers import run_cli

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, bucket: str) -> Path:
    (tmp_path / "watch").mkdir(exist_ok=True)
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"watchdir": str(tmp_path / "watch"), "sqlite_db": str(tmp_path / "sruns.db"),
                                "gcp_bucket_name": bucket, "cycle_pause_sec": 1}))
    return conf


@pytest.mark.timeout(120)
def test_a_bucket_that_does_not_exist_stops_the_daemon_at_start(gcs, tmp_path: Path) -> None:
    conf = _config(tmp_path, "sruns-tset")  # a typo of the emulator's sruns-test
    proc = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"sruns-stream: error: bucket sruns-tset does not exist (gcp_bucket_name in {conf}): "
                           "correct the name, or create the bucket\n")
    assert sorted(os.listdir(tmp_path)) == ["conf.json", "watch"]  # no journal made

    ok = run_cli("monitor", "--config", str(_config(tmp_path, gcs.bucket)), "--once", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr  # the bucket that is there passes


@pytest.mark.timeout(120)
def test_credentials_that_may_not_write_the_bucket_stop_the_daemon_at_start(gcs, tmp_path: Path) -> None:
    """The emulator grants every permission it is asked about: the answer of a bucket
    these credentials may only read is the fault proxy's (a fake, for that reason). What
    the daemon asked is checked in the proxy's log."""
    conf = _config(tmp_path, gcs.bucket)
    granted = {"kind": "storage#testIamPermissionsResponse", "permissions": ["storage.objects.get",
                                                                          "storage.objects.list"]}
    with FaultProxy(gcs.url) as proxy:
        proxy.add(Fault("status", target="permissions", status=200, body=json.dumps(granted).encode()))
        proc = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path,
                       env={"STORAGE_EMULATOR_HOST": proxy.url})
        asked = [e for e in proxy.log if e.target == "permissions"]
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"sruns-stream: error: bucket {gcs.bucket} (gcp_bucket_name in {conf}): these credentials "
                           "lack storage.objects.create, storage.objects.delete: grant them (e.g. "
                           "roles/storage.objectAdmin on the bucket) to the daemon's service account\n")
    assert len(asked) == 1 and asked[0].fault == "status"
    assert sorted(os.listdir(tmp_path)) == ["conf.json", "watch"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("content", "what"), [
    (None, "which does not exist"),
    ("{\"type\": \"service_account\", \"private_key\": \"-----BEGIN", "which is not JSON (Unterminated string"),
    ("[1, 2]", "which is not a Google credentials file (no \"type\" key"),
    ("{\"type\": \"service_account\", \"private_key\": \"SECRET-KEY-BYTES\"}",
     "which Google's library cannot use: Failed to load service account credentials from"),
])
def test_a_credentials_file_that_is_missing_or_broken_is_named(tmp_path: Path, content: str | None,
                                                              what: str) -> None:
    """Without the emulator: Google's own credential loading, as on a VM."""
    key = tmp_path / "key.json"
    if content is not None:
        key.write_text(content)
    conf = _config(tmp_path, "some-bucket")
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(key), "STORAGE_EMULATOR_HOST": ""}
    proc = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sruns-stream: error: GOOGLE_APPLICATION_CREDENTIALS names {key}, "
                                                   f"{what}"), proc.stderr
    assert "SECRET-KEY-BYTES" not in proc.stderr and "BEGIN" not in proc.stderr  # a key is never quoted
    assert "no Google credentials found" not in proc.stderr
    assert not (tmp_path / "sruns.db").exists()

    # archive reads the same variable: the same line.
    run = tmp_path / "watch" / "RUN"
    run.mkdir()
    (run / "RunInfo.xml").write_text("<RunInfo/>")
    archive = run_cli("archive", str(run), "--not-finished", "--dest", "gs://some-bucket/runs",
                      "--journal", str(tmp_path / "a.db"), cwd=tmp_path, env=env)
    # (google-auth lists the missing fields of a key in no fixed order)
    assert archive.returncode == 2 and archive.stderr.count("\n") == 1, archive.stderr
    assert archive.stderr.split(" missing fields")[0] == proc.stderr.split(" missing fields")[0]
