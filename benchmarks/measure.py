"""One timed child command (a pipeline of processes) with each process's peak RSS.

Time is wall-clock around the whole command, process start-up included: that is what a
user waits for, and every competitor pays its own start-up. A command that writes a local
archive has that file fsync'ed *inside* the timed region (sruns-stream syncs its own
output too; syncing again is then nearly free), so every local output reaches the disk
under the same rule.

Time to the first byte out (the start-up a user waits before anything is written: the
interpreter, imports, the scan) is read by polling the command's local output file (or
its ``.part``) every couple of milliseconds while it runs; commands without a local
output have none.

CPU and the serial share (issue 21): the command's CPU is ``getrusage(RUSAGE_CHILDREN)``
around it (exact, every process and thread, ended or not). Its serial part is read two
ways. sruns-stream reports its own with ``--json`` (``"cpu"``: getrusage and the main
thread's ``thread_time``, exact); for every other command a thread here polls
``/proc/PID/task/TID/stat`` of each of the pipeline's processes every 20 ms and keeps each
thread's last reading, and the busiest single thread of the pipeline is its serial part
(tar's one thread, a gzip writer's main loop): nothing else can make it go faster. The poll
misses at most a thread's last 20 ms and counts in clock ticks (10 ms). ``1 / share`` is
the cap Amdahl puts on the speed-up from any number of cores.

Peak RSS comes from GNU ``/usr/bin/time -f %M`` around each process of the pipeline when
it is installed, else from a tiny Python wrapper reading ``getrusage(RUSAGE_CHILDREN)``
after its one child exits. A pipeline's processes run at the same time, so its peak is
reported as the *sum* of its processes' peaks (an upper bound, never an underestimate).
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Command",
    "RssProbe",
    "Sample",
    "ThreadCpu",
    "cpu_measures",
    "interpreter_startup",
    "median",
    "run_command",
    "sruns_json",
]

_RUSAGE_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)\n"
)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def sruns_json(stdout: str) -> dict[str, Any] | None:
    """The JSON summary sruns-stream prints with --json (its last JSON line)."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


class RssProbe:
    """How a process's peak RSS is read: GNU time if present, else a getrusage wrapper."""

    def __init__(self, prefer_gnu_time: bool = True) -> None:
        self.gnu_time = shutil.which("time", path="/usr/bin:/bin") if prefer_gnu_time else None
        if self.gnu_time:
            self.description = f"GNU time ({self.gnu_time} -f %M) around each process"
        else:
            self.description = "resource.getrusage(RUSAGE_CHILDREN).ru_maxrss in a wrapper around each process"

    def prefix(self, report: Path) -> list[str]:
        if self.gnu_time:
            return [self.gnu_time, "-f", "%M", "-o", str(report)]
        return [sys.executable, "-c", _RUSAGE_WRAPPER, str(report)]

    @staticmethod
    def read(report: Path) -> int | None:
        """Peak RSS in KiB, or None if the wrapper wrote nothing (e.g. the process was killed)."""
        try:
            lines = report.read_text().split()
        except OSError:
            return None
        # GNU time writes "Command exited with non-zero status N" before the value.
        return int(lines[-1]) if lines and lines[-1].isdigit() else None


@dataclass(frozen=True)
class Command:
    """A pipeline: each stage's stdout feeds the next; the last one's goes to ``stdout_file``.

    ``output`` is the local archive the command leaves behind (sized, fsync'ed, timed);
    with ``stdout_file`` unset the last stage's stdout is captured (sruns-stream's JSON).
    """

    stages: tuple[tuple[str, ...], ...]
    stdout_file: Path | None = None
    output: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)

    def shell(self, rss_reports: Sequence[Path] | None = None, probe: RssProbe | None = None) -> str:
        parts = []
        for i, stage in enumerate(self.stages):
            prefix = probe.prefix(rss_reports[i]) if probe and rss_reports else []
            parts.append(shlex.join([*prefix, *stage]))
        script = " | ".join(parts)
        if self.stdout_file is not None:
            script += " > " + shlex.quote(str(self.stdout_file))
        return script

    def display(self) -> str:
        """The command as a person would type it (no measurement wrappers, no env)."""
        return self.shell()


@dataclass
class Sample:
    """One execution of one command."""

    seconds: float
    peak_rss_kib: int | None
    stage_rss_kib: list[int | None]
    output_bytes: int | None
    stdout: str
    error: str | None = None
    first_byte_s: float | None = None  # seconds until the local output first held a byte
    # What a scenario measured beside time and memory, by name: "cpu_s" and "server_cpu_s"
    # (from `run_command`), "archive_bytes", "bytes_sent", "requests", "streams_used", …
    measures: dict[str, float] = field(default_factory=dict)
    busiest_thread: str = ""  # name of the pipeline's busiest thread (/proc poll), e.g. "tar"

    @property
    def ok(self) -> bool:
        return self.error is None


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _fsync(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


_FIRST_BYTE_POLL = 0.002


class _FirstByte:
    """Polls ``output`` (and ``output.part``, where sruns-stream writes until it is done)
    on a thread until one holds a byte; ``seconds`` is then the time since ``t0``."""

    def __init__(self, output: Path, t0: float) -> None:
        self.seconds: float | None = None
        self._paths = (output, output.with_name(output.name + ".part"))
        self._t0 = t0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="first-byte", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            for path in self._paths:
                try:
                    if os.stat(path).st_size > 0:
                        self.seconds = time.perf_counter() - self._t0
                        return
                except OSError:
                    pass
            self._stop.wait(_FIRST_BYTE_POLL)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


_CPU_POLL = 0.02
_TICK = float(os.sysconf("SC_CLK_TCK"))


def _tasks_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread of ``pid``: its name and CPU seconds (utime + stime) so far."""
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue  # the thread ended between the listing and the read
        name = stat[stat.find("(") + 1: stat.rfind(")")]
        fields = stat[stat.rfind(")") + 2:].split()
        # After the name: state is field 3, utime 14 and stime 15 (proc(5)).
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / _TICK)
    return out


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it (each thread's ``children`` file, proc(5))."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except OSError:
                continue
    return found


class ThreadCpu:
    """Every ``_CPU_POLL`` seconds, each thread of ``root``'s process tree: its last CPU
    reading is kept, so a thread that has ended still counts (all but its last poll)."""

    def __init__(self, root: int, interval: float = _CPU_POLL) -> None:
        self.threads: dict[tuple[int, int], tuple[str, float]] = {}
        self._root = root
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="thread-cpu", daemon=True)
        self._thread.start()

    def poll_once(self) -> None:
        for pid in _descendants(self._root):
            for tid, reading in _tasks_cpu(pid).items():
                self.threads[(pid, tid)] = reading

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self._interval)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def busiest(self) -> tuple[str, float]:
        """The name and CPU seconds of the pipeline's busiest single thread."""
        return max(self.threads.values(), key=lambda t: t[1], default=("", 0.0))

    @property
    def total(self) -> float:
        return sum(cpu for _, cpu in self.threads.values())


def cpu_measures(stdout: str, cpu_s: float, busiest_s: float) -> dict[str, float]:
    """The row's process CPU, its serial thread's CPU and their ratio, as ``Sample.measures``.

    From sruns-stream's own ``--json`` ``"cpu"`` when it printed one (``cpu_from_json`` 1),
    else the command's total CPU and the busiest polled thread (``cpu_from_json`` 0).
    """
    summary = sruns_json(stdout)
    own = summary.get("cpu") if summary else None
    if isinstance(own, dict) and own.get("process_cpu_s"):
        proc, main = float(own["process_cpu_s"]), float(own["main_thread_cpu_s"])
        return {"proc_cpu_s": proc, "main_cpu_s": main, "main_share": main / proc, "cpu_from_json": 1.0}
    if cpu_s <= 0:
        return {}
    return {"proc_cpu_s": cpu_s, "main_cpu_s": busiest_s, "main_share": min(busiest_s / cpu_s, 1.0),
            "cpu_from_json": 0.0}


def run_command(cmd: Command, scratch: Path, probe: RssProbe, timeout: float = 3600.0) -> Sample:
    """Run ``cmd`` once under bash (``pipefail``), timed, with per-process peak RSS."""
    scratch.mkdir(parents=True, exist_ok=True)
    reports = [scratch / f"rss{i}" for i in range(len(cmd.stages))]
    for r in reports:
        r.unlink(missing_ok=True)
    err_path = scratch / "stderr"
    env = dict(os.environ)
    env.update(cmd.env)
    script = "set -o pipefail; " + cmd.shell(reports, probe)
    children, own = _cpu(resource.RUSAGE_CHILDREN), _cpu(resource.RUSAGE_SELF)
    with open(err_path, "wb") as err:
        t0 = time.perf_counter()
        watch = _FirstByte(cmd.output, t0) if cmd.output is not None else None
        # Own session: a timeout kills the whole pipeline by its process group id.
        proc = subprocess.Popen(
            ["bash", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            start_new_session=True,
        )
        threads = ThreadCpu(proc.pid)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return Sample(time.perf_counter() - t0, None, [], None, "", f"timed out after {timeout:.0f} s")
        except BaseException:  # Ctrl-C: its own session did not get the signal, so end it here
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            threads.close()
            if watch is not None:
                watch.close()
        size = None
        error = None
        if proc.returncode == 0 and cmd.output is not None:
            try:
                size = _fsync(cmd.output)
            except OSError as exc:
                error = f"no output {cmd.output}: {exc.strerror}"
        seconds = time.perf_counter() - t0
    stage_rss = [probe.read(r) for r in reports]
    known = [r for r in stage_rss if r is not None]
    peak = sum(known) if len(known) == len(stage_rss) else None
    if proc.returncode != 0:
        tail = [
            line for line in err_path.read_text(errors="replace").splitlines()
            if line.strip() and not line.startswith("Command exited with non-zero status")
        ]
        error = f"exit {proc.returncode}: " + (tail[-1].strip() if tail else "(no message)")
    first = watch.seconds if watch is not None else None
    # The command's processes (bash waits for each, so they count as our children), and
    # this process meanwhile: the in-process loopback GCS server's work, when one runs.
    cpu = {"cpu_s": _cpu(resource.RUSAGE_CHILDREN) - children, "server_cpu_s": _cpu(resource.RUSAGE_SELF) - own}
    busiest_name, busiest_s = threads.busiest
    cpu.update(busiest_thread_cpu_s=busiest_s, polled_cpu_s=threads.total)
    cpu.update(cpu_measures(out.decode(errors="replace"), cpu["cpu_s"], busiest_s))
    return Sample(seconds, peak, stage_rss, size, out.decode(errors="replace"), error, first, cpu, busiest_name)


def interpreter_startup(argv: Sequence[str], reps: int, env: Mapping[str, str] | None = None) -> list[float]:
    """Wall seconds of ``argv`` (e.g. ``python -m sruns_stream --version``) ``reps`` times:
    the fixed cost every run of that program pays before it does anything."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=full_env, check=False)
        out.append(time.perf_counter() - t0)
    return out
