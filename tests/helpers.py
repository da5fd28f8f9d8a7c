"""Shared test helpers: the oracles (GNU tar, gzip -t, tree comparison) and subprocess runs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tree(root: Path) -> dict[str, tuple]:
    """Everything tar promises to keep: names, types, bytes, link targets, modes, mtimes."""
    out: dict[str, tuple] = {}
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", mode, int(st.st_mtime))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("f", mode, int(st.st_mtime), p.read_bytes())
    return out


def gnu_untar(archive: Path, dest: Path) -> None:
    """Extract with GNU tar (the oracle), keeping modes and mtimes."""
    dest.mkdir(parents=True, exist_ok=True)
    flags = "-xpf" if archive.name.endswith(".tar") else "-xpzf"
    subprocess.run(["tar", flags, str(archive), "-C", str(dest)], check=True)


def gzip_ok(archive: Path) -> None:
    subprocess.run(["gzip", "-t", str(archive)], check=True)


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m sruns_stream ARGS` in a real process."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "sruns_stream", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False,
    )


def realruns_dir() -> Path | None:
    """`../shared/realruns` beside the repo, or $SRUNS_REALRUNS; None when absent."""
    env = os.environ.get("SRUNS_REALRUNS")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared" / "realruns"]:
        if candidate.is_dir():
            return candidate
    return None
