"""Random access: one file, or one folder, from a large archive in GCS, in seconds and in
bytes on the wire, against streaming the whole archive through ``tar x``.

Set-up (untimed): the run is archived once to a local directory at sruns-stream's
defaults (access points every 8 MiB, ``<run>.index.tsv`` and ``<run>.manifest.tsv``
beside the archive), and the loopback GCS server serves those files as objects
(`LoopbackGcsServer.add_file`, ranged GETs answered with 206) under
``gs://bench-ra/ra/<run>/``. The server counts the bytes of every download body it
sends (``bytes_sent``): that is what each command cost on the wire, manifest and index
included.

Rows, interleaved, each ``reps`` times:

- ``sruns-stream ls gs://…/<run>.tar.gz``: the listing, from the manifest;
- ``sruns-stream cat gs://…/<run>.tar.gz RUN/RunInfo.xml`` and the same for the member
  in the middle of the tar stream (the file holding its middle byte);
- ``sruns-stream restore gs://… DEST --include RUN/RunInfo.xml`` and ``--include RUN/InterOp``;
- ``gcloud storage cat gs://… | tar xzf - RUN/RunInfo.xml`` (and ``RUN/InterOp``): what a
  user does without sruns-stream; GNU tar reads to the end, since a later copy of a
  member would win;
- ``curl … | tar xzf - RUN/RunInfo.xml``: the archive streamed whole without gcloud's
  start-up.

Each output is checked against the run folder (the same bytes; the folder restored).
Target (issue 13): bytes on the wire ≤ the member's compressed span + 16 MiB, for
RunInfo.xml, the middle member and InterOp/. The compressed span of a tar range is
interpolated between the access points of the index (the archive offsets of its first
and last byte); without an index, from the archive's overall ratio.

``ls`` and ``cat`` arrive with issue 13; on a sruns-stream without them those rows are
skipped with that reason, and ``restore --include`` is measured as it is.
"""

from __future__ import annotations

import bisect
import filecmp
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from loopback.gcs import LoopbackGcsServer

from . import scenario
from .competitors import Tools
from .data import REPO, Dataset
from .measure import Command, RssProbe, Sample, run_command, sruns_json
from .scenario import Row

__all__ = [
    "ACCESS_COST_LIMIT",
    "MARGIN",
    "RaCase",
    "RandomAccessResult",
    "Span",
    "access_point_cost",
    "has_subcommand",
    "measure_random_access",
]

BUCKET = "bench-ra"
PREFIX = "ra"
MARGIN = 16 << 20  # issue 13: bytes on the wire ≤ compressed span + 16 MiB
ACCESS_COST_LIMIT = 0.005  # issue 13: access points grow the archive by at most 0.5 %
_ENV = {"PYTHONPATH": str(REPO)}


def has_subcommand(name: str) -> bool:
    """Whether this checkout's ``sruns-stream --help`` lists the subcommand ``name``."""
    proc = subprocess.run([sys.executable, "-m", "sruns_stream", "--help"], capture_output=True, text=True,
                          env={**os.environ, **_ENV}, check=False)
    m = re.search(r"\{([a-z,-]+)\}", proc.stdout)
    return m is not None and name in m.group(1).split(",")


@dataclass(frozen=True)
class Span:
    """A tar range (one member, or a folder's members) and its place in the archive."""

    label: str  # "RunInfo.xml", "middle member", "InterOp/"
    member: str  # the tar name (a folder: its name, no trailing slash)
    files: int
    raw_start: int  # tar offset of the first header
    raw_end: int  # tar offset after the last data block
    data_bytes: int  # the files' sizes
    archive_start: int
    archive_end: int

    @property
    def compressed(self) -> int:
        return max(0, self.archive_end - self.archive_start)

    @property
    def limit(self) -> int:
        return self.compressed + MARGIN


@dataclass(frozen=True)
class RaCase:
    label: str  # which Span it fetches ("" for ls)
    name: str  # shown in the table
    tool: str  # sruns-stream | gcloud | curl


@dataclass
class RandomAccessResult:
    dataset: str
    archive_bytes: int = 0
    raw_bytes: int = 0
    indexed: bool = False  # an index.tsv was beside the archive
    spans: dict[str, Span] = field(default_factory=dict)
    rows: list[Row[RaCase]] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "archive_bytes": self.archive_bytes, "raw_bytes": self.raw_bytes,
            "indexed": self.indexed, "error": self.error, "notes": self.notes,
            "spans": {k: {**v.__dict__, "compressed": v.compressed, "limit": v.limit} for k, v in self.spans.items()},
            "rows": [r.as_dict() for r in self.rows],
        }


# -- where the members are ------------------------------------------------------------------


def _members(archive: Path) -> list[tuple[str, int, int, int]]:
    """(name, header offset, data offset, size) of every member, in tar order."""
    from isal import igzip

    out = []
    # isal's igzip.open is untyped; it inflates several times faster than gzip.open.
    gz = igzip.open(archive, "rb")  # type: ignore[no-untyped-call]
    with gz, tarfile.open(fileobj=gz, mode="r|") as tar:
        for m in tar:
            out.append((m.name, m.offset, m.offset_data, m.size if m.isfile() else 0))
    return out


def _interpolate(points: list[tuple[int, int]], raw: int) -> int:
    """The archive offset of tar offset ``raw``: linear between the access points around it."""
    i = bisect.bisect_right([p[0] for p in points], raw) - 1
    i = max(0, min(i, len(points) - 2))
    (r0, a0), (r1, a1) = points[i], points[i + 1]
    return a0 + (raw - r0) * (a1 - a0) // max(1, r1 - r0)


def _points(index: Path | None, raw_total: int, archive_bytes: int) -> tuple[list[tuple[int, int]], bool]:
    """The index's (raw, archive) access points plus the end of the stream; without an
    index, just the two ends (the archive's overall ratio)."""
    points = [(0, 0)]
    found = False
    if index is not None and index.is_file():
        from sruns_stream.storage.access_index import parse

        _, parsed = parse(index.read_bytes(), str(index))
        points = [(p.raw, p.archive) for p in parsed] or points
        found = True
    points.append((raw_total, archive_bytes - 8))  # the gzip trailer: CRC32 and ISIZE
    return points, found


def _span(label: str, member: str, chosen: list[tuple[str, int, int, int]], points: list[tuple[int, int]]) -> Span:
    start = min(c[1] for c in chosen)
    end = max(c[2] + -(-c[3] // 512) * 512 for c in chosen)
    return Span(label, member, sum(1 for c in chosen if c[3] or c[2] > c[1]), start, end,
                sum(c[3] for c in chosen), _interpolate(points, start), _interpolate(points, end))


def find_spans(archive: Path, run_name: str, raw_total: int) -> tuple[dict[str, Span], bool]:
    members = _members(archive)
    index = archive.with_name(f"{run_name}.index.tsv")
    points, indexed = _points(index, raw_total, archive.stat().st_size)
    spans: dict[str, Span] = {}
    info = [m for m in members if m[0] == f"{run_name}/RunInfo.xml"]
    if info:
        spans["RunInfo.xml"] = _span("RunInfo.xml", info[0][0], info, points)
    files = [m for m in members if m[3] > 0]
    middle = raw_total // 2
    mid = next((m for m in files if m[2] + m[3] > middle), files[-1] if files else None)
    if mid is not None:
        spans["middle member"] = _span("middle member", mid[0], [mid], points)
    interop = [m for m in members if m[0] == f"{run_name}/InterOp" or m[0].startswith(f"{run_name}/InterOp/")]
    if interop:
        spans["InterOp/"] = _span("InterOp/", f"{run_name}/InterOp", interop, points)
    return spans, indexed


# -- the rows --------------------------------------------------------------------------------


def _rows(spans: dict[str, Span], can_ls: bool, can_cat: bool, gcloud: str | None) -> list[Row[RaCase]]:
    rows = [Row(RaCase("", "sruns-stream ls", "sruns-stream"),
                skipped=None if can_ls else "this sruns-stream has no `ls` subcommand yet (issue 13)")]
    for label in ("RunInfo.xml", "middle member"):
        if label in spans:
            rows.append(Row(RaCase(label, f"sruns-stream cat ({label})", "sruns-stream"),
                            skipped=None if can_cat else "this sruns-stream has no `cat` subcommand yet (issue 13)"))
    for label in ("RunInfo.xml", "InterOp/"):
        if label in spans:
            rows.append(Row(RaCase(label, f"sruns-stream restore --include ({label})", "sruns-stream")))
    for label in ("RunInfo.xml", "InterOp/"):
        if label in spans:
            rows.append(Row(RaCase(label, f"gcloud storage cat | tar xz ({label})", "gcloud"), skipped=gcloud))
    if "RunInfo.xml" in spans:
        rows.append(Row(RaCase("RunInfo.xml", "curl | tar xz (RunInfo.xml)", "curl"),
                        skipped=None if shutil.which("curl") else "curl is not installed"))
    return rows


def _command(row: RaCase, spans: dict[str, Span], url: str, http_url: str, out: Path,
             env_gs: dict[str, str], env_gcloud: dict[str, str]) -> Command:
    sruns = (sys.executable, "-m", "sruns_stream")
    journal = ("--journal", str(out.parent / "no-journal.db"))
    span = spans.get(row.label)
    if row.name == "sruns-stream ls":
        return Command(((*sruns, "ls", url, *journal),), stdout_file=out, env={**_ENV, **env_gs})
    assert span is not None
    if row.name.startswith("sruns-stream cat"):
        return Command(((*sruns, "cat", url, span.member, *journal),), stdout_file=out, env={**_ENV, **env_gs})
    if row.name.startswith("sruns-stream restore"):
        return Command(((*sruns, "restore", url, str(out), "--include", span.member, *journal),),
                       env={**_ENV, **env_gs})
    untar = ("tar", "-xzf", "-", "-C", str(out), span.member)
    if row.tool == "gcloud":
        return Command((("gcloud", "storage", "cat", url), untar), env=env_gcloud)
    return Command((("curl", "-sSf", http_url), untar))


def _check(row: RaCase, span: Span | None, ds: Dataset, out: Path) -> str | None:
    """None if the output holds what was asked for, else what is wrong."""
    if span is None:  # ls: a listing that names RunInfo.xml
        text = out.read_text(errors="replace") if out.is_file() else ""
        return None if "RunInfo.xml" in text else "the listing does not name RunInfo.xml"
    rel = span.member.split("/", 1)[1]
    original = ds.path / rel
    if row.name.startswith("sruns-stream cat"):
        same = out.is_file() and filecmp.cmp(out, original, shallow=False)
        return None if same else f"cat did not write {span.member}'s bytes"
    restored = out / ds.path.name / rel
    if original.is_dir():
        want = sorted(p.relative_to(original) for p in original.rglob("*"))
        got = sorted(p.relative_to(restored) for p in restored.rglob("*")) if restored.is_dir() else []
        return None if want == got else f"{span.member} restored with {len(got)} of {len(want)} entries"
    same = restored.is_file() and filecmp.cmp(restored, original, shallow=False)
    return None if same else f"{span.member} was not restored with its bytes"


def measure_random_access(
    ds: Dataset, archive: Path, summary: dict[str, Any], reps: int, workdir: Path, probe: RssProbe,
    tools: Tools, log: Callable[[str], None] = print,
) -> RandomAccessResult:
    """Serve ``archive`` (made by `verify_bench.make_archive`) from a loopback server and run the rows."""
    result = RandomAccessResult(ds.spec.label, archive.stat().st_size, int(summary.get("raw_bytes", 0)))
    run = ds.path.name
    try:
        result.spans, result.indexed = find_spans(archive, run, result.raw_bytes)
    except (OSError, tarfile.TarError, ValueError) as exc:
        result.error = f"could not read the archive's members: {exc}"
        return result
    if not result.indexed:
        result.notes.append("no index.tsv beside the archive: spans from the archive's overall ratio")
    can_ls, can_cat = has_subcommand("ls"), has_subcommand("cat")
    gcloud = tools.missing.get("gcloud") or (None if shutil.which("gcloud") else "gcloud is not installed")
    with LoopbackGcsServer(md5=False) as server:
        for f in sorted(archive.parent.iterdir()):
            if f.is_file() and not f.name.endswith(".part"):
                ctype = "application/gzip" if f.name.endswith(".gz") else "text/tab-separated-values"
                server.add_file(BUCKET, f"{PREFIX}/{run}/{f.name}", f, ctype)
        blob = f"{PREFIX}/{run}/{archive.name}"
        url = f"gs://{BUCKET}/{blob}"
        http_url = f"{server.url}/download/storage/v1/b/{BUCKET}/o/{quote(blob, safe='')}?alt=media"
        gcloud_tools = Tools(tools.threads, workdir / "gcloud", loopback_url=server.url)
        (gcloud_tools.scratch / "gcloud-config").mkdir(parents=True, exist_ok=True)
        env_gs, env_gcloud = gcloud_tools.env_gs(), gcloud_tools.env_gcloud()
        result.rows = _rows(result.spans, can_ls, can_cat, gcloud)

        def measure(row: Row[RaCase], rep: int) -> Sample:
            where = workdir / "run"
            shutil.rmtree(where, ignore_errors=True)
            writes_stdout = row.name.startswith(("sruns-stream ls", "sruns-stream cat"))
            out = where / ("out" if writes_stdout else "dest")
            where.mkdir(parents=True)
            if out.name == "dest":
                out.mkdir()
            cmd = _command(row.case, result.spans, url, http_url, out, env_gs, env_gcloud)
            row.command = cmd.display()
            sent, asked = server.bytes_sent, server.requests
            sample = run_command(cmd, where / "m", probe)
            sample.measures.update(bytes_sent=server.bytes_sent - sent, requests=server.requests - asked)
            if sample.ok:
                sample.error = _check(row.case, result.spans.get(row.case.label), ds, out)
            return sample

        def describe(row: Row[RaCase], sample: Sample) -> str:
            return f", {sample.measures['bytes_sent'] / 1e6:,.2f} MB in {sample.measures['requests']:.0f} requests"

        scenario.run(result.rows, reps, measure, describe=describe, log=log)
        shutil.rmtree(workdir / "run", ignore_errors=True)
    return result


def access_point_cost(ds: Dataset, workdir: Path) -> tuple[int, int] | str:
    """(archive bytes at defaults, with ``--access-interval 0``), both to ``--dest null``;
    or why they could not be measured. The bytes are deterministic: one run each."""
    sizes: list[int] = []
    for options in ((), ("--access-interval", "0")):
        argv = [sys.executable, "-m", "sruns_stream", "archive", "--not-finished",
                str(ds.path), "--dest", "null", "--journal",
                str(workdir / f"journal{len(sizes)}.db"), "--force", "--json", *options]
        workdir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **_ENV}, check=False)
        summary = sruns_json(proc.stdout)
        if proc.returncode != 0 or summary is None or "archive_bytes" not in summary:
            tail = proc.stderr.strip().splitlines()
            return f"archive {' '.join(options) or '(defaults)'} failed: " + (tail[-1] if tail else "no --json")
        sizes.append(int(summary["archive_bytes"]))
    return sizes[0], sizes[1]

