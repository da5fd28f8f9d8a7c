"""`readback.gunzip`: the gzip layer's own checks. A byte flipped in stored (deflate
"stored" block) data inflates fine, so only the member's crc32c and the gzip CRC32 can
notice; corrupt deflate data, bytes after the gzip stream and a file that is not gzip at
all are each reported.

Which member a flipped byte hit is decided by an oracle independent of the code under
test (zlib + Python's tarfile), and the report must name that member.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import google_crc32c
import pytest
from readback_helpers import RUN, copy_archive, flip, one_run_archived_twice, verified

from sruns_stream.readback.damage import MAX_EXTENDED, ArchiveDamaged
from sruns_stream.readback.gunzip import GzipLayer
from sruns_stream.readback.pgunzip import ParallelGzipLayer
from sruns_stream.storage.gzipframe import END_BLOCK, HEADER, AccessPoint, trailer


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return one_run_archived_twice(tmp_path_factory.mktemp("verify"))


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


@pytest.mark.timeout(60)
def test_flipped_byte_in_stored_cbcl_data_names_the_member(made: dict[str, Path], tmp_path: Path) -> None:
    archive = copy_archive(made["gz"], tmp_path)
    gz = archive.read_bytes()
    # `auto` stores CBCL bytes verbatim (deflate stored blocks): find a window of a CBCL
    # file in the compressed bytes and flip a byte in it. The gzip stream still inflates;
    # only the member's crc32c and the gzip CRC32 can notice.
    cbcl = sorted(made["run"].rglob("*.cbcl"))[5].read_bytes()
    window = cbcl[len(cbcl) // 2 : len(cbcl) // 2 + 48]
    at = gz.find(window)
    assert at > 0
    flip(archive, at + 24)
    changed = _changed_members(
        _inflate_ignoring_trailer(archive.read_bytes()), archive.with_name(f"{RUN}.manifest.tsv")
    )
    assert len(changed) == 1
    member = changed.pop()
    assert member.endswith(".cbcl")

    report = verified(str(archive))
    # The stream still inflates, but its bytes were altered: damaged (issue 14: it said not).
    assert not report.ok and report.damaged
    assert report.mismatched == 1 and report.missing == report.extra == 0
    assert any(p.startswith(f"{member}: crc32c ") and "in the manifest" in p for p in report.problems), report.problems
    assert any("gzip CRC32" in p for p in report.problems), report.problems
    # The damage first (issue 24: the member's crc32c, found first, was named first),
    # then the member it hit.
    assert report.summary().startswith(f"FAILED: {archive}: 2 problems; first: damaged archive: {archive}: the gzip "
                                       "CRC32 is ")
    assert report.problems[1].startswith(f"{member}: crc32c "), report.problems


@pytest.mark.timeout(60)
def test_corrupt_deflate_data_or_garbage_is_reported(made: dict[str, Path], tmp_path: Path) -> None:
    archive = copy_archive(made["gz"], tmp_path / "a")
    # The first KiBs are deflated (small text files): a flipped byte there breaks the
    # deflate stream or the tar headers it carries; either way the stream stops early.
    flip(archive, 2000)
    report = verified(str(archive))
    assert not report.ok
    assert report.damaged or report.mismatched or report.extra

    garbage = copy_archive(made["gz"], tmp_path / "b")
    with garbage.open("ab") as f:
        f.write(b"trailing junk")
    report = verified(str(garbage))
    assert not report.ok and report.matched == report.members
    assert "unexpected bytes after the end of its gzip stream" in report.problems[0]

    not_gzip = tmp_path / "c" / f"{RUN}.tar.gz"
    not_gzip.parent.mkdir()
    not_gzip.write_bytes(made["tar"].read_bytes())
    report = verified(str(not_gzip))
    assert not report.ok and "is not a gzip stream" in " ".join(report.problems)


def _pieces(data: bytes, size: int) -> tuple[Callable[[], bytes], Callable[[], int]]:
    """A pull function handing out ``data`` ``size`` bytes at a time, and how far it got."""
    pos = 0

    def pull() -> bytes:
        nonlocal pos
        piece = data[pos : pos + size]
        pos += len(piece)
        return piece

    return pull, lambda: pos


def _inflate_all(layer: GzipLayer | ParallelGzipLayer) -> bytes:
    out = []
    while piece := layer.read_piece():
        out.append(piece)
    return b"".join(out)


def _named_member(data: bytes) -> bytes:
    """A member with optional header fields (FNAME, FCOMMENT), as Python's gzip writes a
    name, plus a comment added by hand (the header's flags say so)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="run.tar", mode="wb", fileobj=buf, mtime=0) as f:
        f.write(data)
    member = bytearray(buf.getvalue())
    member[3] |= 16  # FCOMMENT: zero-terminated, after the name
    name_end = member.index(b"run.tar\0") + len(b"run.tar\0")
    return bytes(member[:name_end]) + b"a comment\0" + bytes(member[name_end:])


@pytest.mark.parametrize("piece", [1, 7, 1 << 20])
def test_gzip_layer_reads_optional_header_fields_and_several_members(piece: int) -> None:
    """Headers whatever their fields and however the bytes arrive (one at a time: every
    header parse waits for more); the oracle is zlib's own gzip mode."""
    first, second = b"ACGT" * 3000, bytes(range(256)) * 50
    stream = _named_member(first) + gzip.compress(second, mtime=0)
    oracle = zlib.decompressobj(31)
    assert oracle.decompress(stream[: len(_named_member(first))]) == first
    layer = GzipLayer(*_pieces(stream, piece), "run.tar.gz")
    assert _inflate_all(layer) == first + second
    assert layer.done and layer.problems == []


def test_gzip_layer_names_a_header_cut_short_and_a_header_too_long() -> None:
    member = _named_member(b"ACGT" * 100)
    cut = member[: member.index(b"run.tar") + 3]  # ends inside the name
    with pytest.raises(ArchiveDamaged, match=r"run.tar.gz is truncated: it ends at byte 13, in a gzip header"):
        _inflate_all(GzipLayer(*_pieces(cut, 5), "run.tar.gz"))
    endless = member[:3] + bytes([8]) + member[4:10] + b"n" * (MAX_EXTENDED + 10)  # a name that never ends
    with pytest.raises(ArchiveDamaged, match="has a gzip header over 1 MiB long"):
        _inflate_all(GzipLayer(*_pieces(endless, 1 << 16), "run.tar.gz"))


def _two_pieces(header: bytes, a: bytes, b: bytes) -> tuple[bytes, list[AccessPoint]]:
    """One member as the writer makes it with two access points: ``a`` and ``b`` each
    deflated with no dictionary and a sync flush, then the end block and the trailer."""
    def deflated(data: bytes) -> bytes:
        c = zlib.compressobj(1, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)

    first = deflated(a)
    stream = header + first + deflated(b) + END_BLOCK + trailer(zlib.crc32(a + b), len(a + b))
    assert zlib.decompress(stream, 31) == a + b  # the oracle reads it as one gzip member
    return stream, [AccessPoint(0, len(header)), AccessPoint(len(a), len(header) + len(first))]


def test_parallel_layer_checks_the_header_ends_at_the_first_access_point() -> None:
    """The index must place point 0 where the header ends: 10 bytes for ours, longer
    for one with a name (the threaded reader parses the header as the serial one does)."""
    a, b = b"ACGT" * 3000, bytes(range(256)) * 50
    named = _named_member(b"")
    named_header = named[: named.index(b"a comment\0") + len(b"a comment\0")]
    for header, shift, says in [(HEADER, 2, "is 10 bytes"), (named_header, -len(named_header) + 10,
                                                             "is longer than 10 bytes"),
                                (named_header, 1, f"is {len(named_header)} bytes")]:
        stream, points = _two_pieces(header, a, b)
        first = points[0].archive + shift
        layer = ParallelGzipLayer(_pieces(stream, 4)[0], "run.tar.gz", [AccessPoint(0, first), points[1]],
                                  len(stream), 2, "run.index.tsv")
        with pytest.raises(ArchiveDamaged, match=f"its gzip header {says}, but its index run.index.tsv places the "
                           f"first access point at byte {first}: the index is damaged"):
            _inflate_all(layer)
        layer.close()
    for header in (HEADER, named_header):
        stream, points = _two_pieces(header, a, b)
        layer = ParallelGzipLayer(_pieces(stream, 4)[0], "run.tar.gz", points, len(stream), 2, "run.index.tsv")
        assert _inflate_all(layer) == a + b and layer.problems == []
        layer.close()
