"""`readback.pieces` and `readback.mount.MountedRun` without FUSE: the pieces between access
points, their checks and cache, and a file's check before its first byte.

Oracles: Python's gzip reading the whole archive (the raw tar stream), the run folder's
bytes, and an archive altered on disk between two fetches.
"""

from __future__ import annotations

import errno
import gzip
import random
from pathlib import Path

import pytest
from test_read_indexes import RUN, _archive
from test_read_indexes import run as run  # noqa: F401 - the fixture, shared

from sruns_stream.readback.locate import resolve_source
from sruns_stream.readback.mount import MountedRun
from sruns_stream.readback.pieces import PieceDamaged, Pieces
from sruns_stream.readback.reindex import basis


@pytest.fixture
def archived(run: Path, tmp_path: Path) -> Path:  # noqa: F811 - the shared fixture
    _archive(run, str(tmp_path / "dest"), tmp_path)
    return tmp_path / "dest" / RUN / f"{RUN}.tar.gz"


def _open(archive: Path, cache: int = 64 << 20) -> tuple[Pieces, MountedRun, list[str]]:
    src = resolve_source(str(archive), None, None)
    b = basis(src, src.read_manifest(), None)
    pieces = Pieces(src, b.points, b.raw_size, cache_bytes=cache, workers=2)
    lines: list[str] = []
    return pieces, MountedRun(src, b.rows, pieces, lines.append), lines


def test_pieces_give_the_tar_stream_byte_exact_with_a_bounded_cache(archived: Path) -> None:
    with gzip.open(archived) as f:
        raw = f.read()
    pieces, _, _ = _open(archived, cache=1 << 20)  # smaller than one piece: every piece fetched again
    try:
        rng = random.Random(2)
        for _ in range(40):
            at = rng.randrange(len(raw))
            n = rng.randrange(1, 3 << 20)
            assert pieces.read(at, min(len(raw), at + n)) == raw[at : at + n]
        assert pieces.fetched > archived.stat().st_size  # pieces were evicted and fetched again
    finally:
        pieces.close()


def test_a_piece_fetched_again_with_other_bytes_is_damage(archived: Path) -> None:
    pieces, _, _ = _open(archived, cache=1 << 20)
    try:
        first = pieces.get(3)
        pieces.get(4)  # pushes piece 3 out of the 1 MiB cache
        lo_archive = pieces._archive[3]  # the archive offset of point 3
        data = bytearray(archived.read_bytes())
        data[lo_archive + 5000] ^= 0x40
        archived.write_bytes(bytes(data))
        with pytest.raises(PieceDamaged) as info:
            again = pieces.get(3)
            assert again == first  # never reached with other bytes
        assert "piece 3" in str(info.value)
    finally:
        pieces.close()


def test_a_file_is_checked_whole_before_its_first_byte(archived: Path, run: Path) -> None:
    name = f"{RUN}/InterOp/TileMetrics.bin"  # incompressible: stored blocks, inflate cannot notice
    original = (run.parent / name).read_bytes()
    data = bytearray(archived.read_bytes())
    at = data.find(original[200_000:200_064])
    assert at > 0
    data[at] ^= 0x01
    archived.write_bytes(bytes(data))
    pieces, mounted, lines = _open(archived)
    try:
        node = mounted.lookup("/InterOp/TileMetrics.bin")
        for offset in (0, 150_000):  # bytes before the flipped one are not served either
            with pytest.raises(OSError) as info:
                mounted.read(node, offset, 4096, sequential=False)
            assert info.value.errno == errno.EIO
        assert len(lines) == 1 and "InterOp/TileMetrics.bin" in lines[0] and "crc32c" in lines[0]
        ok = mounted.lookup("/RunInfo.xml")
        assert mounted.read(ok, 0, 1 << 20, sequential=True) == (run / "RunInfo.xml").read_bytes()
    finally:
        pieces.close()
