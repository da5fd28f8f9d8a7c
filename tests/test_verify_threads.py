"""`verify --threads N` checksums members on the inflating workers (where the manifest
places them) and the walk only combines: the report is the one a single thread gives,
byte for byte, and a flipped byte in a member spanning access points is still named.
Oracle: `verify --threads 1` (one thread checksums every byte itself) and gzip -t."""

from __future__ import annotations

import json
import os
import random
import subprocess
from itertools import pairwise
from pathlib import Path

import pytest
from helpers import run_in_process, tree

from sruns_stream.storage.manifest_tsv import parse


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "240101_M00001_0001_000000000-VTHRD"
    rng = random.Random(9)
    for d in range(3):
        (run / f"d{d}").mkdir(parents=True)
        for f in range(200):
            (run / f"d{d}" / f"f{f:03d}.txt").write_bytes(b"ACGT" * rng.randint(0, 900))
    (run / "big.bin").write_bytes(rng.randbytes(700_000))  # spans several access points
    (run / "RunInfo.xml").write_text("<RunInfo/>")
    return run


def _verify(archive: Path, threads: int, cwd: Path) -> tuple[int, dict]:
    proc = run_in_process("verify", str(archive), "--threads", str(threads), "--json", cwd=cwd)
    report = json.loads(proc.stdout)
    for key in ("cpu", "seconds"):
        report.pop(key, None)
    return proc.returncode, report


@pytest.fixture
def archived(tmp_path: Path) -> Path:
    run = _run(tmp_path)
    proc = run_in_process("archive", str(run), "--dest", str(tmp_path / "out"), "--journal", str(tmp_path / "j.db"),
                          "--block-size", "64K", "--access-interval", "128K", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return Path(json.loads(proc.stdout)["location"])


def test_many_threads_report_what_one_thread_reports(archived: Path, tmp_path: Path) -> None:
    assert subprocess.run(["gzip", "-t", str(archived)]).returncode == 0
    one = _verify(archived, 1, tmp_path)
    # The run's folder, its three folders, their 600 files, big.bin and RunInfo.xml.
    assert one[0] == 0 and one[1]["ok"] and one[1]["matched"] == 1 + 3 + 600 + 2
    for threads in (2, 3):
        assert _verify(archived, threads, tmp_path) == one


def test_a_flipped_byte_in_a_member_spanning_access_points_is_named(archived: Path, tmp_path: Path) -> None:
    manifest = archived.with_name(archived.name.replace(".tar.gz", ".manifest.tsv"))
    rows = {row.path: row for row in parse(manifest.read_bytes(), str(manifest)).values()}
    big = next(row for path, row in rows.items() if path.endswith("big.bin"))
    # Random data is stored (not deflated) in auto mode: the archive byte holding the
    # member's 400,000th data byte is found by inflating, so flip a stored byte instead:
    # the member's data, stored, appears verbatim in the archive.
    data = archived.read_bytes()
    member = (tmp_path / "240101_M00001_0001_000000000-VTHRD" / "big.bin").read_bytes()
    at = data.index(member[400_000:400_064])
    assert big.size == 700_000
    with open(archived, "r+b") as f:
        f.seek(at + 10)
        byte = f.read(1)
        f.seek(at + 10)
        f.write(bytes([byte[0] ^ 0x5A]))
    for threads in (1, 2):
        code, report = _verify(archived, threads, tmp_path)
        assert code == 1 and not report["ok"] and report["damaged"], threads
        assert any("big.bin" in p and "crc32c" in p for p in report["problems"]), report["problems"]
    os.unlink(archived)


def test_restore_on_threads_checks_each_member_with_the_workers_crc32c(archived: Path, tmp_path: Path) -> None:
    """Restore on two threads: the tree is the run folder's, byte for byte; with a byte
    flipped in big.bin's data (it spans access points), big.bin is removed, not restored."""
    run = tmp_path / "240101_M00001_0001_000000000-VTHRD"
    proc = run_in_process("restore", str(archived), str(tmp_path / "back"), "--threads", "2", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert tree(tmp_path / "back" / run.name) == tree(run)
    member = (run / "big.bin").read_bytes()
    data = bytearray(archived.read_bytes())
    data[data.index(member[400_000:400_064]) + 10] ^= 0x5A
    archived.write_bytes(bytes(data))
    proc = run_in_process("restore", str(archived), str(tmp_path / "again"), "--threads", "2", "--json", cwd=tmp_path)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["failed"] == 1 and any("big.bin" in p and "removed" in p for p in report["problems"])
    assert not (tmp_path / "again" / run.name / "big.bin").exists()
    assert (tmp_path / "again" / run.name / "RunInfo.xml").read_bytes() == (run / "RunInfo.xml").read_bytes()


def test_hints_from_a_lying_manifest_never_decide_a_checksum() -> None:
    """Spans from a manifest whose rows overlap or run backwards are dropped: every span
    kept is in order and apart, so the workers checksum all of any member the walk
    takes a hint for (`within` finds every span a piece overlaps)."""
    from sruns_stream.readback.pgunzip import MemberSpans

    # (header offset, size), sorted by offset as the walk sorts them: a member larger
    # than the room before the next row, rows close together, a last one.
    spans = MemberSpans([(0, 10_000_000), (512, 100), (2048, 50), (4096, 0), (20_000_000, 700)], None)
    assert all(a + spans.sizes[a] <= b for a, b in pairwise(spans.starts))
    for lo in range(0, 21_000_000, 999_983):
        hits = spans.within(lo, lo + 999_983)
        every = [(a, a + spans.sizes[a]) for a in spans.starts if a < lo + 999_983 and a + spans.sizes[a] > lo]
        assert hits == every
