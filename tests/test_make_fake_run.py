"""Tests for scripts/make_fake_run.py, the generator of fake Illumina run folders."""

from __future__ import annotations

import gzip
import os
import stat
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import make_fake_run  # noqa: E402 -- scripts/ is not a package: importable only after the sys.path entry above

SIZE = 8 << 20
SEED = 3
NAMES = {
    "miseq": "240101_M04034_0012_000000000-ABCDE",
    "novaseq": "240101_A00834_0012_BHXXXXDSXX",
    "hiseq": "240101_D00118_0012_AHXXXXBCXX",
}
Runs = dict[str, tuple[Path, make_fake_run.RunStats]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """One ~8 MiB run per kind, shared by the read-only tests."""
    base = tmp_path_factory.mktemp("runs")
    return {kind: (base / name, make_fake_run.make_run(base / name, kind, SIZE, seed=SEED))
            for kind, name in NAMES.items()}


def regular_files(root: Path) -> dict[str, Path]:
    """Relative POSIX path -> path of every regular file below root."""
    out = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory, name)
            out[path.relative_to(root).as_posix()] = path
    return out


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every path below root with (mode, mtime_ns, content or None for directories)."""
    out = {}
    for directory, _, names in os.walk(root):
        info = os.lstat(directory)
        out[os.path.relpath(directory, root)] = (info.st_mode, info.st_mtime_ns, None)
        for name in names:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, root)] = (info.st_mode, info.st_mtime_ns, handle.read())
    return out


def test_parse_size() -> None:
    assert make_fake_run.parse_size("500M") == 500 << 20
    assert make_fake_run.parse_size("2G") == 2 << 30
    assert make_fake_run.parse_size("1500K") == 1500 << 10
    assert make_fake_run.parse_size("1.5g") == 3 << 29
    assert make_fake_run.parse_size("123456") == 123456
    for bad in ("", "12X", "-5M", "M"):
        with pytest.raises(ValueError):
            make_fake_run.parse_size(bad)


@pytest.mark.parametrize("kind", make_fake_run.KINDS)
def test_size_and_stats(runs: Runs, kind: str) -> None:
    root, stats = runs[kind]
    files = regular_files(root)
    total = sum(p.stat().st_size for p in files.values())
    assert abs(total - SIZE) <= 0.05 * SIZE
    assert stats == make_fake_run.RunStats(files=len(files), bytes=total, kind=kind)


@pytest.mark.parametrize("kind", make_fake_run.KINDS)
def test_run_info_matches_data(runs: Runs, kind: str) -> None:
    root, _ = runs[kind]
    run = ET.parse(root / "RunInfo.xml").getroot().find("Run")
    assert run is not None and run.get("Id") == root.name
    cycles = sum(int(read.get("NumCycles")) for read in run.iter("Read"))
    layout = run.find("FlowcellLayout")
    lanes = int(layout.get("LaneCount"))
    tiles = int(layout.get("SurfaceCount")) * int(layout.get("SwathCount")) * int(layout.get("TileCount"))
    basecalls = root / "Data/Intensities/BaseCalls"
    assert sorted(p.name for p in basecalls.glob("L00*")) == [f"L{n:03d}" for n in range(1, lanes + 1)]
    for lane in range(1, lanes + 1):
        lane_dir = basecalls / f"L{lane:03d}"
        assert len(list(lane_dir.glob("C*.1"))) == cycles
        assert len(list(lane_dir.glob(f"s_{lane}_*.filter"))) == tiles
    if kind == "novaseq":  # the tile list names every lane's tiles
        assert len(run.findall("FlowcellLayout/TileSet/Tiles/Tile")) == lanes * tiles
    params = "RunParameters.xml" if kind != "hiseq" else "runParameters.xml"
    ET.parse(root / params)


def test_miseq_layout_and_bcl_compressibility(runs: Runs) -> None:
    root, _ = runs["miseq"]
    files = regular_files(root)
    bcls = [p for name, p in sorted(files.items()) if name.endswith(".bcl")]
    assert bcls and all(name.startswith("Data/Intensities/BaseCalls/L001/C") for name in files
                        if name.endswith((".bcl", ".stats")))
    assert "Data/Intensities/BaseCalls/L001/C1.1/s_1_1101.bcl" in files
    assert "Data/Intensities/BaseCalls/L001/s_1_1101.filter" in files
    assert "Data/Intensities/L001/s_1_1101.locs" in files
    data = b"".join(p.read_bytes() for p in bcls)
    first = bcls[0].read_bytes()
    assert struct.unpack_from("<I", first)[0] == len(first) - 4  # cluster count header
    ratio = len(data) / len(gzip.compress(data, compresslevel=1))
    assert 1.3 < ratio < 2.0, ratio
    jpgs = [p for name, p in files.items() if name.startswith("Thumbnail_Images/") and name.endswith(".jpg")]
    assert jpgs and all(p.read_bytes()[:11] == b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" for p in jpgs)
    assert any(name.startswith("InterOp/") and name.endswith(".bin") for name in files)
    assert any(name.startswith("Logs/") for name in files)
    assert (root / "Images").is_dir() and not any((root / "Images").iterdir())


def test_novaseq_bytes_are_precompressed_cbcl(runs: Runs) -> None:
    root, stats = runs["novaseq"]
    cbcls = [p for name, p in sorted(regular_files(root).items()) if name.endswith(".cbcl")]
    data = b"".join(p.read_bytes() for p in cbcls)
    assert len(data) > 0.95 * stats.bytes
    assert abs(len(gzip.compress(data, compresslevel=1)) / len(data) - 1) < 0.03


def test_novaseq_cbcl_blocks_are_valid(runs: Runs) -> None:
    root, _ = runs["novaseq"]
    lane_dir = root / "Data/Intensities/BaseCalls/L001"
    filters = {int(p.stem.split("_")[2]): p.read_bytes() for p in lane_dir.glob("s_1_*.filter")}
    seen_tiles = set()
    for path in sorted(lane_dir.glob("C*.1/L001_*.cbcl"))[:40]:
        raw = path.read_bytes()
        version, header_size, bits_call, bits_q, n_bins = struct.unpack_from("<HIBBI", raw)
        assert (version, bits_call, bits_q) == (1, 2, 2)
        offset = 12 + 8 * n_bins
        (n_tiles,) = struct.unpack_from("<I", raw, offset)
        records = [struct.unpack_from("<IIII", raw, offset + 4 + 16 * i) for i in range(n_tiles)]
        assert header_size == offset + 4 + 16 * n_tiles + 1  # + non-PF-excluded flag byte
        position = header_size
        for tile, clusters, uncompressed, compressed in records:
            block = raw[position:position + compressed]
            assert block[:2] == b"\x1f\x8b"
            assert len(zlib.decompress(block, 31)) == uncompressed == (clusters + 1) // 2
            assert struct.unpack_from("<I", filters[tile], 8)[0] == clusters
            position += compressed
            seen_tiles.add(tile)
        assert position == len(raw)
    assert seen_tiles == set(filters)


@pytest.mark.slow  # 5000 files made: seconds
def test_hiseq_many_small_gzip_files(tmp_path: Path) -> None:
    stats = make_fake_run.make_run(tmp_path / "run", "hiseq", 6 << 20, seed=SEED, files=5000)
    files = regular_files(tmp_path / "run")
    assert stats.files == len(files) >= 5000
    gz = [p for name, p in sorted(files.items()) if name.endswith(".bcl.gz")]
    assert len(gz) > 500
    for path in gz[::200]:
        payload = gzip.decompress(path.read_bytes())
        assert struct.unpack_from("<I", payload)[0] == len(payload) - 4
    assert (tmp_path / "run/SequencingComplete.txt").exists()


@pytest.mark.parametrize("kind", make_fake_run.KINDS)
def test_same_seed_is_identical_other_seed_differs(runs: Runs, tmp_path: Path, kind: str) -> None:
    original, _ = runs[kind]
    again = tmp_path / "same" / original.name
    make_fake_run.make_run(again, kind, SIZE, seed=SEED)
    reference = snapshot(original)
    assert snapshot(again) == reference
    mtime = (make_fake_run.EPOCH_2024 + SEED) * 10**9
    assert {mt for _, mt, _ in reference.values()} == {mtime}
    assert {stat.S_IMODE(mode) for mode, _, _ in reference.values()} == {0o644, 0o755}
    if kind == "miseq":  # one kind is enough for the seed's effect; it spares two generations
        other = tmp_path / "other" / original.name
        make_fake_run.make_run(other, kind, SIZE, seed=SEED + 1)
        changed = snapshot(other)
        assert changed.keys() == reference.keys()
        assert any(changed[name][2] != reference[name][2] for name in reference)


def test_markers(runs: Runs) -> None:
    expected = {
        "miseq": {"RTAComplete.txt", "CopyComplete.txt", "RunCompletionStatus.xml"},
        "novaseq": {"RTAComplete.txt", "SequenceComplete.txt", "CopyComplete.txt", "RunCompletionStatus.xml"},
        "hiseq": {"RTAComplete.txt", "SequencingComplete.txt"},
    }
    for kind, names in expected.items():
        root, _ = runs[kind]
        assert names <= {p.name for p in root.iterdir()}
    miseq_status = ET.parse(runs["miseq"][0] / "RunCompletionStatus.xml").getroot()
    assert miseq_status.findtext("CompletionStatus") == "CompletedAsPlanned"
    nova_status = ET.parse(runs["novaseq"][0] / "RunCompletionStatus.xml").getroot()
    assert nova_status.findtext("RunStatus") == "RunCompleted"


@pytest.mark.parametrize("kind", make_fake_run.KINDS)
def test_no_markers(tmp_path: Path, kind: str) -> None:
    make_fake_run.make_run(tmp_path / "run", kind, 1 << 20, seed=SEED, markers=False)
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert "RunInfo.xml" in names
    assert not names & {"RTAComplete.txt", "CopyComplete.txt", "SequenceComplete.txt",
                        "SequencingComplete.txt", "RunCompletionStatus.xml"}


def test_errored(tmp_path: Path) -> None:
    make_fake_run.make_run(tmp_path / "nova", "novaseq", 1 << 20, seed=SEED, errored=True)
    status = ET.parse(tmp_path / "nova/RunCompletionStatus.xml").getroot()
    assert status.findtext("RunStatus") == "RunErrored"
    assert status.findtext("RunError/Message")
    make_fake_run.make_run(tmp_path / "miseq", "miseq", 1 << 20, seed=SEED, errored=True)
    status = ET.parse(tmp_path / "miseq/RunCompletionStatus.xml").getroot()
    assert status.findtext("CompletionStatus") != "CompletedAsPlanned"
    with pytest.raises(ValueError):
        make_fake_run.make_run(tmp_path / "hiseq", "hiseq", 1 << 20, errored=True)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPTS / "make_fake_run.py"), *args],
                          check=False, capture_output=True, text=True, timeout=60)


def test_cli_refuses_non_empty_outdir(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    result = run_cli(str(tmp_path), "--kind", "miseq", "--size", "1M")
    assert result.returncode == 2
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_cli_creates_run(tmp_path: Path) -> None:
    out = tmp_path / "empty_already"
    out.mkdir()  # an existing empty directory is accepted
    result = run_cli(str(out), "--kind", "hiseq", "--size", "1500K", "--seed", "7")
    assert result.returncode == 0, result.stderr
    fields = dict(item.split("=") for item in result.stdout.split())
    assert fields["kind"] == "hiseq" and float(fields["seconds"]) >= 0
    files = regular_files(out)
    assert int(fields["files"]) == len(files)
    assert int(fields["bytes"]) == sum(p.stat().st_size for p in files.values())
