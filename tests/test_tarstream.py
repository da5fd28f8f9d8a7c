"""The tar stream against its oracles: GNU tar and Python's tarfile read what we write."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from helpers import tree

from sruns_stream.archiver.tarstream import TarLayout, TarReader, render_header
from sruns_stream.errors import RunFolderChanged
from sruns_stream.runfolder.safefs import FILE
from sruns_stream.runfolder.scan import Entry, Manifest, scan_run_folder


def _tar_bytes(manifest: Manifest, start: int = 0, block: int = 65536) -> bytes:
    with TarReader(TarLayout(manifest), start) as reader:
        return b"".join(bytes(b.data) for b in reader.blocks(block))


@pytest.fixture
def awkward_run(tmp_path: Path) -> Path:
    """Long names (>100 and >255 bytes), non-ASCII, links, empty dirs, odd modes."""
    run = tmp_path / "src" / "RUN"
    (run / "empty" / "deeper_empty").mkdir(parents=True)
    long_dir = run / ("d" * 120) / ("ü" * 60)
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 200)).write_bytes(b"long name\n")
    (run / "Ωmega café.txt").write_text("unicode\n")
    (run / "exec.sh").write_text("#!/bin/sh\n")
    os.chmod(run / "exec.sh", 0o750)
    (run / "zero").write_bytes(b"")
    (run / "exact512").write_bytes(b"q" * 512)
    (run / "big.bin").write_bytes(os.urandom(300_000))
    os.symlink("exec.sh", run / "link")
    os.symlink("x" * 150, run / "longlink")
    os.chmod(run / "empty", 0o700)
    return run


def test_gnu_tar_and_tarfile_round_trip(awkward_run: Path, tmp_path: Path) -> None:
    data = _tar_bytes(scan_run_folder(awkward_run))
    (tmp_path / "a.tar").write_bytes(data)
    out = tmp_path / "gnu"
    out.mkdir()
    subprocess.run(["tar", "-xpf", str(tmp_path / "a.tar"), "-C", str(out)], check=True)
    assert tree(out / "RUN") == tree(awkward_run)
    py = tmp_path / "py"
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        tf.extractall(py, filter="fully_trusted")
    assert tree(py / "RUN") == tree(awkward_run)


def test_stream_from_any_offset_equals_the_suffix(awkward_run: Path) -> None:
    manifest = scan_run_folder(awkward_run)
    whole = _tar_bytes(manifest)
    assert len(whole) == TarLayout(manifest).size
    for start in (1, 511, 512, 513, 1000, 4096, len(whole) // 2, len(whole) - 1024, len(whole) - 1):
        assert _tar_bytes(manifest, start, block=7000) == whole[start:], start


def test_member_crc32c_is_kept_across_a_restart(awkward_run: Path) -> None:
    import google_crc32c

    manifest = scan_run_folder(awkward_run)
    layout = TarLayout(manifest)
    big = next(i for i, e in enumerate(manifest.entries) if e.path.endswith(b"big.bin"))
    start, _end = layout.data_span(big)
    with TarReader(layout) as reader:
        first = reader.read_block(start + 100_000)  # stops inside big.bin
        cursor = first.cursor
    assert cursor.index == big
    with TarReader(layout, start + 100_000, cursor) as reader:
        done = dict(d for b in reader.blocks(65536) for d in b.files_done)
    assert done[big] == google_crc32c.value((awkward_run / "big.bin").read_bytes())


def test_headers_for_files_over_8_gib_use_pax_size() -> None:
    entry = Entry(b"RUN/huge.cbcl", FILE, 9 * 2**30 + 5, 0o644, 1_700_000_000 * 10**9, 0, 0)
    header = render_header(entry)
    with tarfile.open(fileobj=io.BytesIO(header + b"\0" * 1024), mode="r:") as tf:
        info = tf.next()
    assert info is not None and info.size == 9 * 2**30 + 5 and info.name == "RUN/huge.cbcl"


def test_huge_uid_and_negative_mtime_use_pax() -> None:
    entry = Entry(b"RUN/f", FILE, 3, 0o600, -5 * 10**9, 2**22, 7)
    with tarfile.open(fileobj=io.BytesIO(render_header(entry) + b"abc".ljust(512, b"\0") + b"\0" * 1024)) as tf:
        info = tf.next()
    assert info is not None and (info.uid, info.gid, info.mtime) == (2**22, 7, -5)


def test_file_changed_after_scan_is_an_error(tmp_path: Path) -> None:
    run = tmp_path / "RUN"
    run.mkdir()
    (run / "a").write_bytes(b"1" * 5000)
    manifest = scan_run_folder(run)
    (run / "a").write_bytes(b"1" * 4000)  # shrank
    with pytest.raises(RunFolderChanged, match="RUN/a"):
        _tar_bytes(manifest)


def test_file_shrinking_while_read_is_an_error(tmp_path: Path) -> None:
    run = tmp_path / "RUN"
    run.mkdir()
    (run / "a").write_bytes(b"1" * 200_000)
    manifest = scan_run_folder(run)
    layout = TarLayout(manifest)
    with TarReader(layout) as reader:
        reader.read_block(layout.data_span(1)[0] + 1000)  # the file is open, 1000 bytes read
        st = os.stat(run / "a")
        os.truncate(run / "a", 100_000)
        os.utime(run / "a", ns=(st.st_atime_ns, st.st_mtime_ns))  # hide it from a stat check
        with pytest.raises(RunFolderChanged, match="shrank"):
            reader.read_block(1 << 20)
