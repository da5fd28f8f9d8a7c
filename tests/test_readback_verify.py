"""`readback.verify`: an archive read back as a stream and checked member by member,
against its manifest and, with --against, the run folder (never leaving it).

Archives are made by the real `sruns-stream archive` (a subprocess) to a local directory
or to the in-process GCS emulator. Damage is applied to the stored bytes; the report must
name the member it hit.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from helpers import run_cli, run_in_process
from readback_helpers import RUN, archive, copy_archive, flip, one_run_archived_twice, verified

from sruns_stream.state.journal import Journal


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return one_run_archived_twice(tmp_path_factory.mktemp("verify"))


@pytest.mark.timeout(60)
def test_good_local_archive_matches_its_manifest_and_the_run_folder(made: dict[str, Path]) -> None:
    for kind in ("gz", "tar"):
        report = verified(str(made[kind]), against=made["run"])
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
    assert verified(str(made["gz"].parent)).ok


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_good_gcs_archive_verifies_by_url_and_by_run_name(made: dict[str, Path], gcs, tmp_path: Path) -> None:
    # The subprocess inherits STORAGE_EMULATOR_HOST from the gcs fixture.
    result = archive(made["run"], f"gs://{gcs.bucket}/p", tmp_path)
    url = f"gs://{gcs.bucket}/p/{RUN}/{RUN}.tar.gz"
    report = verified(url, against=made["run"])
    assert report.ok, report.problems
    assert report.source == url and report.manifest == f"gs://{gcs.bucket}/p/{RUN}/{RUN}.manifest.tsv"
    assert report.archive_bytes == result["archive_bytes"]
    # The run's name, found through the journal the archive was recorded in.
    journal = Journal(tmp_path / "sruns.db")
    try:
        by_name = verified(RUN, journal=journal)
    finally:
        journal.close()
    assert by_name.ok and by_name.source == url


@pytest.mark.timeout(60)
def test_flipped_data_byte_in_a_plain_tar_names_the_member(made: dict[str, Path], tmp_path: Path) -> None:
    archive = copy_archive(made["tar"], tmp_path)
    member = f"{RUN}/RunInfo.xml"
    with tarfile.open(archive) as tf:  # oracle: where the member's data starts
        info = tf.getmember(member)
    flip(archive, info.offset_data + info.size // 2)
    report = verified(str(archive))
    assert not report.ok
    assert report.problem_count == 1 and report.mismatched == 1 and report.damaged
    # No stream checksum: the member's data is the evidence, and it is named as the damage.
    assert report.problems[0].startswith(f"damaged archive: {member}: crc32c ")


@pytest.mark.timeout(60)
def test_truncated_local_archive_is_reported_with_the_member_it_cut(made: dict[str, Path], tmp_path: Path) -> None:
    for kind in ("gz", "tar"):
        archive = copy_archive(made[kind], tmp_path / kind)
        data = archive.read_bytes()
        archive.write_bytes(data[: len(data) // 2])
        report = verified(str(archive))
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


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_truncated_gcs_object_is_reported(made: dict[str, Path], gcs, tmp_path: Path) -> None:
    archive(made["run"], f"gs://{gcs.bucket}/p", tmp_path)
    name = f"p/{RUN}/{RUN}.tar.gz"
    data = gcs.download(name)
    _put_object(gcs, name, data[: len(data) - 1000])  # the gzip trailer and the tar's end are gone
    report = verified(f"gs://{gcs.bucket}/{name}")
    assert not report.ok and report.damaged
    assert "truncated" in report.problems[0] and RUN in report.problems[0]


@pytest.mark.timeout(60)
def test_manifest_listing_a_file_the_archive_lacks(made: dict[str, Path], tmp_path: Path) -> None:
    archive = copy_archive(made["gz"], tmp_path)
    manifest = archive.with_name(f"{RUN}.manifest.tsv")
    with manifest.open("a") as f:
        f.write(f"{RUN}/Data/not_archived.bin\t10\t0000abcd\tf\t0644\t1704067200\t\t0\n")
    report = verified(str(archive))
    assert not report.ok
    assert report.missing == 1 and report.problem_count == 1
    assert report.problems == [f"{RUN}/Data/not_archived.bin: listed in the manifest, missing from the archive"]


@pytest.mark.timeout(60)
def test_manifest_without_a_member_reports_it_as_extra(made: dict[str, Path], tmp_path: Path) -> None:
    archive = copy_archive(made["gz"], tmp_path)
    manifest = archive.with_name(f"{RUN}.manifest.tsv")
    lines = manifest.read_text(errors="surrogateescape").splitlines(keepends=True)
    kept = "".join(line for line in lines if not line.startswith(f"{RUN}/RunInfo.xml\t"))
    manifest.write_text(kept, errors="surrogateescape")
    report = verified(str(archive))
    assert report.extra == 1 and report.problems == [f"{RUN}/RunInfo.xml: in the archive, not in the manifest"]


@pytest.mark.timeout(60)
def test_against_reports_what_changed_on_disk(made: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / RUN
    shutil.copytree(made["run"], run, symlinks=True)
    (run / "RunInfo.xml").write_bytes((run / "RunInfo.xml").read_bytes().replace(b"Run", b"Rum", 1))
    (run / "late_file.txt").write_text("written after the archive")
    (run / "link_to_runinfo").unlink()
    os.symlink("RunParameters.xml", run / "link_to_runinfo")
    report = verified(str(made["gz"]), against=run)
    assert not report.ok
    assert report.matched == report.members  # the archive itself is fine
    assert report.disk_mismatched == 2 and report.disk_extra == 1
    text = "\n".join(report.problems)
    assert f"{RUN}/RunInfo.xml: crc32c " in text and "on disk" in text
    assert f"{RUN}/link_to_runinfo: links to 'RunInfo.xml' in the archive, to 'RunParameters.xml' on disk" in text
    assert f"{RUN}/late_file.txt: on disk" in text and "not in the archive" in text


# --- the CLI (the lead wires `verify` into cli.py) ---------------------------------------


@pytest.mark.timeout(60)
def test_cli_verify_exit_codes_and_json(made: dict[str, Path], tmp_path: Path) -> None:
    good = run_in_process("verify", str(made["gz"]), "--against", str(made["run"]), cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("OK: ")

    archive = copy_archive(made["tar"], tmp_path)
    member = f"{RUN}/RunInfo.xml"
    with tarfile.open(archive) as tf:
        info = tf.getmember(member)
    flip(archive, info.offset_data + 3)
    bad = run_in_process("verify", str(archive), "--json", cwd=tmp_path)
    assert bad.returncode == 1, bad.stderr
    doc = json.loads(bad.stdout)
    assert doc["ok"] is False and doc["problems"][0].startswith(f"damaged archive: {member}: crc32c ")

    missing = run_in_process("verify", str(tmp_path / "none.tar.gz"), cwd=tmp_path)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr == (
        f"sruns-stream: error: no archive at {tmp_path / 'none.tar.gz'} (nothing there): check the path\n"
    )

    scheme = run_in_process("verify", "gs:/bucket/run.tar.gz", cwd=tmp_path)
    assert scheme.returncode == 2 and scheme.stderr.count("\n") == 1, scheme.stderr
    assert "is not a source sruns-stream reads" in scheme.stderr
    assert "gs://BUCKET/PREFIX/RUN/RUN.tar.gz" in scheme.stderr


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

    report = verified(str(made["gz"]), against=run)

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
        for name, data in (
            ("run", None), ("run/../secret.txt", b"secret"), (str(tmp_path / "x" / "secret.txt"), b"secret")
        ):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE if data is None else tarfile.REGTYPE
            info.size = len(data or b"")
            tf.addfile(info, io.BytesIO(data) if data is not None else None)

    report = verified(str(crafted), against=run)

    unsafe = [p for p in report.problems if p.endswith(": unsafe name: not compared with the disk")]
    assert unsafe == ["run/../secret.txt: unsafe name: not compared with the disk",
                      f"{tmp_path / 'x' / 'secret.txt'}: unsafe name: not compared with the disk"], report.problems
    assert report.disk_mismatched == 2


# --- every problem, the flags, the checksum as gcloud shows it (issue 14) -----------------


@pytest.mark.timeout(60)
def test_cli_lists_every_problem_up_to_the_limit_and_counts_the_rest(made: dict[str, Path], tmp_path: Path) -> None:
    from sruns_stream.readback.report import MAX_PROBLEMS

    archive = copy_archive(made["gz"], tmp_path)
    manifest = archive.with_name(f"{RUN}.manifest.tsv")
    absent = [f"{RUN}/Data/not_archived_{i:02d}.bin" for i in range(MAX_PROBLEMS + 5)]
    with manifest.open("a") as f:
        for path in absent:
            f.write(f"{path}\t10\t0000abcd\tf\t0644\t1704067200\t\t0\n")
    text = run_in_process("verify", str(archive), cwd=tmp_path)
    assert text.returncode == 1, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == (f"FAILED: {archive}: {len(absent)} problems; first: {absent[0]}: "
                        "listed in the manifest, missing from the archive")
    assert lines[1:MAX_PROBLEMS] == [f"  - {p}: listed in the manifest, missing from the archive"
                                     for p in absent[1:MAX_PROBLEMS]]
    assert lines[MAX_PROBLEMS:] == [f"  … and 5 more (only the first {MAX_PROBLEMS} are listed)"]

    doc = json.loads(run_in_process("verify", str(archive), "--json", cwd=tmp_path).stdout)
    assert doc["problem_count"] == len(absent) and doc["missing"] == len(absent)
    assert doc["problems"] == [f"{p}: listed in the manifest, missing from the archive" for p in absent[:MAX_PROBLEMS]]
    assert doc["damaged"] is False  # the archive's bytes are intact (its gzip CRC32 checks out)


@pytest.mark.timeout(60)
def test_cli_json_says_damaged_for_altered_bytes_and_gives_crc32c_as_gcloud_does(
    made: dict[str, Path], tmp_path: Path
) -> None:
    import base64

    import google_crc32c

    good = json.loads(run_in_process("verify", str(made["gz"]), "--json", cwd=tmp_path).stdout)
    crc = google_crc32c.value(made["gz"].read_bytes())
    assert good["ok"] is True and good["damaged"] is False
    assert good["crc32c"] == f"{crc:08x}"
    assert good["crc32c_base64"] == base64.b64encode(crc.to_bytes(4, "big")).decode()
    text = run_in_process("verify", str(made["gz"]), cwd=tmp_path).stdout
    assert f"crc32c {crc:08x} (base64 {good['crc32c_base64']})" in text

    # A byte of a CBCL file, which `auto` stores verbatim: the gzip stream still inflates.
    archive = copy_archive(made["gz"], tmp_path)
    cbcl = sorted(made["run"].rglob("*.cbcl"))[3].read_bytes()
    at = archive.read_bytes().find(cbcl[len(cbcl) // 2 : len(cbcl) // 2 + 48])
    assert at > 0
    flip(archive, at + 24)
    bad = run_in_process("verify", str(archive), "--json", cwd=tmp_path)
    assert bad.returncode == 1
    doc = json.loads(bad.stdout)
    assert doc["ok"] is False and doc["damaged"] is True and doc["mismatched"] == 1
    assert doc["problem_count"] == len(doc["problems"]) == 2  # the member's crc32c and the gzip CRC32
    # The member's crc32c is found first, but the damage is named first, as the README says.
    assert doc["problems"][0].startswith(f"damaged archive: {archive}: the gzip CRC32 is "), doc["problems"]
    assert doc["problems"][0].endswith(": the compressed bytes were altered")
    assert doc["problems"][1].startswith(f"{RUN}/") and ".cbcl: crc32c " in doc["problems"][1]
    line = run_cli("verify", str(archive), cwd=tmp_path)  # a real process, its text output
    assert line.returncode == 1
    assert line.stdout.startswith(f"FAILED: {archive}: 2 problems; first: damaged archive: {archive}: the gzip CRC32 ")

    # A plain tar has no stream checksum: a member's data unlike its manifest row is the evidence.
    tar = copy_archive(made["tar"], tmp_path / "tar")
    with tarfile.open(tar) as tf:
        info = tf.getmember(f"{RUN}/RunInfo.xml")
    flip(tar, info.offset_data + 3)
    assert json.loads(run_in_process("verify", str(tar), "--json", cwd=tmp_path).stdout)["damaged"] is True
