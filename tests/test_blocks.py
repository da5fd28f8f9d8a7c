"""Blocks assembled on their own, on many threads and in any order, are exactly the
blocks the sequential reader reads: the same bytes, stored runs, finished members with
their crc32c and cursor at the end, from the start and from inside a member (a resume).
The oracle is `TarReader` (one thread, one member at a time) and, for the crc32c,
google_crc32c over each file read whole here."""

from __future__ import annotations

import gzip
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import google_crc32c
import pytest

from sruns_stream.archiver.blockgzip import GzipCodec, _Running, compressed_stream
from sruns_stream.archiver.blocks import Assembler
from sruns_stream.archiver.tarstream import TarLayout, TarReader
from sruns_stream.errors import RunFolderChanged
from sruns_stream.runfolder.scan import scan_run_folder
from sruns_stream.state.checkpoint import Checkpoint, Cursor

BLOCK = 64 * 1024


def _run(tmp_path: Path) -> Path:
    """Small files several to a block, empty ones, links, directories, a long name, and
    files spanning many blocks, compressible, random and gzip (stored by magic)."""
    run = tmp_path / "240101_M00001_0001_000000000-BLOCK"
    rng = random.Random(5)
    for d in range(4):
        (run / f"d{d}").mkdir(parents=True)
        for f in range(120):
            (run / f"d{d}" / f"f{f:03d}.bcl").write_bytes(rng.randbytes(rng.randint(0, 3000)))
    (run / "d1" / "empty").write_bytes(b"")
    os.symlink("d1/empty", run / "link")
    (run / "big").mkdir()
    (run / "big" / "random.bin").write_bytes(rng.randbytes(5 * BLOCK + 123))
    (run / "big" / "text.tsv").write_bytes(b"ACGT\tN\n" * 60_000)
    (run / "big" / "packed.dat").write_bytes(gzip.compress(rng.randbytes(300_000), 1))  # stored by magic
    (run / "big" / ("x" * 150 + ".cbcl")).write_bytes(rng.randbytes(BLOCK * 2 + 1))  # pax name, stored by name
    (run / "RunInfo.xml").write_text("<RunInfo/>")
    return run


def _serial(layout: TarLayout, start: int = 0, cursor=None) -> list:
    with TarReader(layout, start, cursor, store_precompressed=True) as reader:
        return list(reader.blocks(BLOCK))


@pytest.mark.parametrize("threads", [1, 4])
def test_assembled_blocks_are_the_serial_reader_s_blocks(tmp_path: Path, threads: int) -> None:
    run = _run(tmp_path)
    layout = TarLayout(scan_run_folder(run))
    big = next(i for i, e in enumerate(layout.manifest.entries) if e.path.endswith(b"random.bin"))
    inside = layout.data_span(big)[0] + 3 * BLOCK // 2
    inside -= inside % BLOCK  # a resume starts at a block boundary, here inside a member's data
    for start in (0, inside):
        at_start = _cursor_at(layout, start)  # the member there and its crc32c so far, as a checkpoint has them
        expected = _serial(layout, start, at_start)
        assembler = Assembler(layout, store_precompressed=True)
        offsets = list(range(start, layout.size, BLOCK))
        order = list(range(len(offsets)))
        random.Random(threads).shuffle(order)  # any order, any thread: no block depends on another
        with ThreadPoolExecutor(threads) as pool:
            futures = {k: pool.submit(assembler.assemble, offsets[k], BLOCK) for k in order}
            got = [futures[k].result() for k in range(len(offsets))]
        running = _Running(Checkpoint(start, 0, 0, 0, at_start))
        try:
            for mine, theirs in zip(got, expected, strict=True):
                assert bytes(mine.data) == bytes(theirs.data)
                assert mine.stored == theirs.stored
                files_done, cursor = running.members(mine)
                assembler.finished(mine)
                assert files_done == theirs.files_done
                assert cursor == theirs.cursor
        finally:
            assembler.close()
    # And the crc32c of every file, against the file read whole.
    whole = {i: google_crc32c.value((run.parent / e.path.decode()).read_bytes())
             for i, e in enumerate(layout.manifest.entries) if e.kind == "f"}
    done = dict(p for b in _serial(layout) for p in b.files_done)
    assert done == whole


def _cursor_at(layout: TarLayout, offset: int):
    """The cursor a checkpoint at ``offset`` holds: the serial reader's after reading up to it."""
    if offset == 0:
        return Cursor()
    with TarReader(layout) as reader:
        while reader.pos < offset:
            block = reader.read_block(min(BLOCK, offset - reader.pos))
    return block.cursor


def test_the_parallel_stream_is_byte_identical_to_the_serial_one(tmp_path: Path) -> None:
    run = _run(tmp_path)
    layout = TarLayout(scan_run_folder(run))
    codec = GzipCodec(1, auto=True)
    with TarReader(layout, store_precompressed=True) as reader:
        serial = list(compressed_stream(codec, reader.blocks(BLOCK), Checkpoint.start(), b"", layout.size, 2))
    assembler = Assembler(layout, store_precompressed=True)
    try:
        with ThreadPoolExecutor(3) as pool:
            parallel = list(compressed_stream(codec, assembler.planned(pool, 0, layout.size, BLOCK, 2),
                                              Checkpoint.start(), b"", layout.size, 2, taken=assembler.finished))
    finally:
        assembler.close()
    assert b"".join(c.data for c in parallel) == b"".join(c.data for c in serial)
    assert [c.checkpoint for c in parallel] == [c.checkpoint for c in serial]  # crc32, crc32c, cursor, window
    assert [c.files_done for c in parallel] == [c.files_done for c in serial]
    assert gzip.decompress(b"".join(c.data for c in parallel)) == b"".join(bytes(b.data) for b in _serial(layout))


def test_a_member_changed_between_its_pieces_is_caught(tmp_path: Path) -> None:
    """A file spanning blocks is checked before its first piece and after its last, on
    one shared descriptor: a rewrite between two pieces is a changed folder."""
    run = _run(tmp_path)
    layout = TarLayout(scan_run_folder(run))
    big = next(i for i, e in enumerate(layout.manifest.entries) if e.path.endswith(b"random.bin"))
    lo, hi = layout.data_span(big)
    first = lo - lo % BLOCK
    assembler = Assembler(layout, store_precompressed=False)
    try:
        blocks = [assembler.assemble(first, BLOCK)]
        path = run / "big" / "random.bin"
        st = path.stat()
        path.write_bytes(b"\0" * st.st_size)  # same size; mtime and ctime move
        with pytest.raises(RunFolderChanged, match="random.bin"):
            offset = first + BLOCK
            while offset < hi:
                blocks.append(assembler.assemble(offset, BLOCK))
                offset += BLOCK
            for block in blocks:
                assembler.finished(block)
    finally:
        assembler.close()
