"""The machine a benchmark ran on: what a reader needs to judge the numbers."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

__all__ = ["describe_machine"]


def _first_line(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc.__class__.__name__})"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _git() -> str:
    repo = Path(__file__).resolve().parents[1]
    head = _first_line(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"])
    return head + (" (with uncommitted changes)" if dirty and not dirty.startswith("unavailable") else "")


def describe_machine() -> dict[str, str]:
    import isal

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    try:
        from sruns_stream import __version__ as sruns_version
    except ImportError:
        sruns_version = "not importable"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "host": socket.gethostname(),
        "cores": f"{os.cpu_count()} ({usable} usable by this process)",
        "cpu": _cpu_model(),
        "memory": _memory(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "isal": isal.__version__,
        "sruns-stream": f"{sruns_version}, git {_git()}",
        "tar": _first_line(["tar", "--version"]),
        "pigz": _first_line(["pigz", "--version"]),
        "gzip": _first_line(["gzip", "--version"]),
        "gcloud": _first_line(["gcloud", "--version"]),
        "load average at start": load,
    }
