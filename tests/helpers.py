"""Shared test helpers: the oracles (GNU tar, gzip -t, tree comparison), the CLI in this
process (`run_in_process`) or in a real one (`run_cli` waits for one, `start_cli` starts
one), `wait_until` a condition holds, and reading the journal (`journal_row`) while
another process writes it."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from faultproxy import FaultProxy

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


def untars_to_the_input(data: bytes, run: Path, tmp_path: Path, label: str = "download") -> None:
    """The archive's bytes (as downloaded) are one gzip stream that GNU tar extracts to
    the run folder, exactly."""
    path = tmp_path / f"{label}.tar.gz"
    path.write_bytes(data)
    gzip_ok(path)
    gnu_untar(path, tmp_path / f"{label}.out")
    assert tree(tmp_path / f"{label}.out" / run.name) == tree(run)


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a real process the tests start: ours, this repo first on
    PYTHONPATH (the child imports this checkout's package), and ``env`` over it."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return full_env


# A prefix for run_cli: the command runs with umask 000 (what a test of modes needs).
UMASK_000 = ("sh", "-c", 'umask 000; exec "$@"', "sh")


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 300, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """`python -m sruns_stream ARGS` in a real process: for what needs one (a signal, a
    kill, an environment read at import, a umask, the console entry point's own
    handling, and `monitor`, whose passes and quiet periods are timed by the start of a
    real process). ``prefix`` is a command the process is started under (`UMASK_000`)."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "sruns_stream", *args],
        cwd=cwd, env=child_env(env), capture_output=True, text=True, timeout=timeout, check=False,
    )


def run_in_process(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                   timeout: float = 300, text: bool = True) -> subprocess.CompletedProcess[Any]:
    """`sruns_stream.cli.main(ARGS)` in this process, with the shape of `run_cli` (exit
    code, stdout, stderr as text; as bytes with ``text=False``, as `subprocess.run`
    gives them: what `cat` writes), so a test switches with one word. It saves a Python
    start-up and the package's imports per call (most of a short command's time).

    What a real process would not share with the next test is put back: the working
    directory, the environment, the SIGINT/SIGTERM handlers (archive and the read path
    install their own: `stopping.install`) and the stop flag. ``timeout`` is accepted
    for the same signature; pytest's timeout covers a hang here. An exception that
    escapes `main` (a bug: the console entry point would print "internal error") is
    raised in the test, with its traceback."""
    from sruns_stream import cli, stopping

    assert args[:1] != ("monitor",), "the daemon runs in a real process: run_cli"
    del timeout
    # Bytes underneath, like a real stdout: `cat` writes to `out.buffer`.
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace", write_through=True)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    try:
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        # argparse prints usage and --help to sys.stderr and sys.stdout, not to out/err.
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(list(args), out=out, err=err)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        stopping.STOP._event.clear()  # process-wide by design (signals are): one per process
    return subprocess.CompletedProcess(["sruns-stream", *args], code, _output(out, text), _output(err, text))


def _output(stream: io.TextIOWrapper, text: bool) -> str | bytes:
    """What `subprocess.run(text=text)` would have read: bytes, or decoded with universal
    newlines."""
    raw = stream.buffer
    assert isinstance(raw, io.BytesIO)
    if not text:
        return raw.getvalue()
    return io.TextIOWrapper(io.BytesIO(raw.getvalue()), encoding="utf-8").read()


def realruns_dir() -> Path | None:
    """`../shared/realruns` beside the repo, or $SRUNS_REALRUNS; None when absent."""
    env = os.environ.get("SRUNS_REALRUNS")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared" / "realruns"]:
        if candidate.is_dir():
            return candidate
    return None


INTERRUPTED_LINE = "sruns-stream: interrupted; run the same command again to resume"
T = TypeVar("T")

# Every process start_cli started; conftest's autouse fixture kills, by PID, any that a
# failing test left running.
STARTED: list[subprocess.Popen[str]] = []


def start_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, capture: bool = True) -> subprocess.Popen[str]:
    """`python -m sruns_stream ARGS` started in a real process, not waited for."""
    pipe = subprocess.PIPE if capture else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "sruns_stream", *args], cwd=cwd, env=child_env(env), stdout=pipe, stderr=pipe, text=True,
    )
    STARTED.append(proc)
    return proc


def kill_at_hold(proc: subprocess.Popen[str], proxy: FaultProxy) -> None:
    """SIGKILL the archive while the proxy holds one of its requests (deterministic: no
    race with the upload finishing first), then let the held request end."""
    wait_until(lambda: proxy.holds.held.is_set(), "a request held by the proxy", proc=proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    proxy.release()


def wait_until(
    condition: Callable[[], T], what: str, *, timeout: float = 60, proc: subprocess.Popen[str] | None = None,
    poll: float = 0.005,
) -> T:
    """Poll ``condition`` until it returns something true, and return that. Fails the
    test naming ``what`` after ``timeout`` seconds, or as soon as ``proc`` (the process
    that should make it happen) has ended. The timeout is a safety net, never a
    measurement: it is far above what the condition needs."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"{what}: the process ended first (exit {proc.returncode}): {out}{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout} s")
        time.sleep(poll)


def journal_rows(db: Path) -> dict[str, dict[str, Any]]:
    """Every `tasks` row, by run name; read while another process writes the journal
    (empty while it is still being created)."""
    if not Path(db).exists():
        return {}
    conn = sqlite3.connect(db, timeout=30)
    try:
        conn.row_factory = sqlite3.Row
        return {r["name"]: dict(r) for r in conn.execute("SELECT * FROM tasks")}
    except sqlite3.Error:  # the file or its tables are not there yet
        return {}
    finally:
        conn.close()


def journal_row(db: Path, run: str) -> dict[str, Any]:
    """One run's `tasks` row (``{}`` while there is none)."""
    return journal_rows(db).get(run, {})


def sigterm_once_past(proc: subprocess.Popen[str], db: Path, run: str, at: int | None) -> bool:
    """SIGTERM ``proc`` once this process has made the journal's durable offset pass
    ``at`` (None: 0.3 s after start, in start-up); check the outcome. True if it
    interrupted work; False if the archive had finished first.

    Stopped while working: exit 130, one line, the row resumable. Python runs no handler
    before it has installed ours (start-up) or once it has begun to exit (finalization
    resets handlers); there the default action (-15) is right, and the row must not be
    left in progress either.
    """
    before = journal_row(db, run).get("durable_offset") or 0
    deadline = time.monotonic() + (0.3 if at is None else 60)
    while proc.poll() is None and time.monotonic() < deadline:
        if at is not None and (journal_row(db, run).get("durable_offset") or 0) > max(before, at - 1):
            break
        time.sleep(0.005)
    if proc.poll() is not None:
        _, err = proc.communicate()
        assert proc.returncode == 0, err
        return False
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    status = journal_row(db, run).get("status")
    if proc.returncode == 130:
        assert err.strip().splitlines()[-1] == INTERRUPTED_LINE, err
        assert status in (None, "not_running", "complete"), status
        return True
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert status in (None, "not_running", "complete"), (proc.returncode, status, err)
    return False
