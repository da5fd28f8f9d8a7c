"""Benchmark data: run folders from ``scripts/make_fake_run.py``, cached and reused.

Each data set is keyed by (kind, size, seed, files) and lives in
``benchmarks/.cache/<key>/<run name>`` (git-ignored). A ``dataset.json`` beside the run
folder is written last, so a half-generated folder (interrupted run) is never reused; it
also records a hash of the generator, and a cache made by another version of
``make_fake_run.py`` is rebuilt rather than silently benchmarked.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

__all__ = [
    "MB",
    "REPO",
    "Dataset",
    "DatasetSpec",
    "GeneratorMissing",
    "GiB",
    "MiB",
    "parse_size",
    "prepare",
    "warm_page_cache",
]

REPO = Path(__file__).resolve().parents[1]
GENERATOR = REPO / "scripts" / "make_fake_run.py"
DEFAULT_CACHE = REPO / "benchmarks" / ".cache"
ALREADY_COMPRESSED = (".cbcl", ".gz", ".bgzf", ".jpg", ".jpeg", ".png", ".zip", ".bz2", ".xz", ".zst")
MB = 1_000_000  # MB/s and MB in the tables are SI, like the tools they compare with
MiB = 1 << 20
GiB = 1 << 30


def parse_size(text: str) -> int:
    """A size given on a benchmark's command line: bytes, or K/M/G (binary), e.g. 512M, 1G."""
    units = {"K": 1 << 10, "M": MiB, "G": GiB}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)

# Illumina-style folder names: the instrument letter tells a reader which kind it is.
_RUN_NAMES = {
    "miseq": "240101_M00001_0001_000000000-BENCH",
    "novaseq": "240101_A00001_0001_BHBENCHDXX",
    "hiseq": "240101_D00001_0001_BHBENCHBXX",
}


class GeneratorMissing(RuntimeError):
    """scripts/make_fake_run.py is absent or does not offer make_run()."""


@dataclass(frozen=True)
class DatasetSpec:
    label: str  # shown in the table: "MiSeq", "NovaSeq", "many small files"
    kind: str  # make_fake_run --kind
    size: int  # bytes requested from make_fake_run
    seed: int = 0
    files: int | None = None  # make_fake_run --files (None: its default)

    @property
    def key(self) -> str:
        return f"{self.kind}-{self.size}-s{self.seed}-f{self.files if self.files is not None else 'default'}"


@dataclass(frozen=True)
class Dataset:
    spec: DatasetSpec
    path: Path  # the run folder
    files: int  # regular files
    entries: int  # files, directories and symlinks
    raw_bytes: int  # sum of regular-file sizes: the "raw input" every MB/s is computed from
    compressed_share: float  # share of raw bytes in already-compressed formats (by extension)
    generator_sha: str

    def describe(self) -> str:
        return (
            f"{self.spec.label}: {self.spec.kind}, {self.raw_bytes / MB:,.0f} MB in {self.files:,} files, "
            f"{self.compressed_share:.0%} of bytes already compressed (seed {self.spec.seed})"
        )


def _generator_sha() -> str:
    if not GENERATOR.is_file():
        raise GeneratorMissing(f"{GENERATOR} is missing: the benchmark data is generated with it")
    return hashlib.sha256(GENERATOR.read_bytes()).hexdigest()[:16]


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_fake_run", GENERATOR)
    if spec is None or spec.loader is None:
        raise GeneratorMissing(f"cannot import {GENERATOR}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    if not hasattr(module, "make_run"):
        raise GeneratorMissing(f"{GENERATOR} has no make_run(path, kind, size, seed=0, files=None)")
    return module


def _stats(run: Path) -> tuple[int, int, int, float]:
    files = entries = total = compressed = 0
    for dirpath, dirnames, filenames in os.walk(run):
        entries += len(dirnames)
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            entries += 1
            if not os.path.islink(os.path.join(dirpath, name)):
                files += 1
                total += st.st_size
                if name.lower().endswith(ALREADY_COMPRESSED):
                    compressed += st.st_size
    return files, entries, total, (compressed / total if total else 0.0)


def prepare(spec: DatasetSpec, cache: Path = DEFAULT_CACHE, log: Callable[[str], None] = print) -> Dataset:
    """The data set's run folder, generated once and reused while the generator is unchanged."""
    sha = _generator_sha()
    home = cache / spec.key
    meta = home / "dataset.json"
    run = home / _RUN_NAMES.get(spec.kind, f"240101_X00001_0001_{spec.kind.upper()}")
    if meta.is_file():
        saved = json.loads(meta.read_text())
        if saved.get("generator_sha") == sha and run.is_dir():
            return Dataset(spec, run, saved["files"], saved["entries"], saved["raw_bytes"],
                           saved["compressed_share"], sha)
        log(f"  {spec.key}: cached data came from another make_fake_run.py; generating it again")
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    log(f"  generating {spec.label} ({spec.key}) with {GENERATOR.relative_to(REPO)} ...")
    t0 = time.perf_counter()
    _load_generator().make_run(run, spec.kind, spec.size, seed=spec.seed, files=spec.files)
    files, entries, total, share = _stats(run)
    meta.write_text(json.dumps({
        "spec": asdict(spec), "generator_sha": sha, "files": files, "entries": entries,
        "raw_bytes": total, "compressed_share": share,
    }, indent=2))
    log(f"  generated in {time.perf_counter() - t0:.1f} s: {total / MB:,.0f} MB, {files:,} files")
    return Dataset(spec, run, files, entries, total, share, sha)


def warm_page_cache(run: Path) -> None:
    """Read the whole folder once (untimed), so no competitor pays for the first cold read.

    GNU tar skips reading file contents when its output is /dev/null, hence the pipe.
    """
    tar = subprocess.Popen(["tar", "-cf", "-", "-C", str(run.parent), run.name], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    while tar.stdout.read(1 << 20):
        pass
    tar.wait()
