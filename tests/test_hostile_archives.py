"""Hostile archives through the real CLI: crafted tar headers, oversized extended headers
and gzip bombs give one "damaged archive: …" line (exit 1), never a traceback, a hang or
work out of proportion to the archive.

Archives are built by hand, block by block (Python's tarfile makes the ordinary headers;
the hostile fields are patched in), so that each case holds exactly one fault.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import google_crc32c
import pytest
from helpers import REPO, run_cli

BLOCK = 512
MTIME = 1704067200
MIB = 1 << 20


def _header(name: str, *, kind: bytes = tarfile.REGTYPE, size: int = 0, fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = MTIME
    return info.tobuf(fmt)


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def _file(name: str, data: bytes) -> bytes:
    return _header(name, size=len(data)) + _pad(data)


def _record(key: str, value: str) -> bytes:
    """One pax record, ``"<len> key=value\\n"``, whose length counts its own digits."""
    body = f" {key}={value}\n".encode()
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode() + body


def _extended(kind: bytes, payload: bytes) -> bytes:
    """A pax (x, g) or GNU (L, K) header and its payload."""
    fmt = tarfile.GNU_FORMAT if kind in (b"L", b"K") else tarfile.USTAR_FORMAT
    name = "././@LongLink" if fmt == tarfile.GNU_FORMAT else "pax"
    return _header(name, kind=kind, size=len(payload), fmt=fmt) + _pad(payload)


def _patched(block: bytes, start: int, field: bytes) -> bytes:
    """``block`` with ``field`` written at ``start`` and its checksum made right again,
    so that only the patched field is wrong."""
    b = bytearray(block)
    b[start : start + len(field)] = field
    b[148:156] = b" " * 8
    b[148:156] = b"%06o\0 " % sum(b)
    return bytes(b)


def _write_gz(path: Path, pieces: Iterable[bytes]) -> Path:
    """Gzip ``pieces`` (the tar stream, without its end) and the two zero blocks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    with path.open("wb") as f:
        for piece in pieces:
            f.write(z.compress(piece))
        f.write(z.compress(b"\0" * (2 * BLOCK)))
        f.write(z.flush())
    return path


RUN_DIR = _header("run", kind=tarfile.DIRTYPE)  # at tar byte 0; each fault follows it, at 512
GOOD = _file("run/good.txt", b"fine")


def _pax_case(records: dict[str, str]) -> bytes:
    payload = b"".join(_record(k, v) for k, v in records.items())
    return RUN_DIR + _extended(b"x", payload) + GOOD


# Each case: the tar bytes (before the end marker), and words the one line must hold.
CASES: dict[str, tuple[bytes, list[str]]] = {
    "pax mtime inf": (_pax_case({"mtime": "inf"}), ["mtime", "'inf'", "tar byte 512"]),
    "pax mtime nan": (_pax_case({"mtime": "nan"}), ["mtime", "'nan'", "tar byte 512"]),
    "pax mtime 1e30": (_pax_case({"mtime": "1e30"}), ["mtime", "'1e30'", "tar byte 512"]),
    "pax mtime -1e400": (_pax_case({"mtime": "-1e400"}), ["mtime", "tar byte 512"]),
    "pax mtime too far": (_pax_case({"mtime": "9" * 30}), ["mtime", "tar byte 512"]),
    "pax size abc": (_pax_case({"size": "abc"}), ["size", "'abc'", "tar byte 512"]),
    "pax size negative": (_pax_case({"size": "-5"}), ["size", "'-5'", "tar byte 512"]),
    "pax size huge": (_pax_case({"size": "1" + "0" * 30}), ["size", "tar byte 512"]),
    "pax record length": (RUN_DIR + _extended(b"x", b"99999999999999999999999 path=x\n") + GOOD,
                          ["pax", "tar byte 512"]),
    # ustar fields: octal text Python's int() would take but tar does not, and base-256.
    "octal size negative": (RUN_DIR + _patched(_header("run/a", size=0), 124, b"-0000000001\0"),
                            ["size", "tar byte 512"]),
    "octal mode with prefix": (RUN_DIR + _patched(_header("run/a"), 100, b"0o00644\0"), ["mode", "tar byte 512"]),
    "octal mtime garbage": (RUN_DIR + _patched(_header("run/a"), 136, b"zzzzzzzzzzz\0"), ["mtime", "tar byte 512"]),
    "base-256 size negative": (RUN_DIR + _patched(_header("run/a"), 124, b"\xff" * 12), ["size", "tar byte 512"]),
    # Extended headers are held in memory: over 1 MiB is refused before it is read.
    "pax x over 1 MiB": (RUN_DIR + _extended(b"x", _record("comment", "c" * (2 * MIB))) + GOOD,
                         ["pax", "1 MiB", "tar byte 512"]),
    "pax g over 1 MiB": (RUN_DIR + _extended(b"g", _record("comment", "c" * (2 * MIB))) + GOOD,
                         ["pax", "1 MiB", "tar byte 512"]),
    "GNU L over 1 MiB": (RUN_DIR + _extended(b"L", b"n" * (2 * MIB)) + GOOD, ["long name", "1 MiB", "tar byte 512"]),
    "GNU K over 1 MiB": (RUN_DIR + _extended(b"K", b"n" * (2 * MIB)) + GOOD, ["long link", "1 MiB", "tar byte 512"]),
}


def _one_line_failure(proc: subprocess.CompletedProcess[str], words: list[str]) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    assert "; first: damaged archive: " in lines[0], lines[0]
    first = lines[0].split("; first: ", 1)[1]
    for word in words:
        assert word in first, (word, first)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.timeout(120)
def test_hostile_header_is_one_damaged_archive_line_for_verify_and_restore(case: str, tmp_path: Path) -> None:
    data, words = CASES[case]
    archive = _write_gz(tmp_path / "a" / "run.tar.gz", [data])
    _one_line_failure(run_cli("verify", str(archive), cwd=tmp_path, timeout=60), words)
    dest = tmp_path / "dest"
    _one_line_failure(run_cli("restore", str(archive), str(dest), cwd=tmp_path, timeout=60), words)
    # Nothing at or after the fault was written, and no temporary file is left.
    written = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert written in ([], ["run"]), written


# `python -m sruns_stream` with RLIMIT_FSIZE set first (0: no limit), and its peak RSS
# (VmHWM: this process's own, unlike wait4's ru_maxrss, which includes the pytest process
# it was forked from) written at exit to a file. Set up in the child itself, since a
# preexec_fn is unsafe in a test process that may run threads.
_MEASURED = (
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


def _run_measured(*args: str, cwd: Path, fsize: int = 0) -> tuple[int, str, str, int]:
    """`python -m sruns_stream ARGS` in a real process: (exit code, stdout, stderr, peak
    RSS in KiB). ``fsize`` caps the size of any file it writes (RLIMIT_FSIZE): a write
    past it fails (EFBIG), which is how a test sees bytes that should not be written."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out, err, peak = cwd / "stdout.txt", cwd / "stderr.txt", cwd / "peak_kib.txt"
    with out.open("w") as fo, err.open("w") as fe:
        proc = subprocess.run([sys.executable, "-c", _MEASURED, str(fsize), str(peak), *args], cwd=cwd, env=env,
                              stdout=fo, stderr=fe, timeout=100, check=False)
    return proc.returncode, out.read_text(), err.read_text(), int(peak.read_text())


@pytest.mark.timeout(120)
def test_a_huge_long_name_is_refused_without_buffering_it(tmp_path: Path) -> None:
    """A 256 MiB GNU long name inflates from ~260 KB of gzip: it is refused at its header,
    not gathered in memory (which used to take minutes and most of a GiB)."""
    size = 256 * MIB

    def pieces() -> Iterable[bytes]:
        yield RUN_DIR + _header("././@LongLink", kind=b"L", size=size, fmt=tarfile.GNU_FORMAT)
        chunk = b"a" * MIB
        for _ in range(size // MIB):
            yield chunk
        yield GOOD

    archive = _write_gz(tmp_path / "a" / "run.tar.gz", pieces())
    assert archive.stat().st_size < MIB
    for args in (("verify", str(archive)), ("restore", str(archive), str(tmp_path / "dest"))):
        code, out, err, peak_kib = _run_measured(*args, cwd=tmp_path)
        _one_line_failure(subprocess.CompletedProcess(args, code, out, err), ["long name", "tar byte 512"])
        # The payload is never held: peak memory stays that of the interpreter and its imports.
        assert peak_kib < 200 * 1024, peak_kib


def _manifest(rows: list[tuple[str, int, bytes | None, str, int, str]]) -> bytes:
    lines = ["path\tsize\tcrc32c\ttype\tmode\tmtime\tlink"]
    for path, size, data, kind, mode, link in rows:
        crc = f"{google_crc32c.value(data):08x}" if data is not None else ""
        lines.append(f"{path}\t{size}\t{crc}\t{kind}\t{mode:04o}\t{MTIME}\t{link}")
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.timeout(120)
def test_a_member_bigger_than_its_manifest_row_is_refused_before_a_byte_is_written(tmp_path: Path) -> None:
    """A gzip bomb: 256 MiB of zeros where the manifest says 10 bytes. Restore skips the
    member's data without writing it (the process may not write a file over 4 MiB), and
    the members after it are restored and checked."""
    size = 256 * MIB
    after = b"after the bomb"

    def pieces() -> Iterable[bytes]:
        yield RUN_DIR + _header("run/bomb.bin", size=size)
        zeros = b"\0" * MIB
        for _ in range(size // MIB):
            yield zeros
        yield _file("run/typed", b"a file where the manifest has a directory")
        yield _file("run/after.txt", after)

    archive = _write_gz(tmp_path / "a" / "run.tar.gz", pieces())
    archive.with_name("run.manifest.tsv").write_bytes(_manifest([
        ("run", 0, None, "d", 0o755, ""),
        ("run/bomb.bin", 10, b"0123456789", "f", 0o644, ""),
        ("run/typed", 0, None, "d", 0o755, ""),
        ("run/after.txt", len(after), after, "f", 0o644, ""),
    ]))
    dest = tmp_path / "dest"
    code, out, err, _ = _run_measured("restore", str(archive), str(dest), "--json", cwd=tmp_path, fsize=4 * MIB)
    assert code == 1, (code, out, err)
    assert "Traceback" not in err
    import json

    report = json.loads(out)
    assert report["failed"] == 2 and report["files"] == 1 and report["checked"] == 1, report
    assert f"run/bomb.bin: {size} bytes in the archive, 10 in the manifest: not restored" in report["problems"]
    assert any(p.startswith("run/typed: a file in the archive, a directory in the manifest") for p in report["problems"])
    assert sorted(os.listdir(dest / "run")) == ["after.txt"]
    assert (dest / "run" / "after.txt").read_bytes() == after
