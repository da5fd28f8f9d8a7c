"""Block gzip: one standard gzip member, identical bytes for any thread count, restartable."""

from __future__ import annotations

import gzip
import os
import random
import subprocess
import zlib
from pathlib import Path

import pytest

from sruns_stream.archiver.blockgzip import GzipCodec, PlainTarCodec, compressed_stream
from sruns_stream.archiver.tarstream import TarLayout, TarReader
from sruns_stream.runfolder.scan import scan_run_folder
from sruns_stream.state.checkpoint import WINDOW, Checkpoint
from sruns_stream.storage.gzipframe import HEADER, AccessPoint, point_raw

BLOCK = 64 * 1024


def _compressible(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"ACGT", k=rng.randint(3, 12))) for _ in range(300)]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


@pytest.fixture
def mixed_run(tmp_path: Path) -> Path:
    run = tmp_path / "RUN"
    (run / "L001" / "C1.1").mkdir(parents=True)
    (run / "InterOp").mkdir()
    (run / "InterOp" / "TileMetricsOut.bin").write_bytes(_compressible(700_000, 1))
    (run / "RunInfo.xml").write_bytes(_compressible(3000, 2))
    (run / "L001" / "C1.1" / "L001_1.cbcl").write_bytes(gzip.compress(_compressible(900_000, 3), 1))
    (run / "L001" / "C1.1" / "L001_2.cbcl").write_bytes(os.urandom(400_000))
    (run / "thumb.dat").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(50_000))  # JPEG by magic only
    return run


def _encode(run: Path, codec, threads: int, block: int = BLOCK) -> tuple[bytes, list]:
    layout = TarLayout(scan_run_folder(run))
    with TarReader(layout, store_precompressed=getattr(codec, "auto", False)) as reader:
        out = list(compressed_stream(codec, reader.blocks(block), Checkpoint.start(), b"", layout.size, threads))
    return b"".join(cb.data for cb in out), out


def _raw_tar(run: Path) -> bytes:
    layout = TarLayout(scan_run_folder(run))
    with TarReader(layout) as reader:
        return b"".join(bytes(b.data) for b in reader.blocks(1 << 20))


@pytest.mark.parametrize("auto", [False, True])
def test_same_bytes_for_1_2_and_4_threads(mixed_run: Path, auto: bool) -> None:
    outputs = {t: _encode(mixed_run, GzipCodec(1, auto), t)[0] for t in (1, 2, 4)}
    assert outputs[1] == outputs[2] == outputs[4]


@pytest.mark.parametrize("level", [1, 2, 3])
def test_output_is_one_gzip_member_that_gzip_reads(mixed_run: Path, tmp_path: Path, level: int) -> None:
    data, _ = _encode(mixed_run, GzipCodec(level, auto=False), 2)
    (tmp_path / "a.tar.gz").write_bytes(data)
    subprocess.run(["gzip", "-t", str(tmp_path / "a.tar.gz")], check=True)
    d = zlib.decompressobj(31)
    assert d.decompress(data) == _raw_tar(mixed_run)
    assert d.eof and d.unused_data == b""  # one member, nothing after it


def test_auto_stores_precompressed_members_and_still_round_trips(mixed_run: Path, tmp_path: Path) -> None:
    data, blocks = _encode(mixed_run, GzipCodec(1, auto=True), 2)
    layout = TarLayout(scan_run_folder(mixed_run))
    expected_stored = sum(
        e.size for e in layout.manifest.entries if e.path.endswith((b".cbcl", b"thumb.dat"))
    )
    assert sum(cb.stored_bytes for cb in blocks) == expected_stored
    assert gzip.decompress(data) == _raw_tar(mixed_run)
    (tmp_path / "auto.tar.gz").write_bytes(data)
    subprocess.run(["gzip", "-t", str(tmp_path / "auto.tar.gz")], check=True)
    # Stored data costs 5 bytes per 64 KiB; deflating it again would cost far more CPU for ~nothing.
    deflated_everything, _ = _encode(mixed_run, GzipCodec(1, auto=False), 2)
    assert len(data) < len(deflated_everything) * 1.02


def test_level_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="1, 2 or 3"):
        GzipCodec(0)


def test_restart_from_any_checkpoint_gives_the_same_suffix(mixed_run: Path) -> None:
    codec = GzipCodec(1, auto=True)
    whole, blocks = _encode(mixed_run, codec, 2)
    layout = TarLayout(scan_run_folder(mixed_run))
    for cb in blocks[1:-1:3]:
        cp = cb.checkpoint
        with TarReader(layout, max(0, cp.raw_offset - WINDOW)) as r:
            dictionary = r.read_range(min(WINDOW, cp.raw_offset))
        with TarReader(layout, cp.raw_offset, cp.cursor, store_precompressed=True) as reader:
            rest = list(compressed_stream(codec, reader.blocks(BLOCK), cp, dictionary, layout.size, 2))
        assert b"".join(c.data for c in rest) == whole[cp.gz_offset :]
        assert rest[-1].checkpoint == blocks[-1].checkpoint


def test_checkpoints_carry_crc32_of_raw_and_crc32c_of_output(mixed_run: Path) -> None:
    import google_crc32c

    data, blocks = _encode(mixed_run, GzipCodec(1, auto=True), 2)
    last = blocks[-1].checkpoint
    raw = _raw_tar(mixed_run)
    assert (last.raw_offset, last.gz_offset) == (len(raw), len(data))
    assert last.crc32 == zlib.crc32(raw)
    assert last.crc32c == google_crc32c.value(data)


def test_none_is_the_plain_tar(mixed_run: Path) -> None:
    data, _ = _encode(mixed_run, PlainTarCodec(), 2)
    assert data == _raw_tar(mixed_run)


@pytest.mark.parametrize("threads", [1, 3])
def test_access_points_are_where_the_rule_puts_them_and_inflate_alone(mixed_run: Path, threads: int) -> None:
    """Every access point the writer reports is at `gzipframe.point_raw` (k), and the
    archive inflates from its output offset with no history (no dictionary) to the raw
    tar from its raw offset: what the index promises a reader."""
    layout = TarLayout(scan_run_folder(mixed_run))
    interval = 3 * BLOCK + 1000  # not a multiple of the block: points fall on the first block after
    with TarReader(layout, store_precompressed=True) as reader:
        blocks = list(compressed_stream(GzipCodec(1, auto=True), reader.blocks(BLOCK), Checkpoint.start(), b"",
                                        layout.size, threads, access_interval=interval, block_size=BLOCK))
    data = b"".join(cb.data for cb in blocks)
    raw = _raw_tar(mixed_run)
    points = [cb.access_point for cb in blocks if cb.access_point is not None]
    assert all(isinstance(p, AccessPoint) for p in points)
    assert [p.raw for p in points] == [point_raw(k, BLOCK, interval) for k in range(len(points))]
    assert len(points) == -(-len(raw) // interval) > 3 and points[0] == AccessPoint(0, len(HEADER))
    for p in points:
        inflater = zlib.decompressobj(-15)
        assert inflater.decompress(data[p.archive :]) == raw[p.raw :]
        assert inflater.eof
