"""The indexes other tools read, beside every archive: ``<archive>.gzidx`` (indexed_gzip,
rapidgzip) and ``<archive>.index.sqlite`` (ratarmount).

Oracles: the tools themselves, unmodified from PyPI (what they read with our index is
compared with the run folder's bytes and with Python's gzip reading the whole archive),
Python's tarfile for where each member's data is, and the access index parsed here.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from helpers import run_in_process, tree, wait_until

RUN = "241128_M00001_0043_000000000-INDEX"
ACCESS = ("--block-size", "256K", "--access-interval", "1M")
INTERVAL = 1 << 20


@pytest.fixture
def run(tmp_path: Path) -> Path:
    rng = random.Random(3)
    root = tmp_path / "runs" / RUN
    (root / "Data" / "Intensities" / "L001").mkdir(parents=True)
    (root / "InterOp").mkdir()
    (root / "RunInfo.xml").write_bytes(b'<?xml version="1.0"?>\n<RunInfo/>\n')
    words = b" ".join(b"cycle%d tile%d" % (rng.randrange(300), rng.randrange(2000)) for _ in range(400_000))
    for i in range(6):
        at = rng.randrange(len(words) // 2)
        (root / "Data" / "Intensities" / "L001" / f"C{i}.1.cbcl").write_bytes(words[at : at + 900_000 + i])
    (root / "Data" / "big.bin").write_bytes(words[: 4 << 20])
    (root / "InterOp" / "TileMetrics.bin").write_bytes(rng.randbytes(300_000))  # stored blocks
    (root / "empty.txt").write_bytes(b"")
    os.symlink("RunInfo.xml", root / "RunInfo.link")
    return root


def _archive(run: Path, dest: str, cwd: Path, *extra: str) -> dict[str, Any]:
    proc = run_in_process("archive", str(run), "--not-finished", "--dest", dest, "--journal", str(cwd / "sruns.db"),
                          "--json", *ACCESS, *extra, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _points(index_tsv: bytes) -> list[tuple[int, int]]:
    """The access points, parsed here: (raw, archive) per line after the header."""
    return [tuple(int(v) for v in line.split("\t")) for line in index_tsv.decode().splitlines()[1:]]  # type: ignore[misc]


def _members(archive: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(archive) as tar:
        return {m.name: m for m in tar.getmembers()}


class Counting(io.RawIOBase):
    """A file that counts the bytes read from it: what a tool fetched."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self.f.readinto(b)
        self.read_bytes += n or 0
        return n or 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def close(self) -> None:
        self.f.close()
        super().close()


def _span(points: list[tuple[int, int]], start: int, end: int, size: int) -> int:
    """Compressed bytes from the access point before raw ``start`` to the second point
    after raw ``end``: what reading [start, end) may cost, the target's "the member + 2
    access intervals"."""
    before = max(a for r, a in points if r <= start)
    after = [a for r, a in points if r >= end]
    return (after[1] if len(after) > 1 else size) - before


@pytest.fixture
def archived(run: Path, tmp_path: Path) -> Path:
    _archive(run, str(tmp_path / "dest"), tmp_path)
    return tmp_path / "dest" / RUN / f"{RUN}.tar.gz"


def test_the_indexes_land_beside_the_archive_and_gzidx_is_the_access_index(archived: Path) -> None:
    from sruns_stream.storage import gzidx

    points = _points(archived.with_name(f"{RUN}.index.tsv").read_bytes())
    parsed = gzidx.parse(Path(f"{archived}.gzidx").read_bytes(), "test")
    assert [(p.raw, p.archive) for p in parsed.points] == points and len(points) > 5
    assert parsed.compressed_size == archived.stat().st_size
    with gzip.open(archived) as f:
        assert parsed.uncompressed_size == len(f.read())
    assert Path(f"{archived}.index.sqlite").stat().st_size > 0


def test_indexed_gzip_seeks_to_members_with_our_index_reading_about_the_member(archived: Path, run: Path) -> None:
    indexed_gzip = pytest.importorskip("indexed_gzip")  # the test extra installs it; CI has it
    points = _points(archived.with_name(f"{RUN}.index.tsv").read_bytes())
    size = archived.stat().st_size
    for name, m in _members(archived).items():
        if not m.isfile() or not m.size:
            continue
        counting = Counting(archived)
        f = indexed_gzip.IndexedGzipFile(fileobj=counting, readbuf_size=64 << 10, buffer_size=64 << 10)
        try:
            f.import_index(f"{archived}.gzidx")
            f.seek(m.offset_data)
            assert f.read(m.size) == (run.parent / name).read_bytes(), name
        finally:
            f.close()
        bound = _span(points, m.offset_data, m.offset_data + m.size, size) + (64 << 10)
        if m.offset_data > points[-1][0]:
            # Past the last point indexed_gzip inflates the tail up to three times (to find
            # where the stream ends, then for the read): still the tail, never the archive.
            bound = 3 * (size - points[-1][1])
        assert counting.read_bytes <= bound, name
        counting.close()


def test_rapidgzip_reads_random_ranges_byte_exact_with_our_index(archived: Path) -> None:
    rapidgzip = pytest.importorskip("rapidgzip")
    with gzip.open(archived) as f:
        raw = f.read()
    rng = random.Random(5)
    with rapidgzip.RapidgzipFile(str(archived), parallelization=1) as f, open(f"{archived}.gzidx", "rb") as idx:
        f.import_index(idx)
        for _ in range(30):
            at, n = rng.randrange(len(raw)), rng.randrange(1, 3 * INTERVAL)
            f.seek(at)
            assert f.read(n) == raw[at : at + n]


def _ratarmount() -> str:
    exe = shutil.which("ratarmount") or str(Path(sys.executable).parent / "ratarmount")
    if not Path(exe).exists():
        pytest.fail("ratarmount is not installed: pip install -e '.[test]'")
    return exe


def _unmount(mnt: Path) -> None:
    subprocess.run(["fusermount3", "-u", str(mnt)], check=False, capture_output=True)


@pytest.mark.slow
def test_ratarmount_mounts_with_our_index_and_reads_the_run(archived: Path, run: Path, tmp_path: Path) -> None:
    index = Path(f"{archived}.index.sqlite")
    before = index.read_bytes()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run([_ratarmount(), str(archived), str(mnt)], capture_output=True, text=True, timeout=120)
    try:
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout + proc.stderr
        assert f"Successfully loaded offset dictionary from {index}" in out, out
        assert "Creating offset dictionary" not in out and "Writing out TAR index" not in out, out
        assert "Warning" not in out, out
        assert tree(mnt / RUN) == tree(run)
    finally:
        _unmount(mnt)
    assert index.read_bytes() == before  # used as it is, not rebuilt


def test_from_gcs_the_indexes_are_blobs_beside_the_archive(gcs: Any, run: Path, tmp_path: Path) -> None:
    from sruns_stream.storage import gzidx, ratarmount_index

    _archive(run, f"gs://{gcs.bucket}/runs", tmp_path)
    base = f"runs/{RUN}/{RUN}.tar.gz"
    points = _points(gcs.download(f"runs/{RUN}/{RUN}.index.tsv"))
    parsed = gzidx.parse(gcs.download(f"{base}.gzidx"), "test")
    assert [(p.raw, p.archive) for p in parsed.points] == points
    assert parsed.compressed_size == int(gcs.resource(base)["size"])
    files, metadata, blobs = ratarmount_index.read_tables(gcs.download(f"{base}.index.sqlite"), "test")
    (tmp_path / "a.tar.gz").write_bytes(gcs.download(base))
    members = _members(tmp_path / "a.tar.gz")
    assert [(f"{p}/{n}".lstrip("/"), h, o) for p, n, h, o, *_ in files] == [
        (m.name, m.offset, m.offset_data) for m in members.values()]
    assert blobs == [gcs.download(f"{base}.gzidx")]
    assert json.loads(metadata["tarstats"]) == {"st_size": parsed.compressed_size}


def test_index_writes_the_same_files_for_an_archive_made_before(archived: Path, tmp_path: Path) -> None:
    from sruns_stream.storage import ratarmount_index

    gz, sq = Path(f"{archived}.gzidx"), Path(f"{archived}.index.sqlite")
    want_gz, want_sq = gz.read_bytes(), ratarmount_index.read_tables(sq.read_bytes(), "written by archive")
    gz.unlink()
    sq.unlink()
    proc = run_in_process("index", str(archived), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(gz), str(sq)]
    assert gz.read_bytes() == want_gz
    assert ratarmount_index.read_tables(sq.read_bytes(), "written by index") == want_sq


def test_index_of_an_archive_without_offsets_is_one_line_naming_why(archived: Path, tmp_path: Path) -> None:
    archived.with_name(f"{RUN}.index.tsv").unlink()
    proc = run_in_process("index", str(archived), cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "no access index at" in proc.stderr, proc.stderr


def test_verify_checks_the_indexes_beside_the_archive(archived: Path, tmp_path: Path) -> None:
    import sqlite3

    from readback_helpers import verified

    assert verified(str(archived)).ok
    gz = Path(f"{archived}.gzidx")
    good = gz.read_bytes()
    data = bytearray(good)
    data[-18] ^= 1  # the last point's compressed offset
    gz.write_bytes(bytes(data))
    report = verified(str(archived))
    assert not report.ok and any(f"{gz} is not the access index's points" in p for p in report.problems)
    gz.write_bytes(good)
    db = sqlite3.connect(f"{archived}.index.sqlite")
    db.execute("UPDATE files SET offset = offset + 512 WHERE name = 'big.bin'")
    db.commit()
    db.close()
    report = verified(str(archived))
    assert not report.ok and any("big.bin is listed as" in p for p in report.problems), report.problems


def test_index_writes_beside_a_gcs_archive(gcs: Any, run: Path, tmp_path: Path) -> None:
    from google.cloud import storage  # type: ignore[import-untyped]

    _archive(run, f"gs://{gcs.bucket}/runs", tmp_path)
    base = f"runs/{RUN}/{RUN}.tar.gz"
    want = {s: gcs.download(base + s) for s in (".gzidx", ".index.sqlite")}
    bucket = storage.Client(project="test", credentials=None).bucket(gcs.bucket)
    for s in want:
        bucket.blob(base + s).delete()
    proc = run_in_process("index", f"gs://{gcs.bucket}/{base}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [f"gs://{gcs.bucket}/{base}.gzidx", f"gs://{gcs.bucket}/{base}.index.sqlite"]
    assert gcs.download(base + ".gzidx") == want[".gzidx"]


@pytest.mark.slow
def test_ratarmount_mounts_a_gcs_archive_with_our_index_given_as_index_file(archived: Path, run: Path,
                                                                             tmp_path: Path) -> None:
    """ratarmount does not look beside a remote archive for its index (it builds one by
    reading the archive whole, into ~/.ratarmount): given ``--index-file gs://…`` it
    downloads ours and uses it. Through fsspec/gcsfs, from the loopback server."""
    pytest.importorskip("gcsfs")
    from loopback.gcs import LoopbackGcsServer

    with LoopbackGcsServer() as server:
        for f in archived.parent.iterdir():
            server.add_file("bkt", f"runs/{RUN}/{f.name}", f)
        url = f"gs://bkt/runs/{RUN}/{RUN}.tar.gz"
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        env = {**os.environ, "STORAGE_EMULATOR_HOST": server.url, "HOME": str(tmp_path)}
        proc = subprocess.Popen([_ratarmount(), "-f", "--index-file", f"{url}.index.sqlite", url, str(mnt)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            wait_until(lambda: (mnt / RUN).is_dir(), "ratarmount's mount", proc=proc)
            # (No bound on the bytes here: on an archive this small rapidgzip's prefetch
            # alone reads all of it; the benchmark measures ratarmount on a large one.)
            assert (mnt / RUN / "Data" / "big.bin").read_bytes() == (run / "Data" / "big.bin").read_bytes()
        finally:
            _unmount(mnt)
            out, _ = proc.communicate(timeout=60)
        assert f"Successfully loaded offset dictionary from {url}.index.sqlite" in out, out
        assert "Creating offset dictionary" not in out, out
        assert not (tmp_path / ".ratarmount").exists()
