"""Random access: `ls`, `cat` and `restore --include` read the manifest, the access index
and only the ranges of the archive that hold the members asked for.

Archives are made by the real CLI with small blocks and a 1 MiB access interval, so a
few MiB of run have several access points and a member that spans some. Oracles: GNU
tar (what it extracts, what `tar tzf` lists), the run folder's bytes, and, for what a
ranged read costs, the bytes the loopback proxy saw answered, against the span the
index itself gives (parsed here, not by the code under test).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from helpers import child_env, gnu_untar, run_in_process, tree

RUN = "241127_M00001_0042_000000000-RANDOM"
ACCESS = ("--block-size", "256K", "--access-interval", "1M")


_VOCAB = [b"tile", b"cycle", b"lane", b"swath", b"<Read Number=", b"cluster", b"0.93", b"PF", b"\n"]
_TEXT = b" ".join(random.Random(1).choice(_VOCAB) + b"%d" % i for i in range(40_000))


def _words(rng: random.Random, n: int) -> bytes:
    # Compressible, like the text and XML of a run, and no two stretches of it alike.
    pieces, size = [], 0
    while size < n:
        at = rng.randrange(len(_TEXT) - 4096)
        pieces.append(_TEXT[at : at + 4096])
        size += 4096
    return b"".join(pieces)[:n]


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run whose members sit at the start, middle and end of the stream, one spanning
    several access points, an empty file and a symlink."""
    rng = random.Random(7)
    root = tmp_path / "runs" / RUN
    (root / "Data" / "Intensities").mkdir(parents=True)
    (root / "InterOp").mkdir()
    (root / "RunInfo.xml").write_bytes(b'<?xml version="1.0"?>\n<RunInfo><Run Id="' + RUN.encode() + b'"/></RunInfo>\n')
    for i in range(120):
        (root / "Data" / "Intensities" / f"s_{i:03d}.bcl").write_bytes(_words(rng, 30_000 + i))
    (root / "Data" / "big.bin").write_bytes(_words(rng, 5 << 20))  # spans several access points
    (root / "Data" / "empty.txt").write_bytes(b"")
    for name in ("ExtractionMetrics.bin", "QMetrics.bin", "TileMetrics.bin"):
        (root / "InterOp" / name).write_bytes(rng.randbytes(70_000))  # incompressible: stored blocks
    (root / "SampleSheet.csv").write_bytes(b"[Header]\nIEMFileVersion,4\n")
    os.symlink("RunInfo.xml", root / "RunInfo.link")
    (root / "zz_last.txt").write_bytes(b"the last member\n")
    return root


def _archive(run: Path, dest: str, cwd: Path, *extra: str) -> dict:
    # --not-finished: this folder has no completion markers (what is tested is reading back).
    proc = run_in_process("archive", str(run), "--dest", dest, "--journal", str(cwd / "sruns.db"), "--json", *ACCESS,
                          "--not-finished", *extra, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _cat(source: str, member: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """`sruns-stream cat`, its stdout as bytes."""
    return run_in_process("cat", "-v", source, member, cwd=cwd, env=env, timeout=120, text=False)


def _index(path_or_bytes: Path | bytes) -> list[tuple[int, int]]:
    """The access points, parsed here: (raw, archive) per line after the header."""
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    lines = data.decode().splitlines()
    assert lines[0].startswith("raw_offset\tarchive_offset\t")
    return [(int(a), int(b)) for a, b in (line.split("\t") for line in lines[1:])]


def _shift_index_line(index: Path, k: int, by: int) -> int:
    """Move access point k's archive offset by ``by`` bytes, keeping the line's format;
    returns the point's raw offset."""
    head, *lines = index.read_text().splitlines(keepends=True)
    raw, arch = lines[k].rstrip("\n").split("\t")
    lines[k] = f"{raw}\t{int(arch) + by:020d}\n"
    index.write_text(head + "".join(lines))
    return int(raw)


def _offsets(manifest: Path | bytes) -> dict[str, int]:
    data = manifest if isinstance(manifest, bytes) else manifest.read_bytes()
    lines = data.decode().split("\n")
    header = lines[0].split("\t")
    col = header.index("offset")
    return {cols[0]: int(cols[col]) for cols in (line.split("\t") for line in lines[1:] if line)}


MEMBERS = ["RunInfo.xml", "Data/Intensities/s_060.bcl", "Data/big.bin", "Data/empty.txt", "InterOp/QMetrics.bin",
           "zz_last.txt"]


def test_cat_writes_each_member_exactly_as_gnu_tar_extracts_it(run: Path, tmp_path: Path) -> None:
    archive = Path(_archive(run, str(tmp_path / "dest"), tmp_path)["location"])
    gnu_untar(archive, tmp_path / "gnu")
    points = _index(archive.with_name(f"{RUN}.index.tsv"))
    assert len(points) >= 8, points  # the test is about a stream with several access points
    for member in MEMBERS:
        proc = _cat(str(archive), f"{RUN}/{member}", tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == (tmp_path / "gnu" / RUN / member).read_bytes() == (run / member).read_bytes(), member
        assert b"1 ranged read" in proc.stderr, proc.stderr
    # The run folder's name may be left out.
    assert _cat(str(archive), "RunInfo.xml", tmp_path).stdout == (run / "RunInfo.xml").read_bytes()


def test_cat_refuses_what_is_not_one_file_in_one_line(run: Path, tmp_path: Path) -> None:
    archive = _archive(run, str(tmp_path / "dest"), tmp_path)["location"]
    for member, expect in [
        ("Data", b"is a directory"), ("RunInfo.link", b"is a symlink"), ("nope.txt", b"not a member")
    ]:
        proc = _cat(archive, f"{RUN}/{member}", tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == b""
        assert expect in proc.stderr and proc.stderr.count(b"\n") == 1 and b"Traceback" not in proc.stderr


def test_restore_include_reads_only_ranges_and_restores_what_gnu_tar_does(run: Path, tmp_path: Path) -> None:
    archive = Path(_archive(run, str(tmp_path / "dest"), tmp_path)["location"])
    gnu_untar(archive, tmp_path / "gnu")
    include = [f"{RUN}/InterOp", f"{RUN}/RunInfo.xml", f"{RUN}/RunInfo.link", f"{RUN}/Data/empty.txt",
               f"{RUN}/zz_last.txt"]
    args = [a for p in include for a in ("--include", p)]
    proc = run_in_process("restore", str(archive), str(tmp_path / "out"), *args, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["ranges"] >= 1 and report["files"] == 6 and report["links"] == 1
    assert report["archive_bytes"] < archive.stat().st_size / 3  # not the whole archive
    def selected(t: dict) -> dict:  # folders made only to hold what was asked for are not compared
        return {k: v for k, v in t.items() if any(k == p or k.startswith(p + "/") for p in include)}

    got = tree(tmp_path / "out")
    assert selected(got) == selected(tree(tmp_path / "gnu"))
    assert set(got) - set(selected(got)) == {RUN, f"{RUN}/Data"}


def test_cat_and_restore_from_gcs_download_only_the_span_the_index_gives(gcs, run: Path, tmp_path: Path) -> None:
    _archive(run, f"gs://{gcs.bucket}/runs", tmp_path)
    blob = f"runs/{RUN}/{RUN}.tar.gz"
    size = int(gcs.resource(blob)["size"])
    points = _index(gcs.download(f"runs/{RUN}/{RUN}.index.tsv"))
    offsets = _offsets(gcs.download(f"runs/{RUN}/{RUN}.manifest.tsv"))
    order = sorted(offsets, key=offsets.__getitem__)
    with FaultProxy(gcs.url) as proxy:
        env = {"STORAGE_EMULATOR_HOST": proxy.url}
        for member in (f"{RUN}/RunInfo.xml", f"{RUN}/Data/Intensities/s_060.bcl", f"{RUN}/Data/big.bin"):
            proxy.log.clear()
            proc = _cat(f"gs://{gcs.bucket}/{blob}", member, tmp_path, env)
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout == (run / member.split("/", 1)[1]).read_bytes()
            start, end = offsets[member], offsets[order[order.index(member) + 1]]
            first = max(i for i, (raw, _) in enumerate(points) if raw <= start)
            last = min((i for i, (raw, _) in enumerate(points) if raw >= end), default=None)
            span = (points[last][1] if last is not None else size) - points[first][1]
            downloaded = sum(x.sent for x in proxy.log if x.method == "GET" and "alt=media" in x.path
                             and f"{RUN}.tar.gz" in x.path)
            assert downloaded == span < size, (member, downloaded, span, size)
        proxy.log.clear()
        proc = run_in_process("restore", f"gs://{gcs.bucket}/{blob}", str(tmp_path / "out"), "--include",
                              f"{RUN}/InterOp", "--json", cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        downloaded = sum(x.sent for x in proxy.log if x.method == "GET" and "alt=media" in x.path
                         and f"{RUN}.tar.gz" in x.path)
        assert downloaded == json.loads(proc.stdout)["archive_bytes"] < size / 3
    assert tree(tmp_path / "out" / RUN / "InterOp") == tree(run / "InterOp")


def test_a_flipped_byte_in_the_range_read_is_an_error_never_wrong_bytes(run: Path, tmp_path: Path) -> None:
    archive = Path(_archive(run, str(tmp_path / "dest"), tmp_path)["location"])
    points = _index(archive.with_name(f"{RUN}.index.tsv"))
    offsets = _offsets(archive.with_name(f"{RUN}.manifest.tsv"))
    member = f"{RUN}/Data/big.bin"
    # A byte in the middle of the compressed span that holds big.bin's data.
    inside = [arch for raw, arch in points if offsets[member] < raw < offsets[member] + (5 << 20)]
    data = bytearray(archive.read_bytes())
    data[(inside[0] + inside[1]) // 2] ^= 0x5A
    archive.write_bytes(bytes(data))
    proc = _cat(str(archive), member, tmp_path)
    assert proc.returncode == 1
    assert b"damaged" in proc.stderr and member.encode() in proc.stderr and b"Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout != (run / "Data/big.bin").read_bytes()
    restored = run_in_process("restore", str(archive), str(tmp_path / "out"), "--include", member, "--json",
                              cwd=tmp_path)
    assert restored.returncode == 1
    report = json.loads(restored.stdout)
    assert not report["ok"] and "big.bin" in " ".join(report["problems"])
    assert not (tmp_path / "out" / RUN / "Data" / "big.bin").exists()  # nothing unchecked stays


def test_an_index_that_lies_is_caught(run: Path, tmp_path: Path) -> None:
    """An index whose archive offsets point elsewhere (same line format) must fail the
    read, never hand out other bytes as the member."""
    archive = Path(_archive(run, str(tmp_path / "dest"), tmp_path)["location"])
    raw = _shift_index_line(archive.with_name(f"{RUN}.index.tsv"), 3, 1000)
    offsets = _offsets(archive.with_name(f"{RUN}.manifest.tsv"))
    member = max((m for m in offsets if offsets[m] >= raw and m.endswith(".bcl")), key=offsets.__getitem__,
                 default=f"{RUN}/Data/big.bin")
    proc = _cat(str(archive), member, tmp_path)
    if proc.returncode == 0:  # the lie was not on this member's way: then the bytes are right
        assert proc.stdout == (run / member.split("/", 1)[1]).read_bytes()
    else:
        assert proc.returncode in (1, 2) and b"Traceback" not in proc.stderr, proc.stderr
    # The member read from point 3 itself must fail: its first bytes are not a block start.
    first_after = min((m for m in offsets if offsets[m] >= raw), key=offsets.__getitem__)
    proc = _cat(str(archive), first_after, tmp_path)
    assert proc.returncode != 0 and b"Traceback" not in proc.stderr, (first_after, proc.stderr)


def test_archives_without_an_index_or_offsets_are_read_from_the_start(run: Path, tmp_path: Path) -> None:
    archive = Path(_archive(run, str(tmp_path / "dest"), tmp_path)["location"])
    # An archive from before access points: no index beside it.
    archive.with_name(f"{RUN}.index.tsv").unlink()
    proc = _cat(str(archive), f"{RUN}/zz_last.txt", tmp_path)
    assert proc.returncode == 0 and proc.stdout == b"the last member\n"
    assert b"no access index" in proc.stderr and b"from the start" in proc.stderr.replace(b"its start", b"the start")
    # ... and a manifest from before the offset column: the first seven columns only.
    manifest = archive.with_name(f"{RUN}.manifest.tsv")
    manifest.write_bytes(b"\n".join(b"\t".join(line.split(b"\t")[:7]) for line in manifest.read_bytes().split(b"\n")))
    proc = run_in_process("restore", str(archive), str(tmp_path / "out"), "--include", f"{RUN}/InterOp", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no offset column" in proc.stderr
    assert tree(tmp_path / "out" / RUN / "InterOp") == tree(run / "InterOp")


def test_members_in_later_volumes(run: Path, tmp_path: Path) -> None:
    result = _archive(run, str(tmp_path / "dest"), tmp_path, "--volume-size", "1M")
    assert result["volumes"] >= 3
    for member in ("Data/big.bin", "InterOp/TileMetrics.bin", "zz_last.txt"):
        proc = _cat(result["location"], f"{RUN}/{member}", tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == (run / member).read_bytes()
    # Verified on two threads across the volumes: the index's offsets are the concatenation's.
    code, report = _verify(result["location"], tmp_path, "--threads", "2")
    assert code == 0 and report["files"] == result["files"], report


def test_ls_answers_from_the_manifest_alone(run: Path, tmp_path: Path) -> None:
    archive = Path(_archive(run, str(tmp_path / "dest"), tmp_path)["location"])
    listed = subprocess.run(["tar", "tzf", str(archive)], capture_output=True, text=True, check=True).stdout
    # The archive's bytes are not needed: replace them all with zeros.
    archive.write_bytes(bytes(archive.stat().st_size))
    proc = run_in_process("ls", str(archive), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [line.rstrip("/") for line in listed.splitlines()]
    proc = run_in_process("ls", str(archive), "--long", "--include", f"{RUN}/InterOp", cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert len(lines) == 4 and lines[0].startswith("d") and lines[1].startswith("-rw-")
    assert lines[1].split()[1] == "70000" and lines[1].endswith(f"{RUN}/InterOp/ExtractionMetrics.bin")
    link = run_in_process("ls", str(archive), "-l", "--include", f"{RUN}/RunInfo.link", cwd=tmp_path).stdout
    assert link.startswith("l") and link.rstrip().endswith(f"{RUN}/RunInfo.link -> RunInfo.xml")
    rows = json.loads(run_in_process("ls", str(archive), "--json", cwd=tmp_path).stdout)
    by_path = {r["path"]: r for r in rows}
    assert by_path[f"{RUN}/Data/empty.txt"]["size"] == 0 and by_path[f"{RUN}/RunInfo.link"]["link"] == "RunInfo.xml"
    assert by_path[RUN]["offset"] == 0 and all(isinstance(r["offset"], int) for r in rows)
    missing = run_in_process("ls", str(archive), "--include", f"{RUN}/Nope", cwd=tmp_path)
    assert missing.returncode == 2 and "matches" in missing.stderr and "Traceback" not in missing.stderr


def test_the_run_name_is_looked_up_in_the_journal(run: Path, tmp_path: Path) -> None:
    _archive(run, str(tmp_path / "dest"), tmp_path)
    shutil.rmtree(run)  # the folder is gone; the archive is found through the journal
    proc = _cat(RUN, "RunInfo.xml", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(b'<?xml version="1.0"?>')
    assert run_in_process("ls", RUN, cwd=tmp_path).stdout.splitlines()[0] == RUN


# --- verify and restore on several threads, through the access points ---------------------


def _verify(source: str, cwd: Path, *extra: str) -> tuple[int, dict]:
    proc = run_in_process("verify", source, "--json", *extra, cwd=cwd)
    return proc.returncode, json.loads(proc.stdout)


def test_verify_and_restore_on_threads_find_what_one_thread_finds(run: Path, tmp_path: Path) -> None:
    archive = Path(_archive(run, str(tmp_path / "dest"), tmp_path)["location"])
    one = _verify(str(archive), tmp_path, "--threads", "1")
    two = _verify(str(archive), tmp_path, "--threads", "2", "--against", str(run))
    assert one[0] == two[0] == 0
    for key in ("members", "files", "data_bytes", "crc32c", "archive_bytes"):
        assert one[1][key] == two[1][key], key
    proc = run_in_process("restore", str(archive), str(tmp_path / "out"), "--threads", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert tree(tmp_path / "out" / RUN) == tree(run)


@pytest.mark.parametrize("where", ["deflate", "trailer", "truncated"])
def test_damage_is_found_on_threads_as_on_one(run: Path, tmp_path: Path, where: str) -> None:
    archive = Path(_archive(run, str(tmp_path / "dest"), tmp_path)["location"])
    points = _index(archive.with_name(f"{RUN}.index.tsv"))
    data = bytearray(archive.read_bytes())
    if where == "deflate":
        data[(points[4][1] + points[5][1]) // 2] ^= 0x5A
    elif where == "trailer":
        data[-6] ^= 0x01  # the CRC32
    else:
        del data[(points[-1][1] + len(data)) // 2:]
    archive.write_bytes(bytes(data))
    for threads in ("1", "2"):
        code, report = _verify(str(archive), tmp_path, "--threads", threads)
        assert code == 1 and not report["ok"] and report["damaged"], (threads, report)


def test_an_index_that_lies_is_a_problem_verify_names(run: Path, tmp_path: Path) -> None:
    archive = Path(_archive(run, str(tmp_path / "dest"), tmp_path)["location"])
    _shift_index_line(archive.with_name(f"{RUN}.index.tsv"), 5, -7)
    code, report = _verify(str(archive), tmp_path, "--threads", "2")
    assert code == 1 and "index" in report["problems"][0], report["problems"]
    # On one thread the archive is read whole, intact; the indexes for other tools beside
    # it (written from the honest index) disagreeing with the index is what is left.
    code, report = _verify(str(archive), tmp_path, "--threads", "1")
    assert code == 1 and report["problems"]
    assert all(".tar.gz.gzidx is not" in p or ".tar.gz.index.sqlite: its gzip seek points" in p
               for p in report["problems"]), report["problems"]


# --- bounded inflation: one large zero-filled file, honest and damaged indexes ----------

RUNINFO = b'<?xml version="1.0"?>\n<RunInfo/>\n'
ZEROS = 256 << 20  # inflates from a few hundred KiB: one read piece of it is the whole file
# Peak RSS allowed a read-back of it: the interpreter and its libraries take about 30 MiB,
# a few pieces in flight a few more; holding the file inflated (what a read that inflates
# a piece at once does) takes more than the file's size (the old code peaked at 539 MiB).
BOUNDED_KIB = 100 << 10


def _measured(*args: str, cwd: Path) -> tuple[int, Path, str, int]:
    """`sruns-stream ARGS` in a real process: (exit code, its stdout's file, stderr, its
    own peak RSS in KiB, `readback_helpers.MEASURED`); stdout goes to a file, unread."""
    from readback_helpers import MEASURED

    out, peak = cwd / "stdout.bin", cwd / "peak_kib.txt"
    with out.open("wb") as fo:
        proc = subprocess.run([sys.executable, "-c", MEASURED, "0", str(peak), *args], cwd=cwd, env=child_env(),
                              stdout=fo,
                              stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    return proc.returncode, out, proc.stderr, int(peak.read_text())


def _all_zeros(path: Path, size: int) -> bool:
    with path.open("rb") as f:
        while piece := f.read(16 << 20):
            if piece.count(0) != len(piece):
                return False
    return path.stat().st_size == size


@pytest.fixture(scope="module")
def zeros(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of a 6-byte file, then one zero-filled file of `ZEROS` bytes, archived with a
    1 MiB access interval (257 points); the archive's folder."""
    base = tmp_path_factory.mktemp("zeros")
    root = base / "runs" / RUN
    (root / "Data").mkdir(parents=True)
    (root / "Data" / "a.txt").write_bytes(b"small\n")
    with (root / "Data" / "zeros.bin").open("wb") as f:
        f.truncate(ZEROS)  # a hole reads as zeros: quick to make
    (root / "RunInfo.xml").write_bytes(RUNINFO)
    return Path(_archive(root, str(base / "dest"), base)["location"]).parent


def _copy(zeros: Path, tmp_path: Path) -> Path:
    """The archive's folder copied (a few hundred KiB): a test may damage its copy."""
    return Path(shutil.copytree(zeros, tmp_path / "dest" / RUN))


def _rewrite_index(folder: Path, keep: int, skip: int = 0) -> None:
    """Keep the first ``keep`` access points; with ``skip``, points 1.. take the archive
    offsets of the points ``skip`` further on, the raw offsets staying where the header
    puts them: each line well formed, point 1 lying about how much lies before it."""
    index = folder / f"{RUN}.index.tsv"
    head, *lines = index.read_text().splitlines(keepends=True)
    cols = [line.rstrip("\n").split("\t") for line in lines]
    out = [cols[0]] + [[cols[k][0], cols[k + skip][1]] for k in range(1, len(cols) - skip)]
    index.write_text(head + "".join(f"{raw}\t{arch}\n" for raw, arch in out[:keep]))


@pytest.mark.timeout(120)
def test_cat_of_a_large_zero_filled_file_stays_in_bounded_memory(zeros: Path, tmp_path: Path) -> None:
    """Caught on the old code: a range was inflated one read piece at a time without
    max_length, so the whole file came out of one call (peak 539 MiB here)."""
    code, out, err, peak = _measured("cat", str(zeros / f"{RUN}.tar.gz"), f"{RUN}/Data/zeros.bin", cwd=tmp_path)
    assert code == 0, err
    assert _all_zeros(out, ZEROS)
    assert peak < BOUNDED_KIB, f"peak RSS {peak >> 10} MiB"


@pytest.mark.timeout(120)
def test_an_index_point_lying_about_its_raw_length_is_an_error_in_bounded_memory(zeros: Path, tmp_path: Path) -> None:
    """Point 1 placed at the archive offset of point 251: the range before it inflates to
    251 MiB where the index says 1 MiB. Caught on the old code: it inflated all of it in
    one call, then wrote the 6 bytes and exited 0."""
    folder = _copy(zeros, tmp_path)
    _rewrite_index(folder, keep=7, skip=250)
    code, _, err, peak = _measured("cat", str(folder / f"{RUN}.tar.gz"), f"{RUN}/Data/a.txt", cwd=tmp_path)
    assert code == 1 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.endswith(f"inflate past raw byte 1048576, where {folder / RUN}.index.tsv places the next access point: "
                         "the archive or its index is damaged"), line
    assert peak < BOUNDED_KIB, f"peak RSS {peak >> 10} MiB"


@pytest.mark.slow  # real processes whose peak memory is the point, over a large archive
@pytest.mark.timeout(120)
def test_an_index_cut_short_is_reported_by_verify_and_restore_stays_bounded(zeros: Path, tmp_path: Path) -> None:
    """The index cut at a line boundary: header and 2 of its 257 points. Caught on the
    old code: verify --threads 2 said OK after inflating the last 255 MiB in one piece,
    and restore did the same."""
    folder = _copy(zeros, tmp_path)
    _rewrite_index(folder, keep=2)
    archive = str(folder / f"{RUN}.tar.gz")
    for threads in ("2", "1"):
        code, out, err, peak = _measured("verify", archive, "--json", "--threads", threads, cwd=tmp_path)
        report = json.loads(out.read_text())
        assert code == 1 and not report["ok"] and report["problem_count"] == 1, (threads, report, err)
        problem = report["problems"][0]
        assert f"{RUN}.index.tsv lists 2 access points" in problem and "has 257" in problem, problem
        assert "cut short" in problem and "read without it" in problem, problem
        # The data itself was checked, by bounded streaming.
        assert report["files"] == 3 and report["data_bytes"] == ZEROS + 6 + len(RUNINFO), report
        assert not report["damaged"], report
        assert peak < BOUNDED_KIB, (threads, f"peak RSS {peak >> 10} MiB")
    code, out, err, peak = _measured("restore", archive, str(tmp_path / "out"), "--threads", "2", cwd=tmp_path)
    assert code == 0, err
    assert "cut short" in err and "Traceback" not in err, err
    assert _all_zeros(tmp_path / "out" / RUN / "Data" / "zeros.bin", ZEROS)
    assert peak < BOUNDED_KIB, f"peak RSS {peak >> 10} MiB"
    # Read by ranges, through what is left of the index (it cannot tell it is cut without
    # the archive's trailer): bounded, and the bytes right.
    code, out, err, peak = _measured("restore", archive, str(tmp_path / "part"), "--include", f"{RUN}/Data/zeros.bin",
                                     cwd=tmp_path)
    assert "Traceback" not in err and peak < BOUNDED_KIB, (err, f"peak RSS {peak >> 10} MiB")
    if code == 0:
        assert _all_zeros(tmp_path / "part" / RUN / "Data" / "zeros.bin", ZEROS)
    else:
        assert code == 1 and "the index is cut short" in out.read_text(), (out.read_text(), err)
