"""`sruns-stream monitor`: the daemon that finds finished runs and archives each one.

Every ``cycle_pause_sec`` it reaps its children and reads how they ended, kills a child
that overran ``task_runtime_limit_sec`` (identified by PID *and* process start time, so
a reused PID never gets an unrelated process killed), scans the watch directories,
starts one `sruns-stream archive` child process per finished run (at most
``max_concurrent_runs``), moves verified runs to ``completed_runs_dir``, sweeps old ones
from there by the time of the move, and mirrors every status change to Firestore
through the journal's outbox. A failing run is retried with exponential backoff up to
``max_attempts``, then left alone and mailed once.

Children die with the daemon (SIGTERM through PR_SET_PDEATHSIG) and stop at a
checkpoint, so the next start resumes them without re-uploading what was stored.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .completion import CompletionRules, run_state
from .config import Config
from .errors import EXIT_INTERRUPTED, ConfigError
from .firestore import Leases, NoMirror, StatusMirror, fields_from_task
from .journal import Journal
from .notify import MailEvent, Notifier, NullNotifier

__all__ = ["Monitor", "process_start_time"]

log = logging.getLogger("sruns_stream.monitor")

_BACKOFF_BASE_S = 60.0
_BACKOFF_MAX_S = 6 * 3600.0
_KILL_GRACE_S = 30.0


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])


@dataclass
class _Child:
    name: str
    rundir: Path
    proc: subprocess.Popen[bytes]
    start_ticks: int | None
    started: float
    log_path: Path
    killed: bool = False  # by task_runtime_limit_sec: a failure
    stopping: bool = False  # by shutdown or a lost lease: an interruption, not a failure


class Monitor:
    def __init__(
        self,
        config: Config,
        config_path: Path,
        journal: Journal,
        *,
        mirror: StatusMirror | None = None,
        notifier: Notifier | None = None,
        leases: Leases | None = None,
        clock: Callable[[], float] = time.time,
        python: str = sys.executable,
        host: str | None = None,
    ) -> None:
        if not config.watchdirs:
            raise ConfigError("config needs 'watchdir' or 'watchdirs' for the monitor")
        if config.destination is None:
            raise ConfigError("config needs 'gcp_bucket_name' (or 'local_dest') for the monitor")
        self.config = config
        self.config_path = config_path.absolute()
        self.journal = journal
        self.mirror: StatusMirror = mirror or NoMirror()
        self.notifier: Notifier = notifier or NullNotifier()
        self.clock = clock
        self.python = python
        self.host = host or config.host_id or socket.gethostname()
        # With several daemons on one share, a run is started only under a Firestore lease.
        self.leases = leases
        self.children: dict[str, _Child] = {}
        self._move_refused: set[str] = set()  # logged once per run, not every cycle
        self._sweep_refused: set[str] = set()
        self.rules = CompletionRules(marker_age_s=config.sentinal_file_age_minutes * 60.0)
        self.log_dir = Path(f"{journal.path}.logs")

    # -- the loop -------------------------------------------------------------------

    def run(self, stop: threading.Event) -> int:
        """Cycle until ``stop`` is set, then stop the children at a checkpoint."""
        self.recover()
        while not stop.is_set():
            self.cycle()
            stop.wait(self.config.cycle_pause_sec)
        self.shutdown("stop requested")
        return 0

    def run_once(self, stop: threading.Event) -> int:
        """Archive every finished run there is now, waiting for each, then return."""
        self.recover()
        while not stop.is_set():
            self.cycle()
            if not self.children:
                break
            while self.children and not stop.is_set():
                stop.wait(0.2)
                self.enforce_limits()
                self.reap()
        self.shutdown("stop requested" if stop.is_set() else "--once finished")
        return 0

    def cycle(self) -> None:
        # Each step guards itself: one run's trouble must not stop the others.
        for step in (self.reap, self.enforce_limits, self.renew_leases, self.scan, self.move_completed,
                     self.sweep, self.publish):
            try:
                step()
            except Exception:  # the daemon must outlive any one step's bug
                log.exception("monitor step %s failed", step.__name__)
        # Firestore gets at most half a cycle: a slow one must not stall archiving.
        self.mirror.flush(deadline_s=min(10.0, max(1.0, self.config.cycle_pause_sec / 2)))

    def recover(self) -> None:
        """At start: rows left "in progress" by a crash become not_running (resumable)."""
        for task in self.journal.tasks():
            if task.status in ("starting", "tarring", "tarring_complete", "uploading", "uploading_complete"):
                alive = task.pid is not None and process_start_time(task.pid) == task.pid_start
                if not alive:
                    self.journal.update(task.name, status="not_running", pid=None,
                                        last_error=task.last_error or "interrupted (daemon restart)")

    def shutdown(self, why: str) -> None:
        """SIGTERM every child (they stop at a checkpoint), wait, mail, flush."""
        names = list(self.children)
        for child in self.children.values():
            child.stopping = True
            self._signal(child, signal.SIGTERM)
        deadline = time.monotonic() + _KILL_GRACE_S
        for child in self.children.values():
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(child, signal.SIGKILL)
                child.proc.wait()
        self.reap()
        self.notifier.send(MailEvent.stopping(sig=why, interrupted=names))
        self.publish()
        self.mirror.flush(deadline_s=10.0)
        self.mirror.close()

    # -- steps ----------------------------------------------------------------------

    def reap(self) -> None:
        for name, child in list(self.children.items()):
            code = child.proc.poll()
            if code is None:
                continue
            del self.children[name]
            task = self.journal.get(name)
            # The journal is the authority: "complete" is written only after the archive
            # was verified, whatever exit code a signal during exit may have caused.
            if task is not None and task.status == "complete":
                self.journal.update(name, failures=0, next_attempt_at=None, pid_start=None)
                self._release_after_publishing(name)
                self.notifier.send(
                    MailEvent.archived(
                        name,
                        raw_bytes=task.raw_bytes or 0,
                        archive_bytes=task.archive_bytes or 0,
                        seconds=(task.finished_at or 0) - (task.session_started_at or task.finished_at or 0),
                        location=task.gcp_tarfile or task.location or "",
                        crc32c=task.crc32c,
                        files=task.file_count,
                        instrument_status=task.instrument_status,
                    )
                )
                continue
            if self.leases is not None:
                self.leases.release(name, self.host)
            if (code == EXIT_INTERRUPTED or child.stopping) and not child.killed:
                # Stopped on purpose (shutdown, lease lost), even if it needed SIGKILL:
                # it resumes when started again and its attempts are not used up.
                if task is not None and task.status != "not_running":
                    self.journal.update(name, status="not_running", pid=None)
                continue
            error = (task.last_error if task else None) or _last_line(child.log_path) or f"exit code {code}"
            if child.killed:
                error = f"killed after exceeding task_runtime_limit_sec ({self.config.task_runtime_limit_sec} s)"
            self._failed(name, error, child if child.killed else None)

    def _failed(self, name: str, error: str, killed: _Child | None = None) -> None:
        task = self.journal.get(name)
        failures = (task.failures if task else 0) + 1
        now = self.clock()
        fields: dict[str, Any] = {"status": "not_running", "pid": None, "failures": failures, "last_error": error}
        if failures >= self.config.max_attempts:
            fields["gave_up_at"] = now
            log.error("%s: giving up after %d failed attempts: %s", name, failures, error)
        else:
            delay = min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2 ** (failures - 1))
            fields["next_attempt_at"] = now + delay
            log.warning("%s: attempt %d failed (%s); retrying in %.0f s", name, failures, error, delay)
        self.journal.update(name, **fields)
        # Mail once per kill, on the first failure and on giving up: never every cycle.
        if killed is not None:
            self.notifier.send(
                MailEvent.killed(
                    name,
                    pid=killed.proc.pid,
                    runtime_sec=now - killed.started,
                    limit_sec=float(self.config.task_runtime_limit_sec or 0),
                )
            )
        if failures >= self.config.max_attempts:
            self.notifier.send(MailEvent.gave_up(name, error=error, attempts=failures))
        elif failures == 1 and killed is None:
            self.notifier.send(
                MailEvent.failed(
                    name,
                    error=error,
                    attempt=failures,
                    max_attempts=self.config.max_attempts,
                    will_retry=True,
                    retry_in_sec=fields["next_attempt_at"] - now,
                )
            )

    def _release_after_publishing(self, name: str) -> None:
        """Give up the lease only once Firestore says `complete`: another daemon that
        finds the run unleased but not yet marked complete would archive it again."""
        if self.leases is None:
            return
        self.publish()
        if self.mirror.flush(deadline_s=10.0).drained:
            self.leases.release(name, self.host)
        # Otherwise the lease runs out by itself, by when the outbox has usually caught up.

    def renew_leases(self) -> None:
        if self.leases is None:
            return
        for child in self.children.values():
            if child.stopping:
                continue
            if not self.leases.renew(child.name, self.host, self.config.lease_sec):
                log.error("%s: lost the lease (another daemon took it, or Firestore is unreachable);"
                          " stopping at a checkpoint", child.name)
                child.stopping = True
                self._signal(child, signal.SIGTERM)

    def enforce_limits(self) -> None:
        limit = self.config.task_runtime_limit_sec
        if not limit:
            return
        for child in self.children.values():
            if not child.killed and self.clock() - child.started > limit:
                log.error("%s: runtime limit of %d s exceeded; stopping pid %d", child.name, limit, child.proc.pid)
                child.killed = True
                self._signal(child, signal.SIGTERM)
                try:
                    child.proc.wait(_KILL_GRACE_S)
                except subprocess.TimeoutExpired:
                    self._signal(child, signal.SIGKILL)
                    child.proc.wait()

    def _signal(self, child: _Child, sig: int) -> None:
        # Only a process that is still our child with the start time we recorded.
        if child.proc.poll() is None and process_start_time(child.proc.pid) == child.start_ticks:
            child.proc.send_signal(sig)

    def scan(self) -> None:
        now = self.clock()
        for watchdir in self.config.watchdirs:
            try:
                candidates = sorted(p for p in watchdir.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError as exc:
                log.error("cannot read watchdir %s: %s", watchdir, exc.strerror)
                continue
            for rundir in candidates:
                if len(self.children) >= self.config.max_concurrent_runs:
                    return
                self._consider(rundir, now)

    def _consider(self, rundir: Path, now: float) -> None:
        name = rundir.name
        if name in self.children:
            return
        task = self.journal.get(name)
        if task is not None:
            if task.status == "complete" or task.gave_up_at is not None:
                return
            if task.next_attempt_at is not None and task.next_attempt_at > now:
                return
            if task.pid is not None and process_start_time(task.pid) == task.pid_start:
                return  # a live archive of it that we did not start (another daemon, a person)
        state = run_state(rundir, self.rules, now)
        if not state.complete:
            return
        if self.leases is not None and not self.leases.claim(name, self.host, self.config.lease_sec):
            return  # another daemon has it, it is archived, or Firestore cannot say: no double work
        self.journal.ensure(
            name,
            rundir_found=str(rundir),
            run_id=state.run_info.run_id if state.run_info else None,
            instrument=state.instrument,
            instrument_status=state.instrument_status,
        )
        if state.errored:
            log.warning("%s: instrument reports %s (%s); archiving it anyway", name,
                        state.instrument_status, state.instrument_error or "no message")
        self._start(name, rundir)

    def _start(self, name: str, rundir: Path) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        cmd = [self.python, "-m", "sruns_stream", "archive", str(rundir), "--config", str(self.config_path),
               "--journal", str(self.journal.path), "--json"]
        env = dict(os.environ, SRUNS_PARENT_PID=str(os.getpid()))
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        ticks = process_start_time(proc.pid)
        self.children[name] = _Child(name, rundir, proc, ticks, self.clock(), log_path)
        self.journal.update(name, pid_start=ticks, next_attempt_at=None)
        log.info("%s: archiving (pid %d)", name, proc.pid)
        task = self.journal.get(name)
        self.notifier.send(
            MailEvent.started(
                name,
                host=self.host,
                destination=self.config.destination or "",
                resumed=bool(task and task.durable_offset),
            )
        )

    def move_completed(self) -> None:
        target = self.config.completed_runs_dir
        if target is None:
            return
        for task in self.journal.tasks():
            # Only a verified archive lets a run folder move: status complete is set
            # after the destination's crc32c matched.
            if task.status != "complete" or task.moved_at or not task.rundir_found or task.name in self.children:
                continue
            src = Path(task.rundir_found)
            if not src.is_dir():
                continue
            dst = target / task.name
            if dst.exists():
                log.error("%s: cannot move to %s: it exists already", task.name, dst)
                continue
            target.mkdir(parents=True, exist_ok=True)
            try:
                # Rename only: across filesystems a move is a copy of up to terabytes that
                # would stall this loop for hours and, if interrupted, leave a half copy
                # that later cycles cannot tell from a finished one.
                os.rename(src, dst)
            except OSError as exc:
                if task.name not in self._move_refused:
                    self._move_refused.add(task.name)
                    fix = (f"; put completed_runs_dir on the same filesystem as {src.parent}"
                           if exc.errno == errno.EXDEV else "")
                    log.error("%s: not moved to %s: %s%s (the run folder stays where it is)",
                              task.name, dst, exc.strerror, fix)
                continue
            self.journal.update(task.name, moved_to=str(dst), moved_at=self.clock())
            log.info("%s: moved to %s", task.name, dst)

    def sweep(self) -> None:
        age = self.config.sweep_age_sec
        if not age:
            return
        for task in self.journal.tasks():
            # By the time of the move, never the folder's own mtime; never unverified runs.
            if task.status != "complete" or not task.moved_at or task.swept_at or not task.moved_to:
                continue
            if self.clock() - task.moved_at < age:
                continue
            try:
                shutil.rmtree(task.moved_to)
            except FileNotFoundError:
                pass  # removed by hand already: nothing left to sweep
            except OSError as exc:
                if task.name not in self._sweep_refused:
                    self._sweep_refused.add(task.name)
                    log.error("%s: cannot sweep %s: %s (tried again every cycle)", task.name, task.moved_to, exc)
                continue
            self.journal.update(task.name, swept_at=self.clock())
            log.info("%s: swept %s", task.name, task.moved_to)

    def publish(self) -> None:
        """Mirror each task whose status or location changed since it was last published."""
        for task in self.journal.tasks():
            key = f"{task.status}|{task.location}|{task.durable_offset}|{task.moved_to}|{task.last_error}"
            if key == task.published:
                continue
            fields = fields_from_task(task, host=self.host, instrument_status=task.instrument_status)
            if task.status == "tarring":
                fields["archive_bytes"] = task.durable_offset  # progress while streaming
            self.mirror.publish(task.name, **fields)
            self.journal.update(task.name, published=key)


def _last_line(path: Path) -> str | None:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1][:500] if lines else None
