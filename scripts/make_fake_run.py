#!/usr/bin/env python3
"""Generate seeded, realistic Illumina run folders of a requested size.

Used by the sruns-stream tests and benchmarks. Three kinds, laid out as the instruments lay out their run folders:

* ``miseq``   MiSeq, MCS v4 / RTA 1.18: raw ``s_1_<tile>.bcl`` + ``.stats`` per tile and cycle
              (compress ~1.6x with gzip -1, like real raw BCL), ``.filter``, ``.locs``,
              RTAComplete.txt, CopyComplete.txt, RunCompletionStatus.xml (CompletionStatus).
* ``novaseq`` NovaSeq 6000, RTA3: ``L00N_{1,2}.cbcl`` per lane, surface and cycle, one gzip member
              per tile, so >95 % of the bytes are already deflated; ``s.locs``, per-cycle InterOp,
              RTAComplete.txt, SequenceComplete.txt, CopyComplete.txt, RunCompletionStatus.xml
              (RunStatus).
* ``hiseq``   HiSeq 2500, RTA 1.18: one small ``s_N_<tile>.bcl.gz`` (a real gzip file) + ``.stats``
              per tile and cycle, ``.filter``, ``.control``, ``.clocs``: many small files;
              RTAComplete.txt + SequencingComplete.txt.

All kinds also get RunInfo.xml (Run/@Id = folder name; reads, lanes and tiles match the data),
a RunParameters file, InterOp/*.bin, Logs, Thumbnail_Images/*.jpg and an empty Images/ (or Recipe/)
directory.

How a layout is chosen: lanes x tiles x cycles come from a per-kind ladder of real-looking flow cell
layouts (largest first); without ``files`` the largest layout whose tiles still hold a plausible
number of clusters is used, with ``files`` the layout whose file count first reaches that number.
The clusters per tile are then solved from a linear size model, and the last log file absorbs the
remainder, so the total is normally exact.

Speed: file contents are cut from a few MiB of per-seed pools (raw BCL bytes, 4-bit CBCL bytes,
noise for JPEG bodies, InterOp records, log text) at random offsets. Pools are far larger than
deflate's 32 KiB window, so gzip cannot find repeats between files. Compressed payloads (.bcl.gz
files, CBCL tile blocks) are whole gzip members compressed once per run and reused.

Determinism: the same (kind, size, seed, files, markers, errored) gives byte-identical folders,
including mtimes: every file and directory gets mtime 2024-01-01T00:00:00Z + seed seconds, files
mode 0o644 and directories 0o755.

CLI:  python scripts/make_fake_run.py OUTDIR --kind {miseq,novaseq,hiseq} --size SIZE
          [--seed N] [--files N] [--no-markers] [--errored]
API:  make_run(path, kind, size, seed=0, files=None, markers=True, errored=False) -> RunStats
      parse_size("500M") -> 524288000   (K/M/G/T are powers of 1024)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import random
import re
import struct
import sys
import time
import zlib
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

KINDS = ("miseq", "novaseq", "hiseq")
EPOCH_2024 = 1_704_067_200  # 2024-01-01T00:00:00Z; every mtime is this + seed seconds
BIG_POOL = 8 << 20  # payload pools: much larger than deflate's 32 KiB window
SMALL_POOL = 1 << 20  # pools for the small per-tile/per-run files
# The pools are i.i.d. symbols, so deflate finds no matches and level 1 compresses almost as well
# as level 6 (measured 1.41x vs 1.45x on BCL bytes) at a fraction of the time.
GZIP_LEVEL = 1
MIN_CLUSTERS = 16  # floor when the requested size is too small for the layout
MIN_CYCLES = 26  # shortest run --files may ask for (1x26, as for 10x Genomics read 1)
SIZE_MARGIN = 0.0025  # share of the size left to the last log file for the size model's error

Read = tuple[int, bool]  # (cycles, is index read)
Entry = tuple[str, str, Any]  # (relative path, content type, type-specific argument)


@dataclass(frozen=True)
class RunStats:
    """What make_run wrote: number of regular files and their total size in bytes."""

    files: int
    bytes: int
    kind: str


@dataclass(frozen=True)
class Geometry:
    """Flow cell layout as in RunInfo.xml FlowcellLayout (TileCount = tiles per swath)."""

    lanes: int
    surfaces: int
    swaths: int
    tiles_per_swath: int

    @property
    def tiles(self) -> list[int]:
        """Tile numbers of one lane: surface digit, swath digit, two-digit tile (e.g. 2114)."""
        return [
            surface * 1000 + swath * 100 + tile
            for surface in range(1, self.surfaces + 1)
            for swath in range(1, self.swaths + 1)
            for tile in range(1, self.tiles_per_swath + 1)
        ]


@dataclass(frozen=True)
class KindSpec:
    ladder: tuple[tuple[Geometry, int], ...]  # (layout, total cycles), preferred/largest first
    typical_cycles: int  # longest cycle count used before adding tiles in --files mode
    max_cycles: int
    index_cycles: int
    min_clusters: int  # per tile; below this a smaller default layout is taken
    budgets: dict[str, float]  # share of the size for InterOp, thumbnails and logs
    instrument: str
    flowcell: str


_MISEQ_NANO, _MISEQ_MICRO = Geometry(1, 2, 1, 1), Geometry(1, 2, 1, 2)
_MISEQ_V2, _MISEQ_V3 = Geometry(1, 2, 1, 14), Geometry(1, 2, 1, 19)
_HISEQ_HO, _HISEQ_RAPID = Geometry(8, 2, 3, 16), Geometry(2, 2, 2, 16)
_HISEQ_SMALL = (Geometry(1, 2, 2, 16), Geometry(1, 2, 1, 8), Geometry(1, 2, 1, 2), Geometry(1, 1, 1, 2))
# NovaSeq always has two surfaces. Small layouts keep 8+ tiles so that the one-tile s.locs (8 bytes
# per cluster) stays a small share, but few enough that tile blocks stay several KiB: in tiny
# blocks the gzip and CBCL headers are a few % of the bytes and would make re-gzipping pay.
_NOVA_S4, _NOVA_S2, _NOVA_SP = Geometry(4, 2, 6, 78), Geometry(2, 2, 4, 88), Geometry(2, 2, 2, 78)
_NOVA_SMALL = (Geometry(1, 2, 2, 39), Geometry(1, 2, 2, 8), Geometry(1, 2, 1, 4))

SPECS: dict[str, KindSpec] = {
    "miseq": KindSpec(
        ladder=(
            (_MISEQ_V3, 618), (_MISEQ_V2, 518), (_MISEQ_V2, 318), (_MISEQ_V2, 168),
            (_MISEQ_MICRO, 318), (_MISEQ_MICRO, 168), (_MISEQ_NANO, 318), (_MISEQ_NANO, 168),
            (_MISEQ_NANO, 60), (_MISEQ_NANO, 36),
        ),
        typical_cycles=318, max_cycles=618, index_cycles=8, min_clusters=100_000,
        budgets={"interop": 0.015, "jpg": 0.03, "log": 0.003},
        instrument="M04034", flowcell="000000000-L6NVV",
    ),
    "novaseq": KindSpec(
        ladder=(
            (_NOVA_S4, 322), (_NOVA_S2, 322), (_NOVA_SP, 322), (_NOVA_SP, 222),
            (_NOVA_SMALL[0], 322), (_NOVA_SMALL[0], 222), (_NOVA_SMALL[1], 322),
            (_NOVA_SMALL[1], 222), (_NOVA_SMALL[2], 222), (_NOVA_SMALL[2], 172),
        ),
        typical_cycles=322, max_cycles=522, index_cycles=10, min_clusters=50_000,
        budgets={"interop": 0.004, "jpg": 0.002, "log": 0.001},
        instrument="A00834", flowcell="HMTFYDRXX",
    ),
    "hiseq": KindSpec(
        ladder=(
            (_HISEQ_HO, 268), (_HISEQ_HO, 218), (_HISEQ_HO, 116), (_HISEQ_RAPID, 218),
            (_HISEQ_RAPID, 116), (_HISEQ_SMALL[0], 116), (_HISEQ_SMALL[1], 116),
            (_HISEQ_SMALL[2], 116), (_HISEQ_SMALL[2], 59), (_HISEQ_SMALL[3], 59),
            (_HISEQ_SMALL[3], 36), (_HISEQ_SMALL[3], 26),
        ),
        typical_cycles=218, max_cycles=518, index_cycles=8, min_clusters=100_000,
        budgets={"interop": 0.01, "jpg": 0.03, "log": 0.003},
        instrument="D00118", flowcell="CB1TVANXX",
    ),
}

# ---------------------------------------------------------------------------------------------
# Sizes


def parse_size(text: str) -> int:
    """'500M', '2G', '1500K', '1.5G' or plain bytes -> bytes. K, M, G, T are powers of 1024."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(f"invalid size {text!r} (use e.g. 500M, 2G, 1500K or bytes)")
    value = float(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " ")
    if value < 1:
        raise ValueError(f"size must be at least 1 byte, got {text!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------
# Pools of realistic bytes, built once per seed


def _table(weights: dict[int, int], symbol: Callable[[int, int], int]) -> bytes:
    """A 256-byte translate table: weights[v] slots map to symbol(v, slot)."""
    table = bytes(symbol(value, slot) for value, count in weights.items() for slot in range(count))
    assert len(table) == 256, len(table)
    return table


# Raw BCL byte = base in the low 2 bits, Phred quality in the high 6; 0 = no call. Counts are
# slots out of 256 (4 per quality, one per base). Mostly Q38 with a long tail, as in real RTA1
# data; tuned so that gzip -1 gives ~1.58x (real raw .bcl: ~1.55x).
_BCL_TABLE = _table(
    {38: 160, 37: 20, 36: 12, 35: 8, 34: 8, 32: 8, 30: 8, 28: 8, 25: 4, 22: 4, 19: 4, 16: 4, 2: 4, 0: 4},
    lambda q, slot: (q << 2) | (slot & 3) if q else 0,
)
# CBCL call = 4 bits: base in the low 2, quality bin (0..3) in the high 2; bin 0 means no call.
_NIBBLE_TABLE = _table({3: 204, 2: 31, 1: 18, 0: 3}, lambda q, slot: (q << 2) | (slot & 3) if q else 0)
_FILTER_TABLE = _table({1: 205, 0: 51}, lambda v, slot: v)  # ~80 % of clusters pass filter
_CONTROL_TABLE = _table({0: 250, 1: 3, 2: 3}, lambda v, slot: v)  # control flags, nearly all 0
_QBINS = ((0, 0), (1, 12), (2, 23), (3, 37))  # NovaSeq RTA3 bin -> Q mapping
_INTEROP_RECORD = struct.Struct("<HHH4f4HQ")  # ExtractionMetrics v2: lane tile cycle fwhm[4] int[4] time
_JFIF = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
_EOI = b"\xff\xd9"


@functools.lru_cache(maxsize=16)
def _pool(name: str, seed: int) -> bytes:
    """The named pool of content bytes for a seed (cached: benchmarks reuse them across runs)."""
    rng = random.Random(f"{name}:{seed}")
    if name == "bcl":
        return rng.randbytes(BIG_POOL).translate(_BCL_TABLE)
    if name == "cbcl":
        # Two calls per byte. Each nibble string has values < 16 per byte, so shifting the whole
        # big integer by 4 moves every byte's nibble into its high half without carries.
        low = int.from_bytes(rng.randbytes(BIG_POOL).translate(_NIBBLE_TABLE), "little")
        high = int.from_bytes(rng.randbytes(BIG_POOL).translate(_NIBBLE_TABLE), "little")
        return ((high << 4) | low).to_bytes(BIG_POOL, "little")
    if name == "noise":  # JPEG bodies and .clocs offsets: incompressible
        return rng.randbytes(BIG_POOL)
    if name == "filter":
        return rng.randbytes(SMALL_POOL).translate(_FILTER_TABLE)
    if name == "control":
        return rng.randbytes(SMALL_POOL).translate(_CONTROL_TABLE)
    if name == "locs":
        return _locs_pool(rng)
    if name == "stats":  # doubles: intensities, call fractions
        return array("d", (round(rng.uniform(0, 2500), 3) for _ in range(SMALL_POOL // 64))).tobytes()
    if name == "interop":
        return _interop_pool(rng)
    if name == "text":
        return _text_pool(rng)
    raise KeyError(name)


def _locs_pool(rng: random.Random) -> bytes:
    """float32 (x, y) cluster positions, x in [128, 2048) and y in [512, 8192) pixels.

    Built bytewise (C speed): random mantissa bytes; byte 2's top bit is the exponent's low bit,
    and byte 3 (sign + exponent high bits) comes from a table of the allowed exponents.
    """
    count = SMALL_POOL // 4
    out = bytearray(4 * count)
    for column in range(3):
        out[column::4] = rng.randbytes(count)
    high = rng.randbytes(count).translate(_table({0x43: 64, 0x44: 128, 0x45: 64}, lambda v, slot: v))
    out[3::8] = high[0::2].translate(bytes(min(b, 0x44) for b in range(256)))  # x: clamp to < 2048
    out[7::8] = high[1::2].translate(bytes(max(b, 0x44) for b in range(256)))  # y: at least 512
    return bytes(out)


def _interop_pool(rng: random.Random) -> bytes:
    """Binary metric records: counters compress well, float metrics hardly (real InterOp ~1.6x)."""
    count = SMALL_POOL // 4 // _INTEROP_RECORD.size
    out = bytearray(count * _INTEROP_RECORD.size)
    tiles = Geometry(1, 2, 3, 16).tiles
    noise = array("H", rng.randbytes(16 * count))  # 4 FWHM + 4 intensities per record
    fwhm_values = [round(2.3 + i / 100, 2) for i in range(110)]  # FWHM 2.30 .. 3.39 pixels
    for i in range(count):
        fwhm = [fwhm_values[v % 110] for v in noise[8 * i:8 * i + 4]]
        intensity = [150 + v % 3850 for v in noise[8 * i + 4:8 * i + 8]]
        cycle, rest = divmod(i, len(tiles) * 8)
        _INTEROP_RECORD.pack_into(out, i * _INTEROP_RECORD.size, rest // len(tiles) + 1,
                                  tiles[rest % len(tiles)], cycle + 1, *fwhm, *intensity,
                                  638_400_000_000_000_000 + i * 3_170_000)
    return bytes(out)


def _text_pool(rng: random.Random) -> bytes:
    """Instrument log lines; compress several times, like real logs."""
    lines = []
    size = 0
    second = 0.0
    while size < SMALL_POOL // 4:
        second += rng.expovariate(2.0)
        stamp = f"01/01/2024 {int(second // 3600) % 24:02d}:{int(second // 60) % 60:02d}:{second % 60:06.3f}"
        cycle, tile = rng.randrange(1, 320), rng.choice((1101, 1102, 1114, 2101, 2108, 2114))
        kind = rng.randrange(6)
        if kind == 0:
            message = f"Cycle {cycle}: tile {tile} extracted {rng.randrange(200_000, 900_000)} clusters"
        elif kind == 1:
            lane, pf = rng.randrange(1, 9), rng.uniform(70, 95)
            message = f"Base calling lane {lane} cycle {cycle} done, %PF {pf:.2f}"
        elif kind == 2:
            message = f"Temperature flow cell {rng.uniform(19, 21):.2f} C, chiller {rng.uniform(3, 5):.2f} C"
        elif kind == 3:
            message = f"Moving stage to X={rng.uniform(0, 30):.4f} Y={rng.uniform(0, 80):.4f}"
        elif kind == 4:
            message = f"Image acquisition surface {rng.randrange(1, 3)} tile {tile} complete"
        else:
            message = f"Autofocus: best Z {rng.uniform(-5, 5):.3f} um, score {rng.uniform(0.8, 1):.4f}"
        line = f"{stamp}\t{rng.randrange(1, 40):03d}\t{message}\r\n".encode()
        lines.append(line)
        size += len(line)
    return b"".join(lines)


def _cut(pool: bytes, offset: int, length: int) -> list[memoryview]:
    """length bytes of pool from offset, wrapping at its end (repeats are >= the pool apart)."""
    view, out = memoryview(pool), []
    offset %= len(pool)
    while length > 0:
        take = min(length, len(pool) - offset)
        out.append(view[offset:offset + take])
        length -= take
        offset = 0
    return out


def _gzip(data: Sequence[bytes | memoryview]) -> bytes:
    """One gzip member (mtime 0, so output depends only on the data)."""
    comp = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return b"".join([*(comp.compress(chunk) for chunk in data), comp.flush()])


# ---------------------------------------------------------------------------------------------
# Run metadata and XML

_NAME_RE = re.compile(r"^(\d{6}|\d{8})_([^_]+)_(\d+)_(.+)$")


@dataclass(frozen=True)
class RunMeta:
    run_id: str
    date: datetime
    instrument: str
    number: int
    flowcell: str
    side: str  # "A"/"B" for two-sided instruments


def _run_meta(run_id: str, kind: str, seed: int) -> RunMeta:
    """Take instrument, run number and flow cell from a standard folder name, else defaults."""
    spec = SPECS[kind]
    date = datetime.fromtimestamp(EPOCH_2024 + seed, timezone.utc)
    instrument, number, flowcell, side = spec.instrument, 1, spec.flowcell, "A"
    match = _NAME_RE.match(run_id)
    if match:
        with contextlib.suppress(ValueError):
            date = datetime.strptime(match.group(1)[-6:], "%y%m%d").replace(tzinfo=timezone.utc)
        instrument, number, flowcell = match.group(2), int(match.group(3)), match.group(4)
        if kind != "miseq" and flowcell[0] in "AB" and len(flowcell) > 1:
            side, flowcell = flowcell[0], flowcell[1:]
    return RunMeta(run_id, date, instrument, number, flowcell, side)


def _reads(cycles: int, index: int) -> tuple[Read, ...]:
    """Split a cycle count into reads the way runs are set up (2x151 + 8 + 8 for 318 cycles)."""
    if cycles < 2 * index + 20:
        return ((cycles, False),)
    if cycles < 100:
        return ((cycles - index, False), (index, True))
    rest = cycles - 2 * index
    return ((rest - rest // 2, False), (index, True), (index, True), (rest // 2, False))


def _us_date(date: datetime) -> str:
    return f"{date.month}/{date.day}/{date.year} 9:30:00 AM"


def _read_lengths(reads: Sequence[Read]) -> tuple[int, int, int, int]:
    """(read 1, index 1, index 2, read 2) cycles, 0 where absent."""
    data = [c for c, index in reads if not index] + [0]
    indexes = [c for c, index in reads if index] + [0, 0]
    return data[0], indexes[0], indexes[1], data[1]


def _run_info(kind: str, geom: Geometry, reads: Sequence[Read], meta: RunMeta) -> bytes:
    read_lines = "".join(
        f'      <Read Number="{n}" NumCycles="{cycles}" IsIndexedRead="{"Y" if index else "N"}" />\n'
        for n, (cycles, index) in enumerate(reads, 1)
    )
    layout = (f'LaneCount="{geom.lanes}" SurfaceCount="{geom.surfaces}" '
              f'SwathCount="{geom.swaths}" TileCount="{geom.tiles_per_swath}"')
    head = f'<Run Id={quoteattr(meta.run_id)} Number="{meta.number}">\n' \
           f"    <Flowcell>{escape(meta.flowcell)}</Flowcell>\n" \
           f"    <Instrument>{escape(meta.instrument)}</Instrument>\n"
    if kind == "novaseq":
        tiles = "".join(f"          <Tile>{lane}_{tile}</Tile>\n"
                        for lane in range(1, geom.lanes + 1) for tile in geom.tiles)
        return (
            '<?xml version="1.0" encoding="utf-8"?>\n<RunInfo Version="5">\n  ' + head
            + f"    <Date>{_us_date(meta.date)}</Date>\n    <Reads>\n{read_lines}    </Reads>\n"
            f'    <FlowcellLayout {layout} FlowcellSide="{1 if meta.side == "A" else 2}">\n'
            f'      <TileSet TileNamingConvention="FourDigit">\n        <Tiles>\n{tiles}'
            "        </Tiles>\n      </TileSet>\n    </FlowcellLayout>\n    <AlignToPhiX />\n"
            '    <ImageDimensions Width="3200" Height="3607" />\n'
            "    <ImageChannels>\n      <Name>RED</Name>\n      <Name>GREEN</Name>\n    </ImageChannels>\n"
            "  </Run>\n</RunInfo>\n"
        ).encode()
    phix = ""
    if kind == "hiseq":
        phix = "    <AlignToPhiX>\n" + "".join(
            f"      <Lane>{lane}</Lane>\n" for lane in range(1, geom.lanes + 1)) + "    </AlignToPhiX>\n"
    return (
        '<?xml version="1.0"?>\n<RunInfo xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" Version="2">\n  ' + head
        + f"    <Date>{meta.date:%y%m%d}</Date>\n    <Reads>\n{read_lines}    </Reads>\n"
        f"    <FlowcellLayout {layout} />\n{phix}  </Run>\n</RunInfo>\n"
    ).encode()


def _run_parameters(kind: str, geom: Geometry, reads: Sequence[Read], meta: RunMeta) -> bytes:
    r1, i1, i2, r2 = _read_lengths(reads)
    run_id, ns = escape(meta.run_id), ('xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
                                       'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"')
    if kind == "miseq":
        read_lines = "".join(
            f'    <RunInfoRead Number="{n}" NumCycles="{c}" IsIndexedRead="{"Y" if i else "N"}" />\n'
            for n, (c, i) in enumerate(reads, 1))
        body = (
            "  <RunParametersVersion>MiSeq_1_2</RunParametersVersion>\n  <Setup>\n"
            "    <SupportMultipleSurfacesInUI>true</SupportMultipleSurfacesInUI>\n"
            "    <ApplicationVersion>4.0.0.1769</ApplicationVersion>\n"
            f"    <NumTilesPerSwath>{geom.tiles_per_swath}</NumTilesPerSwath>\n"
            f"    <NumSwaths>{geom.swaths}</NumSwaths>\n    <NumLanes>{geom.lanes}</NumLanes>\n"
            "    <ApplicationName>MiSeq Control Software</ApplicationName>\n  </Setup>\n"
            f"  <RunID>{run_id}</RunID>\n  <ScannerID>{escape(meta.instrument)}</ScannerID>\n"
            f"  <RunNumber>{meta.number}</RunNumber>\n  <FPGAVersion>9.5.12</FPGAVersion>\n"
            "  <MCSVersion>4.0.0.1769</MCSVersion>\n  <RTAVersion>1.18.54.4</RTAVersion>\n"
            f"  <Barcode>{escape(meta.flowcell)}</Barcode>\n"
            "  <ReagentKitVersion>Version2</ReagentKitVersion>\n"
            "  <ExperimentName>sruns-stream fake run</ExperimentName>\n  <Chemistry>Amplicon</Chemistry>\n"
            f"  <Reads>\n{read_lines}  </Reads>\n  <RunStartDate>{meta.date:%y%m%d}</RunStartDate>\n"
            "  <RecipeFolder>C:\\Illumina\\MiSeq Control Software\\CustomRecipe</RecipeFolder>\n"
        )
    elif kind == "hiseq":
        body = (
            "  <Setup>\n    <ExperimentName>sruns-stream fake run</ExperimentName>\n"
            f"    <FCPosition>{meta.side}</FCPosition>\n    <WorkFlowType>DUALINDEX</WorkFlowType>\n"
            f"    <PairEndFC>{'true' if r2 else 'false'}</PairEndFC>\n    <Read1>{r1}</Read1>\n"
            f"    <IndexRead1>{i1}</IndexRead1>\n    <IndexRead2>{i2}</IndexRead2>\n    <Read2>{r2}</Read2>\n"
            "    <CompressBcls>true</CompressBcls>\n    <PeriodicSave>Save All Thumbnails</PeriodicSave>\n"
            "    <Flowcell>HiSeq Flow Cell v4</Flowcell>\n    <Sbs>HiSeq SBS Kit v4</Sbs>\n"
            "    <RunMode>RapidHighOutput</RunMode>\n"
            "    <ApplicationName>HiSeq Control Software</ApplicationName>\n"
            "    <ApplicationVersion>2.2.58</ApplicationVersion>\n"
            f"    <RunID>{run_id}</RunID>\n    <ScannerID>{escape(meta.instrument)}</ScannerID>\n"
            f"    <RunStartDate>{meta.date:%y%m%d}</RunStartDate>\n"
            f"    <ScanNumber>{meta.number}</ScanNumber>\n    <Barcode>{escape(meta.flowcell)}</Barcode>\n"
            "  </Setup>\n  <RTAVersion>1.18.66.3</RTAVersion>\n"
        )
    else:
        mode = "S4" if geom.lanes == 4 else "S2" if geom.tiles_per_swath == 88 else "SP"
        body = (
            f"  <Side>{meta.side}</Side>\n  <ReadType>{'PairedEnd' if r2 else 'SingleRead'}</ReadType>\n"
            f"  <Read1NumberOfCycles>{r1}</Read1NumberOfCycles>\n"
            f"  <Read2NumberOfCycles>{r2}</Read2NumberOfCycles>\n"
            f"  <IndexRead1NumberOfCycles>{i1}</IndexRead1NumberOfCycles>\n"
            f"  <IndexRead2NumberOfCycles>{i2}</IndexRead2NumberOfCycles>\n"
            f"  <RunNumber>{meta.number}</RunNumber>\n  <RtaVersion>v3.4.4</RtaVersion>\n"
            "  <RecipeVersion>1.6.0</RecipeVersion>\n"
            "  <ExperimentName>sruns-stream fake run</ExperimentName>\n"
            f"  <RfidsInfo>\n    <FlowCellSerialBarcode>{escape(meta.flowcell)}</FlowCellSerialBarcode>\n"
            f"    <FlowCellMode>{mode}</FlowCellMode>\n  </RfidsInfo>\n"
            f"  <RunId>{run_id}</RunId>\n  <InstrumentName>{escape(meta.instrument)}</InstrumentName>\n"
            f"  <RunStartDate>{meta.date:%y%m%d}</RunStartDate>\n"
            "  <Application>NovaSeq Control Software</Application>\n"
            "  <ApplicationVersion>1.7.0</ApplicationVersion>\n"
            "  <OutputRunFolder>\\\\nas\\runs</OutputRunFolder>\n"
        )
    return f'<?xml version="1.0"?>\n<RunParameters {ns}>\n{body}</RunParameters>\n'.encode()


def _completion_status(kind: str, meta: RunMeta, errored: bool) -> bytes:
    """RunCompletionStatus.xml in its two dialects: NovaSeq (RunStatus) and NextSeq/MiniSeq/MiSeq (CompletionStatus)."""
    if kind == "novaseq":
        status = ("<RunStatus>RunErrored</RunStatus><RunError><Type>Illumina.Instrument.Recipe.Runtime."
                  "Exceptions.RecipeExecutionFailedException</Type><Message>I/O data integrity check "
                  "failed</Message></RunError>") if errored else "<RunStatus>RunCompleted</RunStatus>"
        return (f'<?xml version="1.0" encoding="utf-8"?>\n'
                f"<RunCompletionStatus>{status}</RunCompletionStatus>\n").encode()
    status, error = ("UserEndedEarly", "Thread was aborted") if errored else ("CompletedAsPlanned", "None")
    return (f'<?xml version="1.0"?>\n<RunCompletionStatus>\n  <CompletionStatus>{status}</CompletionStatus>\n'
            f"  <RunId>{escape(meta.run_id)}</RunId>\n  <ErrorDescription>{error}</ErrorDescription>\n"
            "</RunCompletionStatus>\n").encode()


def _sample_sheet(meta: RunMeta, reads: Sequence[Read]) -> bytes:
    r1, _, _, r2 = _read_lengths(reads)
    indexes = ("ATCACGAC", "CGATGTAT", "TTAGGCAT", "TGACCACT")
    samples = "".join(f"S{n},Sample{n},,,N70{n},{index},,\r\n" for n, index in enumerate(indexes, 1))
    return ("[Header]\r\nIEMFileVersion,4\r\n"
            f"Experiment Name,{meta.run_id}\r\nDate,{meta.date:%m/%d/%Y}\r\nWorkflow,GenerateFASTQ\r\n\r\n"
            f"[Reads]\r\n{r1}\r\n" + (f"{r2}\r\n" if r2 else "") + "\r\n"
            "[Data]\r\nSample_ID,Sample_Name,Sample_Plate,Sample_Well,I7_Index_ID,index,Sample_Project,Description\r\n"
            + samples).encode()


def _matrix_text(lane: int) -> bytes:
    rng = random.Random(lane)  # fixed per lane, like a calibration
    rows = "".join(" ".join(f"{rng.uniform(0, 1.2):.6f}" for _ in range(4)) + "\n" for _ in range(4))
    return f"# Auto-generated frequency response matrix lane {lane}\n> A\n> C\n> G\n> T\n{rows}".encode()


_RTA_CONFIG = (b'<?xml version="1.0"?>\n<RTAConfiguration>\n  <Version>1.18.54.4</Version>\n'
               b"  <CompressBcls>false</CompressBcls>\n  <KeepIntensityFiles>false</KeepIntensityFiles>\n"
               b"  <PhasingMode>Empirical</PhasingMode>\n</RTAConfiguration>\n")
_RTA3_CFG = b"[RTA]\r\nVersion=3.4.4\r\nCbclCompression=Gzip\r\nQScoreBins=4\r\nExcludeNonPF=false\r\n"
_PHASING_XML = (b'<?xml version="1.0"?>\n<Parameters>\n  <Phasing>0.0012</Phasing>\n'
                b"  <Prephasing>0.0009</Prephasing>\n</Parameters>\n")
_OFFSETS = b"0\t0\t0.000\t0.000\n1\t0\t-0.512\t0.250\n2\t0\t0.130\t-0.744\n3\t0\t0.371\t0.082\n"

# (version, relative size) of the InterOp files written by RTA1 and RTA3
_INTEROP_RTA1 = {
    "ControlMetricsOut.bin": (1, 1), "CorrectedIntMetricsOut.bin": (2, 4), "ErrorMetricsOut.bin": (3, 2),
    "ExtractionMetricsOut.bin": (2, 3), "ImageMetricsOut.bin": (1, 2), "IndexMetricsOut.bin": (1, 1),
    "QMetricsOut.bin": (6, 12), "TileMetricsOut.bin": (2, 1),
}
_INTEROP_RTA3 = {
    "BasecallingMetricsOut.bin": (1, 8), "CorrectedIntMetricsOut.bin": (3, 5),
    "EmpiricalPhasingMetricsOut.bin": (1, 3), "ExtendedTileMetricsOut.bin": (1, 1),
    "ExtractionMetricsOut.bin": (3, 4), "FWHMGridMetricsOut.bin": (1, 30), "ImageMetricsOut.bin": (3, 3),
    "IndexMetricsOut.bin": (2, 1), "OpticalModelMetricsOut.bin": (1, 1), "PFGridMetricsOut.bin": (1, 5),
    "QMetrics2030Out.bin": (7, 4), "QMetricsByLaneOut.bin": (7, 1), "QMetricsOut.bin": (7, 4),
    "TileMetricsOut.bin": (3, 1),
}
_INTEROP_PER_CYCLE = ("EmpiricalPhasingMetricsOut.bin", "ExtractionMetricsOut.bin")

# ---------------------------------------------------------------------------------------------
# Plan: the list of files (and empty directories) of a run, in write order


def _plan(kind: str, geom: Geometry, reads: Sequence[Read], meta: RunMeta,
          markers: bool, errored: bool) -> list[Entry]:
    """Every path of the run with its content type; sizes are decided later."""
    cycles = sum(c for c, _ in reads)
    tiles = geom.tiles
    out: list[Entry] = [("RunInfo.xml", "lit", _run_info(kind, geom, reads, meta))]
    params = _run_parameters(kind, geom, reads, meta)
    basecalls = "Data/Intensities/BaseCalls"
    if kind == "novaseq":
        out += [("RunParameters.xml", "lit", params), ("RTA3.cfg", "lit", _RTA3_CFG),
                ("Data/Intensities/s.locs", "locs", None)]
        per_surface = len(tiles) // geom.surfaces
        for lane in range(1, geom.lanes + 1):
            out += [(f"{basecalls}/L{lane:03d}/s_{lane}_{tile}.filter", "filter", None) for tile in tiles]
            for cycle in range(1, cycles + 1):
                out += [(f"{basecalls}/L{lane:03d}/C{cycle}.1/L{lane:03d}_{s + 1}.cbcl", "cbcl",
                         tuple(tiles[s * per_surface:(s + 1) * per_surface])) for s in range(geom.surfaces)]
        out += [(f"InterOp/{name}", "interop", spec) for name, spec in _INTEROP_RTA3.items()]
        # together the per-cycle files weigh as much as the root files
        root_weight = sum(weight for _, weight in _INTEROP_RTA3.values())
        for cycle in range(1, cycles + 1):
            out += [(f"InterOp/C{cycle}.1/{name}", "interop",
                     (_INTEROP_RTA3[name][0], root_weight / (cycles * len(_INTEROP_PER_CYCLE))))
                    for name in _INTEROP_PER_CYCLE]
        thumbnails = [(lane, 1, tile, channel) for lane in range(1, geom.lanes + 1)
                      for tile in tiles for channel in ("green", "red")]  # first cycle only
        empty_dir = "Recipe"
    else:
        rta1_logs = [("Data/RTALogs/GlobalLog.tsv", "log", 2), ("Data/RTALogs/Error.txt", "log", 0.05)]
        out += [("RunParameters.xml" if kind == "miseq" else "runParameters.xml", "lit", params)]
        if kind == "miseq":
            out += [("SampleSheet.csv", "lit", _sample_sheet(meta, reads))]
        out += [("Data/Intensities/RTAConfiguration.xml", "lit", _RTA_CONFIG),
                ("Data/Intensities/Offsets/offsets.txt", "lit", _OFFSETS)]
        bcl_suffix, bcl_type = (".bcl", "bcl") if kind == "miseq" else (".bcl.gz", "gzm")
        for lane in range(1, geom.lanes + 1):
            lane_dir = f"{basecalls}/L{lane:03d}"
            locs = "locs" if kind == "miseq" else "clocs"  # HiSeq RTA 1.18 writes compressed locs
            out += [(f"Data/Intensities/L{lane:03d}/s_{lane}_{tile}.{locs}", locs, None) for tile in tiles]
            out += [(f"{basecalls}/Matrix/s_{lane}_matrix.txt", "lit", _matrix_text(lane)),
                    (f"{basecalls}/Phasing/s_{lane}_phasing.xml", "lit", _PHASING_XML)]
            out += [(f"{lane_dir}/s_{lane}_{tile}.filter", "filter", None) for tile in tiles]
            if kind == "hiseq":
                out += [(f"{lane_dir}/s_{lane}_{tile}.control", "control", None) for tile in tiles]
            for cycle in range(1, cycles + 1):
                for tile in tiles:
                    out += [(f"{lane_dir}/C{cycle}.1/s_{lane}_{tile}{bcl_suffix}", bcl_type, None),
                            (f"{lane_dir}/C{cycle}.1/s_{lane}_{tile}.stats", "stats", cycle)]
        out += rta1_logs
        out += [(f"InterOp/{name}", "interop", spec) for name, spec in _INTEROP_RTA1.items()]
        thumbnails = [(lane, cycle, tile, channel) for lane in range(1, geom.lanes + 1)
                      for cycle in range(1, cycles + 1) for tile in tiles for channel in "acgt"]
        empty_dir = "Images"
    log_name = f"Logs/{meta.date:%y%m%d}_{meta.instrument}_{meta.number:04d}"
    out += [("Logs/CycleTimes.txt", "log", 1), (f"{log_name}_Log.00.log", "log", 4),
            (f"{log_name}_Log.01.log", "log", 4)]  # the last log entry absorbs the size remainder
    out += [(f"Thumbnail_Images/L{lane:03d}/C{cycle}.1/s_{lane}_{tile}_{channel}.jpg", "jpg", None)
            for lane, cycle, tile, channel in thumbnails]
    out.append((empty_dir, "dir", None))
    if kind == "miseq":
        out.append(("Recipe", "dir", None))
    if markers:
        out += _markers(kind, meta, errored)
    return out


def _markers(kind: str, meta: RunMeta, errored: bool) -> list[Entry]:
    stamp = _us_date(meta.date)
    if kind == "miseq":
        return [("RTAComplete.txt", "lit", b"Illumina RTA 1.18.54\r\n"), ("CopyComplete.txt", "lit", b""),
                ("RunCompletionStatus.xml", "lit", _completion_status(kind, meta, errored))]
    if kind == "hiseq":
        return [("RTAComplete.txt", "lit", f"RTA 1.18.66.3 completed on {stamp}\r\n".encode()),
                ("SequencingComplete.txt", "lit", b"")]
    return [("RTAComplete.txt", "lit", f"RTA 3.4.4 completed on {stamp}\r\n".encode()),
            ("SequenceComplete.txt", "lit", b""), ("CopyComplete.txt", "lit", b""),
            ("RunCompletionStatus.xml", "lit", _completion_status(kind, meta, errored))]


# ---------------------------------------------------------------------------------------------
# Size model: total bytes = fixed + per_cluster * clusters (+ the budgeted InterOp/jpg/log bytes)


@dataclass
class Compression:
    """Estimated gzip member size for n payload bytes: overhead + n / ratio."""

    ratio: float
    overhead: float

    def size(self, n: float) -> float:
        return self.overhead + n / self.ratio


# content type -> (fixed bytes, bytes per cluster) for uncompressed per-tile files
_LINEAR = {"bcl": (4, 1), "stats": (108, 0), "filter": (12, 1), "control": (12, 2), "locs": (12, 8),
           "clocs": (5, 17 / 8)}
_CBCL_HEADER, _CBCL_TILE = 49, 16  # header bytes without and per tile record
_BUDGET_MIN = {"interop": 2 + _INTEROP_RECORD.size, "jpg": len(_JFIF) + len(_EOI) + 64, "log": 0}


Terms = tuple[float, float, dict[str, float]]  # fixed bytes, bytes per cluster, files per type


def _terms(entries: Sequence[Entry], comp: Compression) -> Terms:
    """Size model of a plan, without the budgeted InterOp/jpg/log bytes (see _clusters)."""
    fixed = per = 0.0
    counts: dict[str, float] = dict.fromkeys(_BUDGET_MIN, 0)
    for _, ctype, arg in entries:
        counts[ctype] = counts.get(ctype, 0) + 1
        if ctype in _LINEAR:
            fixed += _LINEAR[ctype][0]
            per += _LINEAR[ctype][1]
        elif ctype == "lit":
            fixed += len(arg)
        elif ctype == "gzm":  # 4-byte cluster count + 1 byte per cluster, gzipped
            fixed += comp.size(4)
            per += 1 / comp.ratio
        elif ctype == "cbcl":  # per tile: ceil(clusters / 2) bytes gzipped
            fixed += _CBCL_HEADER + len(arg) * (_CBCL_TILE + comp.size(0.5))
            per += len(arg) * 0.5 / comp.ratio
    return fixed, per, counts


def _file_count(terms: Terms) -> float:
    return sum(n for ctype, n in terms[2].items() if ctype != "dir")


def _clusters(terms: Terms, size: int, budgets: dict[str, float], margin: float = 0.0) -> float:
    """Clusters per tile that fill size; budgets are shares of it, but at least the files' minima."""
    fixed, per, counts = terms
    budgeted = sum(max(share * size, counts[ctype] * _BUDGET_MIN[ctype]) for ctype, share in budgets.items())
    return (size * (1 - margin) - budgeted - fixed) / per


def _payload_pool(kind: str) -> str:
    return "cbcl" if kind == "novaseq" else "bcl"


def _member_payload(kind: str, clusters: int) -> int:
    return (clusters + 1) // 2 if kind == "novaseq" else 4 + clusters


def _initial_compression(kind: str, seed: int) -> Compression:
    """Ratio measured on a 256 KiB probe; overhead = gzip header/trailer + block header guess."""
    probe = _pool(_payload_pool(kind), seed)[:256 << 10]
    return Compression(ratio=len(probe) / (len(_gzip([probe])) - 18), overhead=18 + 60)


def _choose_layout(kind: str, size: int, files: int | None, meta: RunMeta, markers: bool,
                   errored: bool, comp: Compression) -> tuple[Geometry, int]:
    """(flow cell layout, total cycles) for the size and, if given, the number of files."""
    spec = SPECS[kind]
    cache: dict[Geometry, tuple[Terms, Terms]] = {}

    def terms(geom: Geometry, cycles: int) -> Terms:
        # Every per-cycle file repeats identically, so plans at 1 and 2 cycles give the exact
        # slope of all terms without planning (possibly a million) entries of the full layout.
        if geom not in cache:
            one, two = (_terms(_plan(kind, geom, _reads(c, spec.index_cycles), meta, markers, errored), comp)
                        for c in (1, 2))
            cache[geom] = (one, two)
        one, two = cache[geom]
        return (one[0] + (cycles - 1) * (two[0] - one[0]), one[1] + (cycles - 1) * (two[1] - one[1]),
                {ctype: n + (cycles - 1) * (two[2].get(ctype, 0) - n) for ctype, n in one[2].items()})

    def clusters(geom: Geometry, cycles: int) -> float:
        return _clusters(terms(geom, cycles), size, spec.budgets)

    if files is None:
        for geom, cycles in spec.ladder:
            # Skip without planning layouts that miss even at 0.3 byte per cluster and cycle
            # (CBCL needs ~0.39): planning the big ones costs more than the small runs.
            if size / (0.3 * geom.lanes * len(geom.tiles) * cycles) < spec.min_clusters:
                continue
            if clusters(geom, cycles) >= spec.min_clusters:
                return geom, cycles
        return spec.ladder[-1]
    # --files: keep reads as long as a typical run and add lanes/tiles until the count is reached,
    # as long as tiles keep a usable number of clusters (below that, file count wins over size)
    floor = spec.min_clusters / 50
    options = []  # (enough clusters, files, clusters, layout, cycles) at the longest allowed run
    for geom in sorted({geom for geom, _ in spec.ladder}, key=lambda g: g.lanes * len(g.tiles)):
        count_1 = _file_count(terms(geom, 1))
        slope = _file_count(terms(geom, 2)) - count_1
        needed = max(MIN_CYCLES, 1 + math.ceil((files - count_1) / slope))
        if needed <= spec.typical_cycles and clusters(geom, needed) >= floor:
            return geom, needed
        cycles = min(needed, spec.max_cycles)
        options.append((clusters(geom, cycles) >= floor, _file_count(terms(geom, cycles)),
                        clusters(geom, cycles), geom, cycles))
    # otherwise the most files among layouts with enough clusters, else the most clusters
    feasible = [option for option in options if option[0]]
    best = max(feasible, key=lambda o: o[1]) if feasible else max(options, key=lambda o: o[2])
    return best[3], best[4]


def _solve_clusters(entries: Sequence[Entry], size: int, budgets: dict[str, float],
                    comp: Compression) -> int:
    # Aim a little low: the last log file grows to take up any shortfall but cannot go below 0.
    return max(MIN_CLUSTERS, int(_clusters(_terms(entries, comp), size, budgets, SIZE_MARGIN)))


# ---------------------------------------------------------------------------------------------
# Generation


def _members(kind: str, seed: int, size: int, clusters: int, needed: int,
             rng: random.Random) -> list[bytes]:
    """Distinct gzip members (.bcl.gz files or CBCL tile blocks) for this cluster count.

    Compressing is the slow part (~30 MB/s), so only 1-8 MiB of members are made (a quarter of
    the run, at most one per file or block) and reused. Picks cycle through them in order (see
    _assign_sizes), so a member repeats only after all others: at least the whole member pool,
    far more than deflate's 32 KiB window, apart.
    """
    pool = _pool(_payload_pool(kind), seed)
    payload = _member_payload(kind, clusters)
    header = struct.pack("<I", clusters) if kind != "novaseq" else b""
    target = min(BIG_POOL, max(SMALL_POOL, size // 4))
    count = max(1, min(needed, math.ceil(target / max(1, payload * 0.7))))  # members deflate to ~0.7
    return [_gzip([header, *_cut(pool, rng.randrange(len(pool)), payload - len(header))])
            for _ in range(count)]


def _cbcl_header(tiles: Sequence[int], clusters: int, blocks: Sequence[bytes]) -> bytes:
    """CBCL v1 header: sizes, bits per call/Q, Q bins, per-tile records, non-PF-excluded flag."""
    header_size = _CBCL_HEADER + _CBCL_TILE * len(tiles)
    payload = (clusters + 1) // 2
    return b"".join([
        struct.pack("<HIBBI", 1, header_size, 2, 2, len(_QBINS)),
        *(struct.pack("<II", b, q) for b, q in _QBINS),
        struct.pack("<I", len(tiles)),
        *(struct.pack("<IIII", tile, clusters, payload, len(block)) for tile, block in zip(tiles, blocks, strict=True)),
        b"\x00",  # non-PF clusters are included, so the blocks hold every cluster of the tile
    ])


def _clocs_size(clusters: int) -> int:
    bins = max(1, math.ceil(clusters / 8))
    return 5 + 17 * (bins - 1) + 1 + 2 * (clusters - 8 * (bins - 1))


def _clocs(clusters: int, pool: bytes, offset: int) -> bytes:
    """Compressed locs: version, bin count, then bins of (count, count x (dx, dy) bytes)."""
    bins = max(1, math.ceil(clusters / 8))
    body = bytearray(17 * bins)
    body[0::17] = bytes([8]) * bins
    source = b"".join(_cut(pool, offset, 16 * bins))
    for column in range(16):
        body[column + 1::17] = source[column * bins:(column + 1) * bins]
    last = clusters - 8 * (bins - 1)  # the last bin holds the remainder, trimmed to its count
    body[17 * (bins - 1)] = last
    return struct.pack("<BI", 1, bins) + bytes(body[:17 * (bins - 1) + 1 + 2 * last])


def _assign_sizes(entries: Sequence[Entry], size: int, clusters: int, budgets: dict[str, float],
                  members: list[bytes], rng: random.Random) -> tuple[list[int], list[Any]]:
    """Final size of every entry, plus the member indices chosen for gzm/cbcl entries."""
    weights = {ctype: 0.0 for ctype in budgets}
    for _, ctype, arg in entries:
        if ctype in weights:
            weights[ctype] += 1.0 if ctype == "jpg" else (arg[1] if ctype == "interop" else arg)
    sizes: list[int] = []
    picks: list[Any] = []
    pad_index = -1
    next_member = rng.randrange(len(members)) if members else 0
    for index, (_, ctype, arg) in enumerate(entries):
        pick: Any = None
        if ctype == "lit":
            n = len(arg)
        elif ctype in ("bcl", "stats", "filter", "control", "locs"):
            fixed, per = _LINEAR[ctype]
            n = int(fixed + per * clusters)
        elif ctype == "clocs":
            n = _clocs_size(clusters)
        elif ctype == "gzm":
            pick = next_member % len(members)
            next_member += 1
            n = len(members[pick])
        elif ctype == "cbcl":
            pick = [(next_member + i) % len(members) for i in range(len(arg))]
            next_member += len(arg)
            n = _CBCL_HEADER + _CBCL_TILE * len(arg) + sum(len(members[i]) for i in pick)
        elif ctype == "interop":
            share = size * budgets["interop"] * arg[1] / weights["interop"]
            n = 2 + max(1, round((share - 2) / _INTEROP_RECORD.size)) * _INTEROP_RECORD.size
        elif ctype == "jpg":  # thumbnails vary in size; never smaller than their markers + 64 B
            share = size * budgets["jpg"] / weights["jpg"] * rng.uniform(0.75, 1.25)
            n = max(_BUDGET_MIN["jpg"], int(share))
        elif ctype == "log":
            n = int(size * budgets["log"] * arg / weights["log"])
            pad_index = index
        else:  # empty directory
            n = 0
        sizes.append(n)
        picks.append(pick)
    # the last log takes the remainder of the size model, so the total is exact if it can be
    sizes[pad_index] = max(0, sizes[pad_index] + size - sum(sizes))
    return sizes, picks


def _umask() -> int | None:
    """The process umask, read without changing it (Linux); None if unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return None


def _write_all(fd: int, chunks: Sequence[bytes | memoryview]) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]


def make_run(path: Path | str, kind: str, size: int, seed: int = 0, files: int | None = None,
             markers: bool = True, errored: bool = False) -> RunStats:
    """Create the run folder ``path`` of ``size`` bytes (exact unless the layout cannot shrink).

    ``path`` must be absent or an empty directory; its name is the run id. ``files`` asks for
    about that many files (default: a realistic number for the size). ``markers=False`` leaves
    out the completion markers; ``errored`` makes RunCompletionStatus.xml report a failed run.
    Raises FileExistsError for a non-empty ``path`` and ValueError for bad arguments.
    """
    if kind not in SPECS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    if size < 1 or (files is not None and files < 1):
        raise ValueError("size and files must be positive")
    if errored and (kind == "hiseq" or not markers):
        raise ValueError("errored needs markers and a kind that writes RunCompletionStatus.xml "
                         "(miseq, novaseq)")
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} exists and is not an empty directory")
    spec = SPECS[kind]
    meta = _run_meta(path.name, kind, seed)
    rng = random.Random(f"plan:{kind}:{seed}")

    comp = _initial_compression(kind, seed)
    geom, cycles = _choose_layout(kind, size, files, meta, markers, errored, comp)
    reads = _reads(cycles, spec.index_cycles)
    entries = _plan(kind, geom, reads, meta, markers, errored)
    clusters = _solve_clusters(entries, size, spec.budgets, comp)
    if any(ctype in ("gzm", "cbcl") for _, ctype, _ in entries):
        # Small members carry a relatively large deflate block header: measure it at the real
        # member size and solve once more.
        payload = _member_payload(kind, clusters)
        count = max(2, min(32, SMALL_POOL // payload))  # enough probes for a mean within a few bytes
        probes = [_gzip(_cut(_pool(_payload_pool(kind), seed), i * 99_991, payload)) for i in range(count)]
        comp.overhead = sum(map(len, probes)) / len(probes) - payload / comp.ratio
        clusters = _solve_clusters(entries, size, spec.budgets, comp)
    needed = sum(len(arg) if ctype == "cbcl" else 1 for _, ctype, arg in entries if ctype in ("gzm", "cbcl"))
    members = _members(kind, seed, size, clusters, needed, rng) if needed else []
    sizes, picks = _assign_sizes(entries, size, clusters, spec.budgets, members, rng)
    _write(path, entries, sizes, picks, clusters, members, seed)
    return RunStats(files=sum(ctype != "dir" for _, ctype, _ in entries), bytes=sum(sizes), kind=kind)


class _Content:
    """Bytes of each file, cut from the per-seed pools at offsets drawn in plan order."""

    def __init__(self, seed: int, clusters: int, members: Sequence[bytes]) -> None:
        self.seed, self.clusters, self.members = seed, clusters, members
        self.rng = random.Random(f"content:{seed}")
        self.clusters_header = struct.pack("<I", clusters)

    def take(self, pool_name: str, length: int, align: int = 1) -> list[memoryview]:
        """length bytes from a random, align-aligned offset of a pool."""
        pool = _pool(pool_name, self.seed)
        return _cut(pool, align * self.rng.randrange(len(pool) // align), length)

    def chunks(self, ctype: str, arg: Any, n: int, pick: Any) -> Sequence[bytes | memoryview]:
        clusters = self.clusters
        if ctype == "lit":
            return [arg]
        if ctype == "bcl":
            return [self.clusters_header, *self.take("bcl", clusters)]
        if ctype == "gzm":
            return [self.members[pick]]
        if ctype == "cbcl":
            blocks = [self.members[i] for i in pick]
            return [_cbcl_header(arg, clusters, blocks), *blocks]
        if ctype == "stats":
            return [struct.pack("<I", arg), *self.take("stats", n - 4, align=8)]
        if ctype in ("filter", "control"):
            version = 3 if ctype == "filter" else 2
            return [struct.pack("<III", 0, version, clusters), *self.take(ctype, n - 12)]
        if ctype == "locs":
            return [struct.pack("<IfI", 1, 1.0, clusters), *self.take("locs", n - 12, align=8)]
        if ctype == "clocs":
            pool = _pool("noise", self.seed)
            return [_clocs(clusters, pool, self.rng.randrange(len(pool)))]
        if ctype == "interop":
            record = _INTEROP_RECORD.size
            return [bytes([arg[0], record]), *self.take("interop", n - 2, align=record)]
        if ctype == "jpg":
            return [_JFIF, *self.take("noise", n - len(_JFIF) - len(_EOI)), _EOI]
        text = _pool("text", self.seed)  # log: start at a line boundary
        return _cut(text, text.find(b"\n", self.rng.randrange(len(text))) + 1, n)


def _write(root: Path, entries: Sequence[Entry], sizes: Sequence[int], picks: Sequence[Any],
           clusters: int, members: Sequence[bytes], seed: int) -> None:
    """Create the directories and files with fixed modes and mtimes."""
    mtime_ns = (EPOCH_2024 + seed) * 1_000_000_000
    umask = _umask()
    fix_modes = umask is None or umask & 0o755 != 0
    directories = {""}  # relative to root
    for rel, ctype, _ in entries:
        parent = rel if ctype == "dir" else os.path.dirname(rel)
        while parent not in directories:
            directories.add(parent)
            parent = os.path.dirname(parent)
    ordered = sorted(directories, key=lambda d: d.count("/") + bool(d))  # parents first
    for directory in ordered:
        # the run folder may exist if empty; its parents are created like mkdir -p
        (root / directory).mkdir(mode=0o755, parents=not directory, exist_ok=not directory)
        if fix_modes or not directory:
            os.chmod(root / directory, 0o755)

    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    utime_fd = os.utime in os.supports_fd
    content = _Content(seed, clusters, members)
    prefix = str(root) + os.sep
    for (rel, ctype, arg), n, pick in zip(entries, sizes, picks, strict=True):
        if ctype == "dir":
            continue
        chunks = content.chunks(ctype, arg, n, pick)
        target = prefix + rel
        fd = os.open(target, flags, 0o644)
        try:
            _write_all(fd, chunks)
            if fix_modes:
                os.fchmod(fd, 0o644)
            if utime_fd:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)
        if not utime_fd:
            os.utime(target, ns=(mtime_ns, mtime_ns))
    # directory mtimes last, children before parents, since creating entries changes them
    for directory in reversed(ordered):
        os.utime(root / directory, ns=(mtime_ns, mtime_ns))


# ---------------------------------------------------------------------------------------------
# CLI


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path, help="run folder to create (its name is the run id)")
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--size", type=_size_arg, required=True, help="e.g. 500M, 2G, 1500K or bytes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--files", type=int, help="approximate number of files (default: realistic)")
    parser.add_argument("--no-markers", dest="markers", action="store_false",
                        help="omit completion markers (RTAComplete.txt, CopyComplete.txt, ...)")
    parser.add_argument("--errored", action="store_true",
                        help="RunCompletionStatus.xml reports a failed run (miseq, novaseq)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        stats = make_run(args.outdir, args.kind, args.size, seed=args.seed, files=args.files,
                         markers=args.markers, errored=args.errored)
    except (FileExistsError, ValueError) as exc:
        print(f"make_fake_run: {exc}", file=sys.stderr)
        return 2
    print(f"kind={stats.kind} files={stats.files} bytes={stats.bytes} "
          f"seconds={time.perf_counter() - started:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
