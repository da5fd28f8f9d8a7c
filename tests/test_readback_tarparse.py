"""`readback.tarparse`: hostile archives through the real CLI. Crafted tar headers,
oversized extended headers and gzip bombs give one "damaged archive: …" line (exit 1),
never a traceback, a hang or work out of proportion to the archive.

Archives are built by hand, block by block (Python's tarfile makes the ordinary headers;
the hostile fields are patched in), so that each case holds exactly one fault.
"""

from __future__ import annotations

import subprocess
import tarfile
from collections.abc import Iterable
from pathlib import Path

import pytest
from helpers import run_in_process
from readback_helpers import GOOD, MIB, RUN_DIR, header, pad, run_measured, write_gz


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
    return header(name, kind=kind, size=len(payload), fmt=fmt) + pad(payload)


def _patched(block: bytes, start: int, field: bytes) -> bytes:
    """``block`` with ``field`` written at ``start`` and its checksum made right again,
    so that only the patched field is wrong."""
    b = bytearray(block)
    b[start : start + len(field)] = field
    b[148:156] = b" " * 8
    b[148:156] = b"%06o\0 " % sum(b)
    return bytes(b)


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
    "octal size negative": (RUN_DIR + _patched(header("run/a", size=0), 124, b"-0000000001\0"),
                            ["size", "tar byte 512"]),
    "octal mode with prefix": (RUN_DIR + _patched(header("run/a"), 100, b"0o00644\0"), ["mode", "tar byte 512"]),
    "octal mtime garbage": (RUN_DIR + _patched(header("run/a"), 136, b"zzzzzzzzzzz\0"), ["mtime", "tar byte 512"]),
    "base-256 size negative": (RUN_DIR + _patched(header("run/a"), 124, b"\xff" * 12), ["size", "tar byte 512"]),
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
    # The damage first; every other problem kept follows, one per line.
    assert all(line.startswith("  - ") for line in lines[1:]), proc.stdout
    assert "; first: damaged archive: " in lines[0], lines[0]
    first = lines[0].split("; first: ", 1)[1]
    for word in words:
        assert word in first, (word, first)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.timeout(120)
def test_hostile_header_is_one_damaged_archive_line_for_verify_and_restore(case: str, tmp_path: Path) -> None:
    data, words = CASES[case]
    archive = write_gz(tmp_path / "a" / "run.tar.gz", [data])
    _one_line_failure(run_in_process("verify", str(archive), cwd=tmp_path, timeout=60), words)
    dest = tmp_path / "dest"
    _one_line_failure(run_in_process("restore", str(archive), str(dest), cwd=tmp_path, timeout=60), words)
    # Nothing at or after the fault was written, and no temporary file is left.
    written = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert written in ([], ["run"]), written


@pytest.mark.slow  # 256 MiB inflated twice, in real processes (their peak memory is the point)
@pytest.mark.timeout(120)
def test_a_huge_long_name_is_refused_without_buffering_it(tmp_path: Path) -> None:
    """A 256 MiB GNU long name inflates from ~260 KB of gzip: it is refused at its header,
    not gathered in memory (which used to take minutes and most of a GiB)."""
    size = 256 * MIB

    def pieces() -> Iterable[bytes]:
        yield RUN_DIR + header("././@LongLink", kind=b"L", size=size, fmt=tarfile.GNU_FORMAT)
        chunk = b"a" * MIB
        for _ in range(size // MIB):
            yield chunk
        yield GOOD

    archive = write_gz(tmp_path / "a" / "run.tar.gz", pieces())
    assert archive.stat().st_size < MIB
    for args in (("verify", str(archive)), ("restore", str(archive), str(tmp_path / "dest"))):
        code, out, err, peak_kib = run_measured(*args, cwd=tmp_path)
        _one_line_failure(subprocess.CompletedProcess(args, code, out, err), ["long name", "tar byte 512"])
        # The payload is never held: peak memory stays that of the interpreter and its imports.
        assert peak_kib < 200 * 1024, peak_kib
