"""Who is compared, and the exact command each competitor runs on a data set.

Every competitor reads the same cached run folder and, when it writes locally, writes
under the same scratch directory (one filesystem, fsync'ed by ``measure``). Tools that
are missing, and upload rows whose server or client does not work, are reported as
skipped with the reason by ``Tools``: nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .data import REPO, Dataset
from .measure import Command

__all__ = [
    "BEFORE",
    "BEFORE_REV",
    "BUCKET",
    "Competitor",
    "Tools",
    "main_competitors",
    "sruns_stream",
    "export_before",
    "sruns_stream_command",
]

BUCKET = "bench-bucket"
REFERENCE = "sruns-stream auto → local"
# The last commit before issue 21's code (the main thread doing the per-byte work): its row
# runs interleaved with today's, so "peak RSS within 10 % of before" and the serial share
# before and after are measured in the same run, not taken from an older page.
BEFORE_REV = "bb80d58"
BEFORE = f"sruns-stream before #21 ({BEFORE_REV}) → local"


@dataclass
class Tools:
    """What this machine offers the competitors, and why something is unavailable."""

    threads: int
    scratch: Path  # under the run's one temporary directory
    loopback_url: str | None = None
    before_tree: Path | None = None  # BEFORE_REV's files (export_before)
    missing: dict[str, str] = field(default_factory=dict)  # need -> reason it is unavailable

    def env_gs(self) -> dict[str, str]:
        assert self.loopback_url
        return {"STORAGE_EMULATOR_HOST": self.loopback_url, "GOOGLE_CLOUD_PROJECT": "bench"}

    def env_gcloud(self) -> dict[str, str]:
        assert self.loopback_url
        return {
            "CLOUDSDK_CONFIG": str(self.scratch / "gcloud-config"),  # throwaway: no user settings
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE": self.loopback_url + "/",
            "CLOUDSDK_AUTH_DISABLE_CREDENTIALS": "True",
            "CLOUDSDK_CORE_PROJECT": "bench",
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "True",
            "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "True",
            # A benchmark wants a failure reported, not minutes of retries.
            "CLOUDSDK_STORAGE_MAX_RETRIES": "1",
            "CLOUDSDK_STORAGE_BASE_RETRY_DELAY": "1",  # whole seconds only
            "CLOUDSDK_STORAGE_MAX_RETRY_DELAY": "1",
        }


# build(dataset, tools, scratch for this one execution) -> the command
Builder = Callable[[Dataset, Tools, Path], Command]


@dataclass(frozen=True)
class Competitor:
    name: str  # unique, shown in the table
    tool: str
    setting: str
    dest: str  # local | null | loopback-gs
    build: Builder
    needs: tuple[str, ...] = ()  # keys of Tools.missing that disable this row
    fragile: str | None = None  # a need that one failure of this row disables for every row


    def unavailable(self, tools: Tools) -> str | None:
        reasons = [tools.missing[n] for n in self.needs if n in tools.missing]
        return "; ".join(reasons) if reasons else None


def _tar(ds: Dataset) -> tuple[str, ...]:
    return ("tar", "-cf", "-", "-C", str(ds.path.parent), ds.path.name)


def sruns_stream_command(ds: Dataset, tools: Tools, scratch: Path, dest: str, *options: str) -> Command:
    """``sruns-stream archive`` with its own journal; ``dest`` is local, null or loopback-gs."""
    argv = [sys.executable, "-m", "sruns_stream", "archive", "--not-finished", str(ds.path), "--journal",
            str(scratch / "journal.db"), "--json", *options]
    env = {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    output = None
    if dest == "local":
        argv += ["--dest", str(scratch / "out")]
        ext = ".tar" if _COMPRESSION_FLAGS["none"] == tuple(options[:2]) else ".tar.gz"
        output = scratch / "out" / ds.path.name / f"{ds.path.name}{ext}"
    elif dest == "null":
        argv += ["--dest", "null"]
    else:
        argv += ["--dest", f"gs://{BUCKET}/{scratch.name}"]
        env.update(tools.env_gs())
    return Command((tuple(argv),), output=output, env=env)


_COMPRESSION_FLAGS = {
    "auto": (),  # the default
    "level 1": ("--compression", "level", "--level", "1"),
    "none": ("--compression", "none"),
}


def sruns_stream(compression: str, dest: str, *options: str, setting: str | None = None) -> Competitor:
    """sruns-stream with ``compression`` (auto, level 1, none) plus extra flags (sweeps)."""
    opts = (*_COMPRESSION_FLAGS[compression], *options)
    setting = setting or compression
    needs = ("loopback", "sruns-gs") if dest == "loopback-gs" else ()
    return Competitor(
        f"sruns-stream {setting} → {dest}", "sruns-stream", setting, dest,
        lambda ds, tools, scratch: sruns_stream_command(ds, tools, scratch, dest, *opts), needs,
        "sruns-gs" if dest == "loopback-gs" else None,
    )


def _before(ds: Dataset, tools: Tools, scratch: Path) -> Command:
    assert tools.before_tree is not None
    cmd = sruns_stream_command(ds, tools, scratch, "local")
    # That code has no completion rules in `archive`, so no --not-finished either.
    (argv,) = cmd.stages
    argv = tuple(a for a in argv if a != "--not-finished")
    # PYTHONSAFEPATH: `python -m` would otherwise put the working directory (this checkout,
    # today's code) ahead of PYTHONPATH on sys.path.
    return dataclasses.replace(cmd, stages=(argv,),
                               env={**cmd.env, "PYTHONPATH": str(tools.before_tree), "PYTHONSAFEPATH": "1"})


def _ceiling(threads: int | None = None) -> Builder:
    def build(ds: Dataset, tools: Tools, scratch: Path) -> Command:
        n = threads or tools.threads
        gz = (sys.executable, "-m", "benchmarks.baselines", "igzip-threaded", "-T", str(n), "-l", "1")
        out = scratch / "out.tar.gz"
        return Command((_tar(ds), gz), stdout_file=out, output=out, env={"PYTHONPATH": str(REPO)})
    return build


def _pigz(ds: Dataset, tools: Tools, scratch: Path) -> Command:
    out = scratch / "out.tar.gz"
    return Command((_tar(ds), ("pigz", "-p", str(tools.threads), "-1")), stdout_file=out, output=out)


def _tar_czf(ds: Dataset, tools: Tools, scratch: Path) -> Command:
    out = scratch / "out.tar.gz"
    return Command((("tar", "-czf", str(out), "-C", str(ds.path.parent), ds.path.name),), output=out)


def _monitor(ds: Dataset, tools: Tools, scratch: Path) -> Command:
    out = scratch / f"{ds.path.name}.tar.gz"
    argv = (sys.executable, "-m", "benchmarks.baselines", "tarfile-gz9", str(ds.path), str(out))
    return Command((argv,), output=out, env={"PYTHONPATH": str(REPO)})


def _gcloud_cp(ds: Dataset, scratch: Path) -> tuple[str, ...]:
    return ("gcloud", "storage", "cp", "-", f"gs://{BUCKET}/{scratch.name}/{ds.path.name}.tar.gz")


def _pigz_gcloud(ds: Dataset, tools: Tools, scratch: Path) -> Command:
    return Command((_tar(ds), ("pigz", "-p", str(tools.threads), "-1"), _gcloud_cp(ds, scratch)),
                   env=tools.env_gcloud())


def _tar_gcloud(ds: Dataset, tools: Tools, scratch: Path) -> Command:
    return Command((_tar(ds), _gcloud_cp(ds, scratch)), env=tools.env_gcloud())


def main_competitors() -> list[Competitor]:
    """Issue 5's rows, reference first; the table keeps this order."""
    rows = [sruns_stream(s, d) for d in ("local", "null", "loopback-gs") for s in ("auto", "level 1", "none")]
    assert rows[0].name == REFERENCE
    rows += [
        Competitor(BEFORE, "sruns-stream", "before", "local", _before, ("before",)),
        Competitor("tar | isal igzip_threaded -1 (ceiling)", "tar | igzip_threaded", "level 1", "local", _ceiling()),
        Competitor("tar | pigz -1", "tar | pigz", "-1", "local", _pigz, ("pigz",)),
        Competitor("tar -czf", "tar -czf", "gzip -6", "local", _tar_czf, ("gzip",)),
        Competitor("sruns-monitor's way (tarfile w:gz 9)", "python tarfile", "level 9", "local", _monitor),
        Competitor("tar | pigz -1 | gcloud storage cp -", "tar | pigz | gcloud", "-1", "loopback-gs",
                   _pigz_gcloud, ("pigz", "loopback", "gcloud"), "gcloud"),
        Competitor("tar | gcloud storage cp -", "tar | gcloud", "none", "loopback-gs", _tar_gcloud,
                   ("loopback", "gcloud"), "gcloud"),
    ]
    return rows


def ceiling(threads: int) -> Competitor:
    return Competitor(f"ceiling -T {threads}", "tar | igzip_threaded", f"T{threads}", "local", _ceiling(threads))


def check_local_tools(tools: Tools) -> None:
    """Record missing command-line tools (pigz, gzip, GNU tar) in ``tools.missing``."""
    for program, need in (("pigz", "pigz"), ("gzip", "gzip"), ("gcloud", "gcloud")):
        if shutil.which(program) is None:
            hint = " (apt-get install pigz)" if program == "pigz" else ""
            tools.missing[need] = f"{program} is not installed{hint}"
    if shutil.which("tar") is None:
        raise SystemExit("GNU tar is required by every competitor but sruns-stream")


def export_before(tools: Tools) -> None:
    """``git archive BEFORE_REV`` of this checkout into the scratch directory, for the
    BEFORE row; when it cannot (no git, a shallow clone) the row is skipped with why."""
    where = tools.scratch / "before"
    where.mkdir(parents=True, exist_ok=True)
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_REV, "sruns_stream"],
                                 capture_output=True, check=False)
    except OSError as exc:
        tools.missing["before"] = f"git cannot run ({exc.strerror}): no {BEFORE_REV} to compare with"
        return
    if archive.returncode != 0:
        why = archive.stderr.decode(errors="replace").strip().splitlines()
        tools.missing["before"] = f"git archive {BEFORE_REV} failed: {why[-1] if why else archive.returncode}"
        return
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True)
    tools.before_tree = where


def probe_gcloud(tools: Tools, timeout: float = 120.0) -> None:
    """Upload 1 MiB with gcloud to the loopback server; on failure record why and skip its rows."""
    if "gcloud" in tools.missing or "loopback" in tools.missing:
        return
    (tools.scratch / "gcloud-config").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(tools.env_gcloud())
    try:
        proc = subprocess.run(
            ["gcloud", "storage", "cp", "-", f"gs://{BUCKET}/probe/probe.bin"],
            input=os.urandom(1 << 20), capture_output=True, env=env, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        tools.missing["gcloud"] = (
            f"gcloud storage cp could not upload 1 MiB to the loopback server within {timeout:.0f} s"
        )
        return
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if "ERROR" in line or "rror" in line] or lines
        tools.missing["gcloud"] = (
            f"gcloud storage cp failed against the loopback server (exit {proc.returncode}): "
            + (errors[-1][:300] if errors else "no message")
        )
