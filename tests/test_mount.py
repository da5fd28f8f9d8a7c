"""`sruns-stream mount`: the run folder of an archive through real FUSE (mfusepy over
libfuse 3, /dev/fuse), in a real process.

Oracles: the run folder itself (names, types, modes, mtimes, bytes: `helpers.tree`), the
kernel's answers (EROFS, EIO, the mount table), and for what reading costs from GCS, the
bytes the loopback proxy answered against the span the access index gives.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy
from helpers import run_in_process, start_cli, tree, wait_until
from test_read_indexes import RUN, _archive, _members, _points
from test_read_indexes import run as run  # noqa: F401 - the fixture, shared

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"),
                                reason="no FUSE here: apt-get install fuse3 (CI installs it)")


@pytest.fixture
def archived(run: Path, tmp_path: Path) -> Path:  # noqa: F811 - the shared fixture
    _archive(run, str(tmp_path / "dest"), tmp_path)
    return tmp_path / "dest" / RUN / f"{RUN}.tar.gz"


class Mounted:
    """``sruns-stream mount SOURCE MNT`` running; unmounted (and waited for) at the end."""

    def __init__(self, source: str, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.mnt = tmp_path / "mnt"
        self.mnt.mkdir(exist_ok=True)
        self.proc = start_cli("mount", source, str(self.mnt), *extra, cwd=tmp_path, env=env)
        wait_until(lambda: os.path.ismount(self.mnt), "the mount", proc=self.proc)

    def stop(self, how: str = "fusermount") -> tuple[int, str]:
        if self.proc.poll() is None:
            if how == "fusermount":
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False, capture_output=True)
            else:
                self.proc.send_signal(getattr(signal, how))
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err

    def __enter__(self) -> Mounted:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)


@pytest.mark.slow
def test_mount_lists_and_reads_the_run_folder_read_only(archived: Path, run: Path, tmp_path: Path) -> None:
    with Mounted(str(archived), tmp_path) as m:
        assert tree(m.mnt) == tree(run)
        for attempt in (lambda: (m.mnt / "new.txt").write_bytes(b"x"),
                        lambda: (m.mnt / "RunInfo.xml").write_bytes(b"x"),
                        lambda: (m.mnt / "empty.txt").unlink(),
                        lambda: (m.mnt / "Data" / "new").mkdir()):
            with pytest.raises(OSError) as info:
                attempt()
            assert info.value.errno == errno.EROFS
        code, err = m.stop("SIGTERM")
    assert code == 0 and not os.path.ismount(m.mnt), err
    assert "unmounted" in err and "Traceback" not in err


@pytest.mark.slow
def test_many_readers_at_once_read_byte_exact(archived: Path, run: Path, tmp_path: Path) -> None:
    files = [p for p in run.rglob("*") if p.is_file() and not p.is_symlink() and p.stat().st_size]
    wrong: list[str] = []
    # By the run's name, found through the journal; a cache smaller than the lane of files.
    with Mounted(RUN, tmp_path, "--cache-size", "16M", "--journal", str(tmp_path / "sruns.db")) as m:
        def reader(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(40):
                f = rng.choice(files)
                data = f.read_bytes()
                at = rng.randrange(len(data))
                n = rng.randrange(1, 600_000)
                with open(m.mnt / f.relative_to(run), "rb") as g:
                    g.seek(at)
                    if g.read(n) != data[at : at + n]:
                        wrong.append(f"{f} {at} {n}")

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert wrong == []


@pytest.mark.slow
def test_a_flipped_byte_is_eio_and_a_line_never_wrong_bytes(archived: Path, run: Path, tmp_path: Path) -> None:
    name = f"{RUN}/InterOp/TileMetrics.bin"  # incompressible: stored blocks, inflate cannot notice
    m = _members(archived)[name]
    points = _points(archived.with_name(f"{RUN}.index.tsv").read_bytes())
    # The stored bytes hold the member's bytes verbatim: find them and flip one in the middle.
    data = bytearray(archived.read_bytes())
    original = (run.parent / name).read_bytes()
    at = data.find(original[100_000:100_064])
    assert at > 0 and points
    data[at + 10] ^= 0x01
    archived.write_bytes(bytes(data))
    with Mounted(str(archived), tmp_path) as m2:
        for offset in (0, 100_000, len(original) - 10):  # wherever it is read, never a wrong byte
            with open(m2.mnt / "InterOp" / "TileMetrics.bin", "rb") as f:
                f.seek(offset)
                with pytest.raises(OSError) as info:
                    f.read(4096)
                assert info.value.errno == errno.EIO
        assert (m2.mnt / "RunInfo.xml").read_bytes() == (run / "RunInfo.xml").read_bytes()  # others still served
        code, err = m2.stop()
    assert code == 0
    assert err.count("InterOp/TileMetrics.bin: read error (EIO)") == 1 and "crc32c" in err, err
    assert m.size == len(original)


@pytest.mark.slow
def test_unmount_while_reading_ends_the_mount_cleanly(archived: Path, run: Path, tmp_path: Path) -> None:
    """``fusermount3 -u`` while a file is open is refused by the kernel (busy) and the
    reads go on, right; SIGINT while reading unmounts and ends the process (exit 0). The
    reader then gets an error, or pages the kernel already holds (the same bytes), never
    wrong bytes, and is never left hanging."""
    want = (run / "Data" / "big.bin").read_bytes()
    started, stop = threading.Event(), threading.Event()
    results: list[Any] = []
    with Mounted(str(archived), tmp_path, "--cache-size", "16M") as m:
        def reader() -> None:
            try:
                with open(m.mnt / "Data" / "big.bin", "rb") as f:
                    while not stop.is_set():
                        f.seek(0)
                        results.append(f.read() == want)
                        started.set()
            except OSError as exc:
                results.append(exc.errno)
            finally:
                started.set()

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        assert started.wait(60)
        busy = subprocess.run(["fusermount3", "-u", str(m.mnt)], capture_output=True, text=True, check=False)
        assert busy.returncode != 0 and os.path.ismount(m.mnt), busy.stderr
        n = len(results)
        wait_until(lambda: len(results) > n + 1, "reads after the refused unmount")
        code, err = m.stop("SIGINT")
        stop.set()
        t.join(60)
    assert code == 0 and "Traceback" not in err, err
    assert not t.is_alive() and not os.path.ismount(m.mnt)
    assert False not in results and results[0] is True, results[-3:]


@pytest.mark.slow
def test_mount_from_gcs_reads_a_file_for_its_size_and_an_interval(gcs: Any, run: Path, tmp_path: Path) -> None:  # noqa: F811
    _archive(run, f"gs://{gcs.bucket}/runs", tmp_path)
    blob = f"runs/{RUN}/{RUN}.tar.gz"
    with FaultProxy(gcs.url) as proxy:
        env = {"STORAGE_EMULATOR_HOST": proxy.url}
        with Mounted(f"gs://{gcs.bucket}/{blob}", tmp_path, env=env) as m:
            listed = sum(x.sent for x in proxy.log if "alt=media" in x.path and f"{RUN}.tar.gz" in x.path)
            assert listed <= 8  # the listing: the manifest, the index, the archive's trailer
            assert tree(m.mnt)[f"InterOp{os.sep}TileMetrics.bin"] == tree(run)[f"InterOp{os.sep}TileMetrics.bin"]
            proxy.log.clear()
            big = (m.mnt / "Data" / "big.bin").read_bytes()
            assert big == (run / "Data" / "big.bin").read_bytes()
            fetched = sum(x.sent for x in proxy.log if "alt=media" in x.path and f"{RUN}.tar.gz" in x.path)
            assert fetched <= len(big) + (16 << 20), fetched


@pytest.mark.slow
def test_an_archive_in_volumes_mounts_the_same(run: Path, tmp_path: Path) -> None:  # noqa: F811
    _archive(run, str(tmp_path / "dest"), tmp_path, "--volume-size", "1M")
    folder = tmp_path / "dest" / RUN
    assert not (folder / f"{RUN}.tar.gz").exists() and (folder / f"{RUN}.tar.gz.001").exists()
    with Mounted(str(folder), tmp_path) as m:
        assert tree(m.mnt) == tree(run)
    # `index` writes the same files for it again, describing the volumes' concatenation.
    written = {s: Path(f"{folder / RUN}.tar.gz{s}").read_bytes() for s in (".gzidx", ".index.sqlite")}
    for s in written:
        Path(f"{folder / RUN}.tar.gz{s}").unlink()
    proc = run_in_process("index", str(folder), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert Path(f"{folder / RUN}.tar.gz.gzidx").read_bytes() == written[".gzidx"]
    assert verified_ok(folder)


def verified_ok(source: Path) -> bool:
    from readback_helpers import verified

    return verified(str(source)).ok


def test_no_fuse_is_one_line_with_the_fix(archived: Path, tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    empty = tmp_path / "nobin"
    empty.mkdir()
    proc = run_in_process("mount", str(archived), str(tmp_path / "mnt"), cwd=tmp_path, env={"PATH": str(empty)})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "apt-get install fuse3" in proc.stderr
