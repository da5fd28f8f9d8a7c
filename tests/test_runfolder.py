"""The manifest: order, types, metadata, and what cannot or must not be archived."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from sruns_stream.errors import RunFolderChanged, RunFolderMissing
from sruns_stream.runfolder.safefs import DIR, FILE, SYMLINK
from sruns_stream.runfolder.scan import check_unchanged, scan_run_folder


def test_walk_is_depth_first_and_bytewise_sorted(tmp_path: Path) -> None:
    run = tmp_path / "RUN"
    for rel in ["b/x", "B", "a.b", "a/z", "a/Z", "é"]:
        p = run / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(rel)
    names = [e.path.decode() for e in scan_run_folder(run).entries]
    # Bytewise: uppercase before lowercase, '.' (0x2e) before '/' children, UTF-8 last.
    assert names == ["RUN", "RUN/B", "RUN/a", "RUN/a/Z", "RUN/a/z", "RUN/a.b", "RUN/b", "RUN/b/x", "RUN/é"]


def test_records_types_sizes_modes_and_links_without_following(tmp_path: Path) -> None:
    run = tmp_path / "RUN"
    (run / "empty").mkdir(parents=True)
    (run / "data").mkdir()
    (run / "data" / "f.bin").write_bytes(b"x" * 1234)
    os.chmod(run / "data" / "f.bin", 0o640)
    os.symlink("data", run / "dirlink")  # a link to a directory is stored, never walked
    os.symlink("/nonexistent/target", run / "dangling")
    by_name = {e.path.decode(): e for e in scan_run_folder(run).entries}
    assert by_name["RUN/empty"].kind == DIR
    f = by_name["RUN/data/f.bin"]
    assert (f.kind, f.size, f.mode) == (FILE, 1234, 0o640)
    assert f.mtime_ns == os.stat(run / "data" / "f.bin").st_mtime_ns
    assert by_name["RUN/dirlink"].kind == SYMLINK and by_name["RUN/dirlink"].linkname == b"data"
    assert by_name["RUN/dangling"].linkname == b"/nonexistent/target"
    assert not any(n.startswith("RUN/dirlink/") for n in by_name)


def test_special_files_are_skipped_and_reported(tmp_path: Path) -> None:
    run = tmp_path / "RUN"
    run.mkdir()
    os.mkfifo(run / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(run / "sock"))
    try:
        manifest = scan_run_folder(run)
    finally:
        sock.close()
    assert [e.path for e in manifest.entries] == [b"RUN"]
    assert len(manifest.skipped) == 2
    assert any("fifo" in s for s in manifest.skipped) and any("sock" in s for s in manifest.skipped)


def test_missing_and_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(RunFolderMissing, match="does not exist"):
        scan_run_folder(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderMissing, match="not a directory"):
        scan_run_folder(tmp_path / "file")


def test_fingerprint_and_change_detection(tmp_path: Path) -> None:
    run = tmp_path / "RUN"
    run.mkdir()
    (run / "a").write_text("one")
    m = scan_run_folder(run)
    assert m.fingerprint() == scan_run_folder(run).fingerprint()
    check_unchanged(m)
    (run / "a").write_text("three")
    assert m.fingerprint() != scan_run_folder(run).fingerprint()
    with pytest.raises(RunFolderChanged, match="RUN/a"):
        check_unchanged(m)
