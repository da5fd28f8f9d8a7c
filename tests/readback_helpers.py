"""Archives for the read-back tests (tests/test_readback_*.py): made by the real
`sruns-stream archive` (a subprocess), or crafted block by block; and damage to apply."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import google_crc32c
import make_fake_run
from helpers import child_env, run_in_process

from sruns_stream.progress import NoProgress
from sruns_stream.readback import VerifyReport, verify_archive
from sruns_stream.state.journal import Journal

# --- archives made by the real CLI --------------------------------------------------------

RUN = "240101_A00001_0001_AHVERIFYXX"


def archive(run: Path, dest: str, cwd: Path, *extra: str) -> dict[str, Any]:
    """`sruns-stream archive RUN --dest DEST --json`: its JSON result. --not-finished: the
    folders these tests make have no completion markers (what they test is reading back)."""
    proc = run_in_process("archive", str(run), "--dest", dest, "--journal", str(cwd / "sruns.db"), "--json",
                          "--not-finished", *extra, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def archived(run: Path, dest: str, cwd: Path, *extra: str) -> Path:
    """As `archive`: where the archive is."""
    return Path(archive(run, dest, cwd, *extra)["location"])


def verified(source: str, against: Path | None = None, journal: Journal | None = None) -> VerifyReport:
    return verify_archive(source, against=against, journal=journal, collection=None, progress=NoProgress())


def odd_names(run: Path) -> None:
    """Names that need pax records and manifest escapes: long, unicode, tab and newline,
    and bytes that are not UTF-8."""
    deep = run / "Logs" / ("d" * 90) / ("e" * 90)
    deep.mkdir(parents=True)
    (deep / ("f" * 120 + ".log")).write_text("long path")
    (run / "Logs" / "résumé ✓.txt").write_text("unicode")
    (run / "Logs" / "tab\tand\nnewline\\.txt").write_text("escapes")
    (run / "Logs" / os.fsdecode(b"latin1-\xe9.txt")).write_text("not utf-8")
    for p in (deep, deep.parent, run / "Logs"):
        os.utime(p, (1704067200, 1704067200))


def odd_novaseq(make_run: Any) -> Path:
    """A novaseq run with a symlink, odd names and an empty directory (the `novaseq` fixtures)."""
    run = make_run("novaseq", 3 << 20, seed=7)
    os.symlink("RunInfo.xml", run / "link_to_runinfo")
    odd_names(run)
    (run / "an_empty_dir").mkdir()
    os.utime(run / "an_empty_dir", (1704067200, 1704067200))
    os.utime(run, (1704067200, 1704067200))
    return run


def one_run_archived_twice(base: Path) -> dict[str, Path]:
    """One novaseq run archived twice, `auto` (.tar.gz, CBCL stored) and `none` (.tar);
    tests copy the archives before damaging them (the `made` fixtures)."""
    run = base / RUN
    make_fake_run.make_run(run, "novaseq", 3 << 20, seed=3)
    os.symlink("RunInfo.xml", run / "link_to_runinfo")
    # Names that need pax records and manifest escapes.
    (run / "Logs" / ("l" * 150)).write_text("long name")
    (run / "Logs" / "tab\tnewline\n✓.txt").write_text("escapes")
    (run / "Logs" / os.fsdecode(b"latin1-\xe9.txt")).write_text("not utf-8")
    gz = Path(archive(run, str(base / "gz"), base)["location"])
    tar = Path(archive(run, str(base / "tar"), base, "--compression", "none", "--force")["location"])
    return {"run": run, "gz": gz, "tar": tar, "base": base}


def copy_archive(archive: Path, tmp_path: Path) -> Path:
    """The archive and its manifest, copied where a test may damage them."""
    folder = tmp_path / "copy" / archive.parent.name
    shutil.copytree(archive.parent, folder)
    return folder / archive.name


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


# --- archives crafted block by block ----------------------------------------------------

BLOCK = 512
MTIME = 1704067200
MIB = 1 << 20


def header(name: str, *, kind: bytes = tarfile.REGTYPE, size: int = 0, fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = MTIME
    return info.tobuf(fmt)


def pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def tar_file(name: str, data: bytes) -> bytes:
    return header(name, size=len(data)) + pad(data)


def write_gz(path: Path, pieces: Iterable[bytes]) -> Path:
    """Gzip ``pieces`` (the tar stream, without its end) and the two zero blocks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    with path.open("wb") as f:
        for piece in pieces:
            f.write(z.compress(piece))
        f.write(z.compress(b"\0" * (2 * BLOCK)))
        f.write(z.flush())
    return path


RUN_DIR = header("run", kind=tarfile.DIRTYPE)  # at tar byte 0; each fault follows it, at 512
GOOD = tar_file("run/good.txt", b"fine")


# `python -m sruns_stream` with RLIMIT_FSIZE set first (0: no limit), and its peak RSS
# (VmHWM: this process's own, unlike wait4's ru_maxrss, which includes the pytest process
# it was forked from) written at exit to a file. Set up in the child itself, since a
# preexec_fn is unsafe in a test process that may run threads.
MEASURED = (
    "import atexit, resource, runpy, sys\n"
    "n, peak = int(sys.argv.pop(1)), sys.argv.pop(1)\n"
    "if n:\n"
    "    resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))\n"
    "def hwm():\n"
    "    with open('/proc/self/status') as f, open(peak, 'w') as out:\n"
    "        out.write(next(line for line in f if line.startswith('VmHWM:')).split()[1])\n"
    "atexit.register(hwm)\n"
    "runpy.run_module('sruns_stream', run_name='__main__', alter_sys=True)\n"
)


def run_measured(*args: str, cwd: Path, fsize: int = 0) -> tuple[int, str, str, int]:
    """`python -m sruns_stream ARGS` in a real process: (exit code, stdout, stderr, peak
    RSS in KiB). ``fsize`` caps the size of any file it writes (RLIMIT_FSIZE): a write
    past it fails (EFBIG), which is how a test sees bytes that should not be written."""
    env = child_env()
    out, err, peak = cwd / "stdout.txt", cwd / "stderr.txt", cwd / "peak_kib.txt"
    with out.open("w") as fo, err.open("w") as fe:
        proc = subprocess.run([sys.executable, "-c", MEASURED, str(fsize), str(peak), *args], cwd=cwd, env=env,
                              stdout=fo, stderr=fe, timeout=100, check=False)
    return proc.returncode, out.read_text(), err.read_text(), int(peak.read_text())


def manifest_of(rows: list[tuple[str, int, bytes | None, str, int, str]]) -> bytes:
    lines = ["path\tsize\tcrc32c\ttype\tmode\tmtime\tlink"]
    for path, size, data, kind, mode, link in rows:
        crc = f"{google_crc32c.value(data):08x}" if data is not None else ""
        lines.append(f"{path}\t{size}\t{crc}\t{kind}\t{mode:04o}\t{MTIME}\t{link}")
    return ("\n".join(lines) + "\n").encode()
