"""Fields read from an archive's index and manifest are range-checked where they are
parsed: a value no writer makes is one error line naming the file, the field and the
value, with the documented exit code (1: an integrity error), never a traceback, and
never a buffer sized by it.

An archive made by the real CLI, its index or manifest then edited as an attacker or a
damaged disk would; every command runs in a real process.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from helpers import run_in_process

RUN = "241127_M00001_0042_000000000-HOSTILE"
ACCESS = ("--block-size", "256K", "--access-interval", "1M")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The archive's folder: a run of 3 MiB of incompressible data (4 access points)."""
    base = tmp_path_factory.mktemp("hostile")
    root = base / "runs" / RUN
    (root / "Data").mkdir(parents=True)
    (root / "RunInfo.xml").write_bytes(b'<?xml version="1.0"?>\n<RunInfo/>\n')
    (root / "Data" / "random.bin").write_bytes(random.Random(3).randbytes(3 << 20))
    proc = run_in_process("archive", str(root), "--dest", str(base / "dest"), "--journal", str(base / "sruns.db"),
                          "--json", "--not-finished", *ACCESS, cwd=base)  # a folder with no markers
    assert proc.returncode == 0, proc.stderr
    return Path(json.loads(proc.stdout)["location"]).parent


@pytest.fixture
def folder(made: Path, tmp_path: Path) -> Path:
    """A copy of the archive's folder, this test's to damage."""
    return Path(shutil.copytree(made, tmp_path / RUN))


def _one_line(proc, *parts: str) -> str:  # type: ignore[no-untyped-def]
    """The one error line on stderr, checked to hold each of ``parts``."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert all(part in lines[0] for part in parts), (parts, lines[0])
    return lines[0]


def _set_manifest_field(folder: Path, member: str, column: str, value: str) -> int:
    """Set ``column`` of ``member``'s manifest row to ``value``; returns its line number."""
    manifest = folder / f"{RUN}.manifest.tsv"
    lines = manifest.read_bytes().decode().split("\n")
    col = lines[0].split("\t").index(column)
    for number, line in enumerate(lines[1:], start=2):
        cols = line.split("\t")
        if cols[0] == member:
            cols[col] = value
            lines[number - 1] = "\t".join(cols)
            manifest.write_bytes("\n".join(lines).encode())
            return number
    raise AssertionError(f"{member} not in the manifest")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("column", "value", "says"),
    [
        # ls -l formatted it with datetime: OverflowError, a traceback.
        ("mtime", str(10**20), f"mtime {10**20} is not a time between the years 1 and 9999"),
        ("mtime", str(-(10**12)), f"mtime {-(10**12)} is not a time between the years 1 and 9999"),
        ("size", "-1", "size -1 is not between 0 and 2^63-1"),
        ("size", str(1 << 63), f"size {1 << 63} is not between 0 and 2^63-1"),
        ("crc32c", "1ffffffff", "crc32c 1ffffffff is not 8 hex digits"),
        ("mode", "177777", "mode 177777 is not permission bits"),
        ("type", "x", "type 'x' is not one of f, d, l"),
        ("offset", str(1 << 64), f"offset {1 << 64} is not between 0 and 2^63-1"),
        # A file row without its crc32c passed every check that compares with it.
        ("crc32c", "", "crc32c '' is not 8 hex digits for a file row"),
        ("crc32c", "1f", "crc32c '1f' is not 8 hex digits for a file row"),
    ],
)
def test_a_manifest_field_out_of_range_is_one_line_naming_it(folder: Path, column: str, value: str, says: str) -> None:
    """Caught on the old code: every one of these was read as it was (ls -l exited 0, or
    with an OverflowError traceback for the mtimes)."""
    number = _set_manifest_field(folder, f"{RUN}/RunInfo.xml", column, value)
    where = f"{folder / RUN}.manifest.tsv line {number}"
    proc = run_in_process("ls", "-l", str(folder / f"{RUN}.tar.gz"), cwd=folder)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    _one_line(proc, where, says, "the manifest is damaged")
    if column == "mtime":
        proc = run_in_process("verify", str(folder / f"{RUN}.tar.gz"), cwd=folder)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        _one_line(proc, where, says)


def _rewrite_index(folder: Path, block_size: int | None = None, last_archive: int | None = None) -> None:
    """The index with its header's block_size set (each line's raw offset moved to where
    that header places the point, so the lines still agree with it), or its last
    point's archive offset set."""
    index = folder / f"{RUN}.index.tsv"
    head, *lines = index.read_text().splitlines()
    cols = [line.split("\t") for line in lines]
    if block_size is not None:
        fields = head.split("\t")
        head = "\t".join(f"block_size={block_size}" if f.startswith("block_size=") else f for f in fields)
        cols = [[f"{k * block_size:020d}", arch] for k, (_, arch) in enumerate(cols)]
    if last_archive is not None:
        cols[-1][1] = f"{last_archive:020d}"
    index.write_text(head + "\n" + "".join(f"{raw}\t{arch}\n" for raw, arch in cols))


@pytest.mark.timeout(60)
def test_an_index_block_size_no_writer_makes_is_reported_not_allocated(folder: Path) -> None:
    """block_size=2^40 with each point where it places them. Caught on the old code:
    verify --threads 2 sized a piece's buffer by it (MemoryError, a traceback)."""
    _rewrite_index(folder, block_size=1 << 40)
    proc = run_in_process("verify", str(folder / f"{RUN}.tar.gz"), "--threads", "2", "--json", cwd=folder)
    assert "Traceback" not in proc.stderr and proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["problem_count"] == 1 and not report["damaged"] and report["files"] == 2, report
    assert report["problems"][0].startswith(
        f"{folder / RUN}.index.tsv: its header's block_size={1 << 40} is not one the writer makes"
    ), report["problems"]
    # cat reads the archive from its start instead, and says why.
    proc = run_in_process("cat", "-v", str(folder / f"{RUN}.tar.gz"), f"{RUN}/RunInfo.xml", cwd=folder)
    assert proc.returncode == 0 and proc.stdout.startswith("<?xml"), proc.stderr
    assert f"block_size={1 << 40}" in proc.stderr and "reading the archive from its start" in proc.stderr


@pytest.mark.timeout(60)
def test_an_index_offset_past_2_63_is_reported(folder: Path) -> None:
    """Caught on the old code: an offset of 2^64-1 was taken as it was (the archive then
    called truncated, not the index damaged)."""
    _rewrite_index(folder, last_archive=(1 << 64) - 1)
    proc = run_in_process("verify", str(folder / f"{RUN}.tar.gz"), "--threads", "2", "--json", cwd=folder)
    assert "Traceback" not in proc.stderr and proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["problem_count"] == 1 and not report["damaged"], report
    assert report["problems"][0].startswith(
        f"{folder / RUN}.index.tsv: access point 3 has an offset of {(1 << 64) - 1}, past 2^63-1"
    ), report["problems"]


@pytest.mark.parametrize("column, value", [("ck_raw", -5), ("ck_crc32", 1 << 40), ("ck_member", "x")])
def test_a_journal_checkpoint_out_of_range_is_one_line(made: Path, tmp_path: Path, column: str, value: object) -> None:
    """A checkpoint column no writer makes (a damaged or hand-edited journal) is one line
    naming the run and the value, when `status` reads the row and when `archive` would
    resume from it; never a traceback, never a resume from it."""
    import sqlite3

    journal = tmp_path / "sruns.db"
    shutil.copy(made.parent.parent / "sruns.db", journal)
    with sqlite3.connect(journal) as db:
        db.execute(f"UPDATE tasks SET {column} = ? WHERE name = ?", (value, RUN))
    proc = run_in_process("status", "--journal", str(journal), cwd=tmp_path)
    assert proc.returncode == 1
    _one_line(proc, f"run {RUN!r}", repr(value), "damaged")
    root = made.parent.parent / "runs" / RUN
    proc = run_in_process("archive", str(root), "--dest", str(tmp_path / "dest"), "--journal", str(journal), *ACCESS,
                          "--not-finished", cwd=tmp_path)
    assert proc.returncode == 1 and not (tmp_path / "dest").exists()
    _one_line(proc, f"run {RUN!r}", repr(value), "damaged")


def test_a_packed_journal_column_of_broken_pairs_is_one_line(tmp_path: Path) -> None:
    """The members' crc32c and the access points are stored packed as pairs: a blob that
    is not whole pairs (a damaged journal) is a JournalError naming the damage, never a
    ValueError from deep inside, and never a pair made up from half of one."""
    import sqlite3

    from sruns_stream.errors import JournalError
    from sruns_stream.state.journal import Journal

    path = tmp_path / "sruns.db"
    Journal(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO member_crcs (task, seq, pairs, segment, points) VALUES (?, 0, ?, -1, ?)",
                   (RUN, b"\x01\x00\x00\x00" * 3, b"\x00" * 24))
    journal = Journal(path)
    try:
        with pytest.raises(JournalError, match="not whole pairs"):
            journal.member_crcs(RUN, 10)
        with pytest.raises(JournalError, match="not whole pairs"):
            journal.access_points(RUN)
    finally:
        journal.close()


@pytest.mark.timeout(60)
def test_a_manifest_row_listed_twice_is_one_line(folder: Path) -> None:
    """A second row for a path (a later one would silently replace the first)."""
    manifest = folder / f"{RUN}.manifest.tsv"
    lines = manifest.read_bytes().decode().rstrip("\n").split("\n")
    row = next(line for line in lines[1:] if line.split("\t")[0] == f"{RUN}/RunInfo.xml")
    manifest.write_bytes(("\n".join([*lines, row]) + "\n").encode())
    proc = run_in_process("verify", str(folder / f"{RUN}.tar.gz"), cwd=folder)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    _one_line(proc, f"line {len(lines) + 1}", f"'{RUN}/RunInfo.xml' is listed twice", "the manifest is damaged")
