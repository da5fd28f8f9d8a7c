"""Costs and compliance: the storage class, the Cloud KMS key, retention and holds each
object is created with, checked as GCS reports them, and the bill said before a run.

Against the real gcp-storage-emulator. It honours ``storageClass`` when an object is
created (a resumable session's metadata, a compose's destination), so those tests read
the object back. It ignores ``kmsKeyName``, ``retention`` and the holds, and its rewrite
ignores the destination's class and key: where a test needs them kept it uses the
``gcs_fields`` fixture (tests/plugins/gcs_emulator.py), which teaches the emulator what
GCS documents, and says so; what the client *sent* is always read from the recording
proxy (tests/faultproxy.py), never from the emulator. The KMS 403 comes from that proxy
(a fault the emulator cannot produce). Oracles: the issue's own figures for the bill,
the archive one stream makes to a local directory (byte equality), GNU tar.
"""

from __future__ import annotations

import datetime
import json
import random
import time
import urllib.parse
from pathlib import Path

import pytest
from faultproxy import Fault, FaultProxy
from helpers import journal_row, run_cli, run_in_process, tree, untars_to_the_input

from sruns_stream.config import parse_config
from sruns_stream.errors import ConfigError, IntegrityError
from sruns_stream.storage.gcs.client import ObjectInfo, check_kept
from sruns_stream.storage.prices import estimate

CHUNK = 256 * 1024
FLAGS = ("--chunk-size", "256K", "--block-size", "64K", "--threads", "2", "--json")
PREFIX = "runs"
KEY = "projects/lab/locations/us/keyRings/archive/cryptoKeys/runs"
GiB = 1024**3


def _blob(run: Path, suffix: str = ".tar.gz") -> str:
    return f"{PREFIX}/{run.name}/{run.name}{suffix}"


def _archive(run: Path, dest: str, db: Path, cwd: Path, *extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return run_in_process("archive", str(run), "--dest", dest, *FLAGS, *extra, "--journal", str(db), cwd=cwd, env=env)


def _big_run(make_run) -> Path:  # type: ignore[no-untyped-def]
    """A run whose tar stream spans several segments (each at least 8 chunks: 2 MiB)."""
    run = make_run("miseq", 10 << 20, seed=3)
    rng = random.Random(3)
    (run / "Data" / "big.bin").write_bytes(rng.randbytes(3 << 20) + bytes(range(256)) * (3 << 12))
    return run


# -- configuration and the price table ----------------------------------------------------------


def test_the_config_takes_a_class_a_key_retention_and_prices_and_refuses_wrong_ones_by_name() -> None:
    config = parse_config({"storage_class": "archive", "kms_key_name": KEY, "retain_days": 3650,
                           "retention_mode": "locked", "event_based_hold": True,
                           "prices": {"archive": [0.002, 0.06]}, "price_region": "us"})
    a = config.archive
    assert (a.storage_class, a.kms_key_name, a.retain_days, a.retention_mode, a.event_based_hold) == (
        "ARCHIVE", KEY, 3650, "locked", True)
    assert a.prices == (("ARCHIVE", 0.002, 0.06),)
    for raw, words in (
        ({"storage_class": "GLACIER"}, "storage_class must be one of STANDARD, NEARLINE, COLDLINE, ARCHIVE"),
        ({"kms_key_name": "my-key"}, "kms_key_name must be a Cloud KMS key"),
        ({"retain_days": 0}, "'retain_days' must be positive"),
        ({"retention_mode": "forever"}, "retention_mode must be unlocked or locked"),
        ({"price_region": "mars"}, "price_region must be one of"),
        ({"prices": {"ARCHIVE": [1]}}, "config key 'prices' must map a storage class"),
        ({"event_based_hold": "yes"}, "'event_based_hold' must be true or false"),
    ):
        with pytest.raises(ConfigError) as err:
            parse_config(raw)
        assert words in str(err.value), raw


def test_the_bill_of_an_11_tb_novaseq_x_run_is_the_issues_figures() -> None:
    # The issue's figures for 10,245 GiB: $205, $102, $41, $12 a month; $0, $102, $205,
    # $512 to read it all back (list prices of the cheapest US regions).
    size = 10_245 * GiB
    got = {c: estimate(size, c) for c in ("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE")}
    assert [round(c.monthly) for c in got.values()] == [205, 102, 41, 12]
    assert [round(c.read_back) for c in got.values()] == [0, 102, 205, 512]
    assert [c.minimum_days for c in got.values()] == [0, 30, 90, 365]
    assert estimate(size, None).storage_class == "STANDARD"  # the usual bucket default
    overridden = estimate(size, "ARCHIVE", overrides=[("ARCHIVE", 0.002, 0.1)])
    assert (round(overridden.monthly, 2), round(overridden.read_back, 2)) == (20.49, 1024.5)


def test_an_object_in_another_class_or_under_another_key_is_an_error_not_a_note() -> None:
    where = "gs://b/r.tar.gz"
    info = ObjectInfo("r.tar.gz", 1, 1, 1, storage_class="STANDARD", kms_key_name=f"{KEY}/cryptoKeyVersions/3")
    check_kept(where, info, "STANDARD", KEY)  # a version of the key asked for is that key
    with pytest.raises(IntegrityError, match="created in storage class STANDARD, not ARCHIVE as asked"):
        check_kept(where, info, "ARCHIVE", None)
    with pytest.raises(IntegrityError, match="not the Cloud KMS key .*other"):
        check_kept(where, info, None, KEY.replace("runs", "other"))
    with pytest.raises(IntegrityError, match="encrypted with a Google-managed key"):
        check_kept(where, ObjectInfo("r", 1, 1, 1), None, KEY)


# -- the dry run ------------------------------------------------------------------------------------


def test_dry_run_says_the_class_and_the_bill_and_creates_nothing(gcs, make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 4 << 20)
    db = tmp_path / "sruns.db"
    with FaultProxy(gcs.url) as proxy:
        env = {"STORAGE_EMULATOR_HOST": proxy.url}
        text = run_in_process("archive", str(run), "--dest", f"gs://{gcs.bucket}/{PREFIX}", "--dry-run",
                              "--storage-class", "coldline", "--kms-key", KEY, "--journal", str(db),
                              cwd=tmp_path, env=env)
        as_json = run_in_process("archive", str(run), "--dest", f"gs://{gcs.bucket}/{PREFIX}", "--dry-run",
                                 "--storage-class", "coldline", "--json", "--journal", str(db),
                                 cwd=tmp_path, env=env)
        writes = [e for e in proxy.log if e.method != "GET"]
    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    plan = json.loads(as_json.stdout)
    expected = estimate(plan["tar_bytes"], "COLDLINE")
    assert plan["storage_class"] == "COLDLINE"
    assert plan["cost"]["monthly_usd"] == round(expected.monthly, 2) and plan["cost"]["minimum_days"] == 90
    lines = {line.split()[0]: line for line in text.stdout.splitlines()[1:]}
    assert lines["class"].split(None, 1)[1] == f"COLDLINE, encrypted with {KEY}"
    assert f"about ${expected.monthly:,.2f} a month, ${expected.read_back:,.2f} to read it all back" in lines["cost"]
    assert "billed at least 90 days" in lines["cost"]
    assert not db.exists() and gcs.names() == [] and writes == []  # nothing written anywhere


# -- one stream -------------------------------------------------------------------------------------


def test_one_stream_creates_the_archive_in_the_class_asked_and_the_rest_in_standard(
    gcs, make_run, tmp_path: Path
) -> None:
    run = make_run("miseq", 4 << 20)
    db = tmp_path / "sruns.db"
    with FaultProxy(gcs.url) as proxy:
        proc = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", db, tmp_path, "--storage-class", "NEARLINE",
                        env={"STORAGE_EMULATOR_HOST": proxy.url})
    assert proc.returncode == 0, proc.stderr
    # What the client asked for: the session that creates the archive says NEARLINE ...
    (create,) = proxy.exchanges("create")
    assert create.json()["storageClass"] == "NEARLINE"
    # ... and the small files beside it STANDARD (multipart uploads: metadata part).
    small = [e for e in proxy.log if e.method == "POST" and "uploadType=multipart" in e.path]
    assert sorted(e.json()["name"] for e in small) == [
        _blob(run, ".index.tsv"), _blob(run, ".manifest.tsv"), _blob(run, ".tar.gz.gzidx"),
        _blob(run, ".tar.gz.index.sqlite")]  # the indexes other tools read too (issue 23)
    assert all(e.json()["storageClass"] == "STANDARD" for e in small)
    # What GCS (the emulator honours the field on creation) keeps:
    assert gcs.resource(_blob(run))["storageClass"] == "NEARLINE"
    assert gcs.resource(_blob(run, ".manifest.tsv"))["storageClass"] == "STANDARD"
    untars_to_the_input(gcs.download(_blob(run)), run, tmp_path)
    # The journal, status and status --json carry it, with the bill.
    assert json.loads(journal_row(db, run.name)["compliance"])["storage_class"] == "NEARLINE"
    status = run_in_process("status", run.name, "--journal", str(db), "--json", cwd=tmp_path)
    (view,) = json.loads(status.stdout)
    size = view["archive_bytes"]
    assert (view["storage_class"], view["kms_key_name"], view["retain_until"], view["holds"]) == (
        "NEARLINE", None, None, [])
    assert view["cost"]["monthly_usd"] == round(estimate(size, "NEARLINE").monthly, 2)
    text = run_in_process("status", run.name, "--journal", str(db), cwd=tmp_path).stdout
    assert f"  class      NEARLINE: about ${estimate(size, 'NEARLINE').monthly:,.2f} a month" in text


def test_a_kms_403_is_one_line_naming_the_key_the_role_and_the_command(gcs, make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 1 << 20)
    # GCS's answer when its service agent may not use the key (a fault the emulator cannot make).
    denied = json.dumps({"error": {"code": 403, "message": "Permission denied on Cloud KMS key. Please ensure "
                                   "that your Cloud Storage service account has been authorized to use this key."}})
    with FaultProxy(gcs.url) as proxy:
        proxy.add(Fault("status", status=403, target="create", body=denied.encode()))
        proc = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", tmp_path / "sruns.db", tmp_path, "--kms-key", KEY,
                        env={"STORAGE_EMULATOR_HOST": proxy.url})
        (create,) = proxy.exchanges("create")
    assert proc.returncode == 1
    assert create.query("kmsKeyName") == KEY  # the key went with the request GCS refused
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"sruns-stream: error: permission denied: starting the upload of gs://{gcs.bucket}/")
    assert f"GCS may not use Cloud KMS key {KEY} (HTTP 403 Permission denied on Cloud KMS key." in line
    assert "needs roles/cloudkms.cryptoKeyEncrypterDecrypter on that key" in line
    assert line.endswith(f"`gcloud storage service-agent --project=BUCKET_PROJECT --authorize-cmek={KEY}`")
    assert gcs.names() == []


# -- several streams --------------------------------------------------------------------------------


def test_several_streams_in_a_cold_class_fail_loudly_where_the_rewrite_does_not_change_the_class(
    gcs, make_run, tmp_path: Path
) -> None:
    # The real emulator's rewrite copies the object as it is: GCS would change its class.
    # The class it then reports is checked, and a STANDARD archive is not reported as ARCHIVE.
    run = _big_run(make_run)
    with FaultProxy(gcs.url) as proxy:
        proc = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", tmp_path / "sruns.db", tmp_path, "--streams", "2",
                        "--storage-class", "ARCHIVE", env={"STORAGE_EMULATOR_HOST": proxy.url})
        rewrites = proxy.exchanges("rewrite")
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line == (f"sruns-stream: error: gs://{gcs.bucket}/{_blob(run)} was created in storage class STANDARD, "
                    "not ARCHIVE as asked: check the bucket (an Autoclass bucket chooses classes itself); "
                    "it was deleted")
    assert [e.json()["storageClass"] for e in rewrites] == ["ARCHIVE"]  # what the client asked GCS
    assert _blob(run) not in gcs.names()


def test_archive_in_archive_class_under_a_key_on_four_streams_leaves_only_the_archive_and_its_files(
    gcs, gcs_fields, make_run, tmp_path: Path
) -> None:
    """The issue's "done when", on the emulator taught to keep keys and to rewrite classes
    as GCS does (`gcs_fields`): ARCHIVE under K for the archive, STANDARD under K for every
    other object, no temporaries left, the bytes those one stream makes to a directory."""
    run = _big_run(make_run)
    ref = _archive(run, str(tmp_path / "ref"), tmp_path / "ref.db", tmp_path)
    reference = Path(json.loads(ref.stdout)["location"]).read_bytes()
    db = tmp_path / "sruns.db"
    with FaultProxy(gcs.url) as proxy:
        proc = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", db, tmp_path, "--streams", "4",
                        "--storage-class", "ARCHIVE", "--kms-key", KEY, env={"STORAGE_EMULATOR_HOST": proxy.url})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["streams"] == 4
    archive, manifest, index = _blob(run), _blob(run, ".manifest.tsv"), _blob(run, ".index.tsv")
    gzidx, sqlite = _blob(run, ".tar.gz.gzidx"), _blob(run, ".tar.gz.index.sqlite")  # for other tools (issue 23)
    assert gcs.names() == sorted([archive, manifest, index, gzidx, sqlite])  # no part, trailer or scratch left
    assert gcs.download(archive) == reference
    untars_to_the_input(gcs.download(archive), run, tmp_path)
    kept = {name: gcs.resource(name) for name in (archive, manifest, index, gzidx, sqlite)}
    assert {n: r["storageClass"] for n, r in kept.items()} == {archive: "ARCHIVE", manifest: "STANDARD",
                                                                index: "STANDARD", gzidx: "STANDARD",
                                                                sqlite: "STANDARD"}
    assert {r["kmsKeyName"] for r in kept.values()} == {KEY}
    # What the client sent: every session (each part) STANDARD under K ...
    creates = proxy.exchanges("create")
    assert len(creates) >= 4
    assert all(e.json()["storageClass"] == "STANDARD" and e.query("kmsKeyName") == KEY for e in creates)
    # ... every compose (the trailer, the composite) STANDARD under K ...
    composes = proxy.exchanges("compose")
    assert composes and all(e.json()["destination"]["storageClass"] == "STANDARD" for e in composes)
    assert all(e.json()["destination"]["kmsKeyName"] == KEY for e in composes)
    uploads = [e for e in proxy.log if e.method == "POST" and "uploadType=multipart" in e.path]
    assert uploads and all(e.query("kmsKeyName") == KEY for e in uploads)
    # ... and one rewrite onto itself into ARCHIVE under K, its token followed to the end.
    rewrites = proxy.exchanges("rewrite")
    assert [(e.json()["storageClass"], e.query("destinationKmsKeyName")) for e in rewrites] == [("ARCHIVE", KEY)] * 2
    assert rewrites[0].query("rewriteToken") is None and rewrites[1].query("rewriteToken") == "sruns-test-token"
    assert gcs_fields.calls == 2
    # The parts went as soon as they were composed: deleted before the rewrite began.
    first_rewrite = proxy.log.index(rewrites[0])
    deleted = {e.path.split("/o/", 1)[1].split("?")[0] for e in proxy.log[:first_rewrite] if e.method == "DELETE"}
    assert len(deleted) >= 4
    view = json.loads(journal_row(db, run.name)["compliance"])
    assert (view["storage_class"], view["kms_key_name"]) == ("ARCHIVE", KEY)


# -- a resumed run ----------------------------------------------------------------------------------


def test_a_resumed_run_keeps_its_class_and_key(gcs, gcs_fields, make_run, tmp_path: Path) -> None:
    run = _big_run(make_run)
    db = tmp_path / "sruns.db"
    flags = ("--streams", "1", "--storage-class", "COLDLINE", "--kms-key", KEY)
    with FaultProxy(gcs.url) as proxy:
        env = {"STORAGE_EMULATOR_HOST": proxy.url}
        # The upload stops half-way (GCS refuses a chunk): the session stays in the journal.
        proxy.add(Fault("status", status=400, target="chunk", nth=6))
        first = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", db, tmp_path, *flags, env=env)
        assert first.returncode == 1 and journal_row(db, run.name)["durable_offset"] > 0
        proxy.epoch = 1
        second = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", db, tmp_path, *flags, env=env)
        assert second.returncode == 0, second.stderr
        assert json.loads(second.stdout)["resumed_from_archive"] > 0
        # One session, created once, in COLDLINE under K, resumed: never created again.
        (create,) = proxy.exchanges("create")
        assert (create.epoch, create.json()["storageClass"], create.query("kmsKeyName")) == (0, "COLDLINE", KEY)
        # Asked for another class, the next run does not finish the old session.
        proxy.add(Fault("status", status=400, target="chunk", nth=6))
        third = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", db, tmp_path, "--force", *flags, env=env)
        assert third.returncode == 1
        fourth = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", db, tmp_path, "--streams", "1", "--storage-class",
                          "ARCHIVE", "--kms-key", KEY, env=env)
        assert fourth.returncode == 0, fourth.stderr
        assert "creates the object in another storage class or under another key than asked" in fourth.stderr
    resource = gcs.resource(_blob(run))
    assert (resource["storageClass"], resource["kmsKeyName"]) == ("ARCHIVE", KEY)
    untars_to_the_input(gcs.download(_blob(run)), run, tmp_path)


# -- retention and holds ----------------------------------------------------------------------------


def test_retention_and_holds_are_set_on_the_archive_and_on_every_volume(
    gcs, gcs_fields, make_run, tmp_path: Path
) -> None:
    run = _big_run(make_run)
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"retain_days": 30, "retention_mode": "locked", "event_based_hold": True,
                                "temporary_hold": True}))
    db = tmp_path / "sruns.db"
    with FaultProxy(gcs.url) as proxy:
        before = time.time()
        proc = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", db, tmp_path, "--streams", "2", "--volume-size", "2M",
                        "--config", str(conf), env={"STORAGE_EMULATOR_HOST": proxy.url})
        after = time.time()
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["volumes"] >= 3
    volumes = [n for n in gcs.names() if n.startswith(_blob(run) + ".") and n[-1].isdigit()]
    assert len(volumes) == result["volumes"]
    # What the client asked, one PATCH per volume: locked retention for 30 days, both holds.
    asked = {e.path.split("/o/", 1)[1].split("?")[0]: e.json() for e in proxy.exchanges("patch")
             if "retention" in (e.json() or {})}
    assert sorted(urllib.parse.unquote(n) for n in asked) == volumes
    for body in asked.values():
        assert body["retention"]["mode"] == "Locked" and body["eventBasedHold"] and body["temporaryHold"]
        until = datetime.datetime.fromisoformat(body["retention"]["retainUntilTime"].replace("Z", "+00:00"))
        assert before + 30 * 86400 - 2 <= until.timestamp() <= after + 30 * 86400 + 2
    for name in volumes:  # what the (taught) emulator keeps
        kept = gcs.resource(name)
        assert kept["eventBasedHold"] and kept["temporaryHold"] and kept["retention"]["mode"] == "Locked"
    (view,) = json.loads(run_in_process("status", run.name, "--journal", str(db), "--json", cwd=tmp_path).stdout)
    assert view["holds"] == ["event_based", "temporary"] and view["retain_until"]


def test_a_hold_gcs_does_not_keep_fails_the_run_and_says_why(gcs, make_run, tmp_path: Path) -> None:
    # The real emulator drops holds: GCS would keep them. The archive is not reported.
    run = make_run("miseq", 2 << 20)
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"event_based_hold": True}))
    db = tmp_path / "sruns.db"
    proc = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", db, tmp_path, "--config", str(conf))
    assert proc.returncode == 1
    assert f"gs://{gcs.bucket}/{_blob(run)} reports no event-based hold after it was set" in proc.stderr
    assert journal_row(db, run.name)["status"] != "complete" and _blob(run) not in gcs.names()


def test_the_firestore_fields_carry_class_key_retention_and_holds(journal) -> None:  # type: ignore[no-untyped-def]
    from sruns_stream.state.firestore import RunRecord, fields_from_task

    journal.ensure("run1")
    journal.update("run1", compliance=json.dumps({"storage_class": "ARCHIVE", "kms_key_name": KEY,
                                                  "retain_until": "2036-12-07T00:00:00+00:00",
                                                  "holds": ["event_based"]}))
    fields = fields_from_task(journal.get("run1"))
    assert (fields["storage_class"], fields["kms_key_name"], fields["retain_until"], fields["holds"]) == (
        "ARCHIVE", KEY, "2036-12-07T00:00:00+00:00", ["event_based"])
    times = {"created_at", "updated_at", "started_at", "finished_at"}
    record = RunRecord.from_document("run1", {k: v for k, v in fields.items() if k not in times})
    assert (record.storage_class, record.holds) == ("ARCHIVE", ["event_based"])


# -- the daemon: holds in place before a run folder is moved ------------------------------------


def _daemon_config(tmp_path: Path, bucket: str) -> Path:
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({
        "watchdir": str(tmp_path / "watch"), "completed_runs_dir": str(tmp_path / "completed"),
        "sqlite_db": str(tmp_path / "sruns.db"), "gcp_bucket_name": bucket, "gcp_bucket_basedir": PREFIX,
        "cycle_pause_sec": 1, "sentinal_file_age_minutes": 0, "threads": 2, "chunk_size": CHUNK,
        "retain_days": 7, "event_based_hold": True,
    }))
    return conf


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_daemon_moves_a_run_folder_only_once_its_archive_holds_are_in_place(
    gcs, gcs_fields, tmp_path: Path
) -> None:
    import make_fake_run

    run = tmp_path / "watch" / "240101_M00001_0001_000000000-HOLDS"
    make_fake_run.make_run(run, "miseq", 2 << 20, seed=5)
    copy = tree(run)
    conf = _daemon_config(tmp_path, gcs.bucket)
    with FaultProxy(gcs.url) as proxy:
        proc = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path,
                       env={"STORAGE_EMULATOR_HOST": proxy.url})
        patches = [e for e in proxy.exchanges("patch") if "eventBasedHold" in (e.json() or {})]
    assert proc.returncode == 0, proc.stderr
    row = journal_row(tmp_path / "sruns.db", run.name)
    assert row["status"] == "complete" and row["moved_at"] and not run.exists()
    assert tree(tmp_path / "completed" / run.name) == copy
    kept = gcs.resource(_blob(run))
    assert kept["eventBasedHold"] and kept["retention"]["mode"] == "Unlocked"
    # The hold and retention were asked for (and answered) before the folder was moved.
    (patch,) = patches
    assert patch.status == 200 and patch.at < row["moved_at"]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_daemon_leaves_a_run_folder_whose_archive_did_not_keep_its_hold(gcs, tmp_path: Path) -> None:
    # The real emulator drops the hold GCS would keep: the run is not archived, not moved.
    import make_fake_run

    run = tmp_path / "watch" / "240101_M00001_0001_000000000-NOHLD"
    make_fake_run.make_run(run, "miseq", 2 << 20, seed=6)
    copy = tree(run)
    proc = run_cli("monitor", "--config", str(_daemon_config(tmp_path, gcs.bucket)), "--once", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = journal_row(tmp_path / "sruns.db", run.name)
    assert row["status"] != "complete" and "reports no retention, no event-based hold" in row["last_error"]
    assert not row["moved_at"] and tree(run) == copy
    assert not (tmp_path / "completed" / run.name).exists()


def test_an_autoclass_bucket_is_refused_once_a_class_is_asked_for(gcs, make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 1 << 20)
    # The emulator has no Autoclass: the proxy answers the bucket's settings as GCS would.
    settings = {"kind": "storage#bucket", "name": gcs.bucket, "storageClass": "STANDARD",
                "autoclass": {"enabled": True, "toggleTime": "2026-01-01T00:00:00Z"}}
    with FaultProxy(gcs.url) as proxy:
        proxy.add(Fault("status", status=200, target="other", body=json.dumps(settings).encode(), times=100))
        proc = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", tmp_path / "sruns.db", tmp_path,
                        "--storage-class", "ARCHIVE", env={"STORAGE_EMULATOR_HOST": proxy.url})
        asked = [e.path.split("?")[0] for e in proxy.exchanges("other")]
    assert proc.returncode == 1
    assert asked == [f"/storage/v1/b/{gcs.bucket}"]
    (line,) = proc.stderr.strip().splitlines()
    assert line == (f"sruns-stream: error: {run.name}: bucket {gcs.bucket!r} has Autoclass, which ignores the "
                    "storage class asked for (ARCHIVE) and moves every object read back to STANDARD: leave "
                    "storage_class unset there, or archive to a bucket without Autoclass")
    assert gcs.names() == []


def test_a_class_asked_for_in_a_cold_default_bucket_keeps_several_streams_with_standard_parts(
    gcs, make_run, tmp_path: Path
) -> None:
    # The emulator's buckets are STANDARD: the proxy answers the bucket's settings (read
    # twice: Autoclass, then the parts' constraints) as GCS would for a COLDLINE default.
    run = _big_run(make_run)
    settings = {"kind": "storage#bucket", "name": gcs.bucket, "storageClass": "COLDLINE"}
    with FaultProxy(gcs.url) as proxy:
        proxy.add(Fault("status", status=200, target="other", body=json.dumps(settings).encode(), times=2))
        proc = _archive(run, f"gs://{gcs.bucket}/{PREFIX}", tmp_path / "sruns.db", tmp_path, "--streams", "2",
                        "--storage-class", "STANDARD", env={"STORAGE_EMULATOR_HOST": proxy.url})
        creates = proxy.exchanges("create")
        answered = [e for e in proxy.exchanges("other") if e.fault == "status"]
    assert proc.returncode == 0, proc.stderr
    assert len(answered) == 2 and all(e.path.split("?")[0] == f"/storage/v1/b/{gcs.bucket}" for e in answered)
    assert json.loads(proc.stdout)["streams"] == 2 and "one upload stream" not in proc.stderr
    assert len(creates) >= 2 and all(e.json()["storageClass"] == "STANDARD" for e in creates)
    assert gcs.resource(_blob(run))["storageClass"] == "STANDARD"
    assert gcs.names() == sorted([_blob(run), _blob(run, ".manifest.tsv"), _blob(run, ".index.tsv"),
                                  _blob(run, ".tar.gz.gzidx"), _blob(run, ".tar.gz.index.sqlite")])
