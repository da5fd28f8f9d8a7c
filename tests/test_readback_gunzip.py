"""`readback.gunzip`: the gzip layer's own checks. A byte flipped in stored (deflate
"stored" block) data inflates fine, so only the member's crc32c and the gzip CRC32 can
notice; corrupt deflate data, bytes after the gzip stream and a file that is not gzip at
all are each reported.

Which member a flipped byte hit is decided by an oracle independent of the code under
test (zlib + Python's tarfile), and the report must name that member.
"""

from __future__ import annotations

import io
import re
import tarfile
import zlib
from pathlib import Path

import google_crc32c
import pytest
from readback_helpers import RUN, copy_archive, flip, one_run_archived_twice, verified


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
    assert report.summary().startswith(f"FAILED: {archive}: 2 problems; first: {member}: crc32c")


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
