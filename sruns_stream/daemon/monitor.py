"""`sruns-stream monitor`: the daemon that finds finished runs and archives each one.

Every ``cycle_pause_sec`` it reaps its children and reads how they ended, kills a child
that overran ``task_runtime_limit_sec`` (identified by PID *and* process start time, so
a reused PID never gets an unrelated process killed), scans the watch directories,
starts one `sruns-stream archive` child process per finished run (at most
``max_concurrent_runs``), has `retention` move verified runs to ``completed_runs_dir``
and sweep old ones, and mirrors every status change to Firestore through the
journal's outbox. A failing run is retried with exponential backoff up to
``max_attempts``, then left alone and mailed once.

A run found changed after it was scanned (an archive that stopped with exit 3, or one
`retention` handed back) is archived again, from where it is now, once nothing in it
changed for ``quiet_period_sec``: analysis software writes FASTQs and ``Alignment_*``
folders into run folders after the instrument is done. A run whose folder disappeared
while it was archived is logged once and no longer watched; it is a run again if a
folder of its name appears.

Children die with the daemon (SIGTERM through PR_SET_PDEATHSIG) and stop at a
checkpoint, so the next start resumes them without re-uploading what was stored.

Mail and webhook posts go out on a thread of their own (`notify.DeliveryQueue`): a slow
or hung server never holds up a cycle, a lease renewal or a stop.
"""

from __future__ import annotations

import logging
import os
import re
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

from .. import __version__
from ..config import Config
from ..errors import EXIT_CHANGED, EXIT_INTERRUPTED, ConfigError, RunLocked, UsageError
from ..humanize import hms, human_bytes, ratio
from ..runfolder.completion import CompletionRules, newest_change, run_state
from ..state.firestore import NoMirror, StatusMirror, fields_from_task
from ..state.journal import IN_PROGRESS, Journal, Task
from ..state.process import alive, start_time
from ..state.status import retry_command
from ..storage.layout import storage_uri
from .daemonlog import event
from .leases import Leases
from .notify import DEFAULT_SUBJECT_PREFIX, DeliveryQueue, MailEvent, Notifier, NullNotifier
from .retention import Retention

__all__ = ["Monitor", "retry_run"]

log = logging.getLogger("sruns_stream.daemon.monitor")

_BACKOFF_BASE_S = 60.0
_BACKOFF_MAX_S = 6 * 3600.0
_KILL_GRACE_S = 30.0
# How long notifications still waiting may take once the daemon stops: on a signal only
# seconds (a stop must not wait for a hung server); at the end of --once, which no one is
# waiting to end, about one webhook exchange's deadline.
_NOTIFY_GRACE_ON_STOP_S = 2.0
_NOTIFY_GRACE_ONCE_S = 30.0


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
        self.check(config, config_path)
        self.config = config
        self.config_path = config_path.absolute()
        self.journal = journal
        self.mirror: StatusMirror = mirror or NoMirror()
        # Sent from the loop, delivered on the queue's thread: the loop never waits for a server.
        self.notifier = DeliveryQueue(notifier or NullNotifier(),
                                      subject_prefix=config.name or DEFAULT_SUBJECT_PREFIX)
        self.clock = clock
        self.python = python
        self.host = host or config.host_id or socket.gethostname()
        # With several daemons on one share, a run is started only under a Firestore lease.
        self.leases = leases
        self.children: dict[str, _Child] = {}
        self._waiting: set[str] = set()  # runs waiting for a quiet folder, logged once
        self._why_waiting: dict[str, str] = {}  # -v: why each run seen is not started, logged when it changes
        self.retention = Retention(config, journal, clock=clock, busy=lambda name: name in self.children)
        self.rules = CompletionRules.from_config(config.sentinal_file_age_minutes, config.quiet_period_sec)
        self.log_dir = Path(f"{journal.path}.logs")
        self._once = False

    @staticmethod
    def check(config: Config, config_path: Path) -> None:
        """ConfigError unless the config can run a daemon (before anything is created)."""
        if not config.watchdirs:
            raise ConfigError("config needs 'watchdir' or 'watchdirs' for the monitor")
        if config.destination is None:
            raise ConfigError("config needs 'gcp_bucket_name' (or 'local_dest') for the monitor")
        for watchdir in config.watchdirs:
            if not watchdir.is_dir():
                raise ConfigError(
                    f"watch directory {watchdir} does not exist or is not a directory: create (or mount) it, "
                    f"or fix 'watchdirs' in {config_path}"
                )

    @staticmethod
    def check_destination(config: Config, config_path: Path) -> None:
        """ConfigError unless the destination bucket exists and the credentials may archive
        into it (found now, in one line, rather than run by run after backoffs)."""
        if config.gcp_bucket_name:
            from ..storage.gcs.client import check_bucket

            check_bucket(config.gcp_bucket_name, f"gcp_bucket_name in {config_path}")

    # -- the loop -------------------------------------------------------------------

    def started_line(self) -> str:
        """What the daemon is about to do, for its first log line."""
        mode = "one pass (--once)" if self._once else f"every {self.config.cycle_pause_sec} s"
        return (
            f"sruns-stream {__version__} monitor started (pid {os.getpid()}, host {self.host}): config "
            f"{self.config_path}; watching {', '.join(str(w) for w in self.config.watchdirs)}; destination "
            f"{self.config.destination}; journal {self.journal.path}; {mode}, at most "
            f"{self.config.max_concurrent_runs} run(s) at a time"
        )

    def run(self, stop: threading.Event) -> int:
        """Cycle until ``stop`` is set, then stop the children at a checkpoint."""
        log.info("%s", self.started_line())
        self.recover()
        while not stop.is_set():
            self.cycle()
            stop.wait(self.config.cycle_pause_sec)
        self.shutdown("stop requested")
        return 0

    def run_once(self, stop: threading.Event) -> int:
        """Archive every finished run there is now, waiting for each, then return."""
        self._once = True
        log.info("%s", self.started_line())
        self.recover()
        while not stop.is_set():
            self.cycle()
            if not self.children:
                break
            while self.children and not stop.is_set():
                stop.wait(0.2)
                self.enforce_limits()
                self.reap()
        self.retention.finish_checks(stop)  # sweeps waiting on a local archive's read-back, in this run too
        if stop.is_set():
            self.shutdown("stop requested")
        else:
            self.shutdown("--once finished", notify_grace=_NOTIFY_GRACE_ONCE_S)
        return 0

    def cycle(self) -> None:
        # Each step guards itself: one run's trouble must not stop the others.
        for step in (self.reap, self.enforce_limits, self.renew_leases, self.scan, self.retention.move_completed,
                     self.retention.sweep, self.publish):
            try:
                step()
            except Exception:  # the daemon must outlive any one step's bug
                log.exception("monitor step %s failed", step.__name__)
        # Firestore gets at most half a cycle: a slow one must not stall archiving.
        self.mirror.flush(deadline_s=min(10.0, max(1.0, self.config.cycle_pause_sec / 2)))

    def recover(self) -> None:
        """At start: rows left "in progress" by a crash become not_running (resumable)."""
        for task in self.journal.tasks():
            if task.status in IN_PROGRESS and not alive(task.pid, task.pid_start):
                # Stopped without recording it (kill -9, a reboot): an interruption, resumed.
                self.journal.update(task.name, status="not_running", pid=None, interrupted_at=self.clock())

    def shutdown(self, why: str, *, notify_grace: float = _NOTIFY_GRACE_ON_STOP_S) -> None:
        """SIGTERM every child (they stop at a checkpoint), wait, mail, flush; notifications
        not delivered within ``notify_grace`` seconds are logged as such."""
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
        # Those that finished meanwhile (archived as the signal came) were not interrupted.
        names = [name for name in names if (task := self.journal.get(name)) is None or task.status != "complete"]
        self.retention.close()
        self.notifier.send(MailEvent.stopping(sig=why, interrupted=names))
        self.publish()
        self.mirror.flush(deadline_s=10.0)
        self.mirror.close()
        self.notifier.close(notify_grace)
        stopped = (f"{len(names)} archive(s) stopped at a checkpoint, resumed at the next start: {', '.join(names)}"
                   if names else "no archive was running")
        log.info("sruns-stream monitor stopped (%s): %s", why, stopped)

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
                seconds = (task.finished_at or 0) - (task.session_started_at or task.finished_at or 0)
                location = storage_uri(task.gcp_tarfile or task.location or "") if task.location else ""
                self._log_archived(task, location, seconds)
                self.notifier.send(
                    MailEvent.archived(
                        name,
                        raw_bytes=task.raw_bytes or 0,
                        archive_bytes=task.archive_bytes or 0,
                        seconds=seconds,
                        location=location,
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
                    self.journal.update(name, status="not_running", pid=None, interrupted_at=self.clock())
                continue
            if not child.killed and not (child.rundir.is_dir() and not child.rundir.is_symlink()):
                self._gone(name, child.rundir)
                continue
            if code == EXIT_CHANGED and not child.killed:
                # Not a failure: the folder is still being written. Archived again once quiet.
                log.warning("%s: %s; archived again once nothing in it changed for %d s", name,
                            (task.last_error if task else None) or "the run folder changed while it was archived",
                            self.config.quiet_period_sec)
                continue
            error = (task.last_error if task else None) or _last_line(child.log_path) or f"exit code {code}"
            if child.killed:
                error = f"killed after exceeding task_runtime_limit_sec ({self.config.task_runtime_limit_sec} s)"
            self._failed(name, error, child if child.killed else None)

    @staticmethod
    def _log_archived(task: Task, location: str, seconds: float) -> None:
        """The line that says a run is archived: where, how big, its crc32c, how long."""
        raw, size = task.raw_bytes or 0, task.archive_bytes or 0
        files = f"{task.file_count:,} files, " if task.file_count is not None else ""
        log.info("%s: archived to %s: %s (raw %s, ratio %s), crc32c %s, %sin %s", task.name, location,
                 human_bytes(size), human_bytes(raw), ratio(raw, size), task.crc32c or "unknown", files, hms(seconds),
                 extra=event("archived", task.name, location=location, archive_bytes=size, raw_bytes=raw,
                             crc32c=task.crc32c, files=task.file_count, seconds=round(seconds, 3)))

    def _gone(self, name: str, rundir: Path) -> None:
        """The run folder was deleted (or moved away) while it was archived: nothing to
        wait for or retry. Forgetting where it was found stops every later cycle from
        looking for it; a folder of that name found again is a run again."""
        error = f"the run folder {rundir} disappeared during the archive; no longer watched"
        log.warning("%s: %s (archived as a run again if it reappears)", name, error)
        self.journal.update(name, status="not_running", pid=None, last_error=error, changed_at=None,
                            rundir_found=None, next_attempt_at=None)

    def _failed(self, name: str, error: str, killed: _Child | None = None) -> None:
        task = self.journal.get(name)
        failures = (task.failures if task else 0) + 1
        now = self.clock()
        fields: dict[str, Any] = {"pid": None, "failures": failures, "last_error": error}
        if failures >= self.config.max_attempts:
            fields["gave_up_at"] = now
            log.error("%s: giving up after %d failed attempts: %s", name, failures, error,
                      extra=event("gave_up", name, error=error, attempts=failures))
        else:
            delay = min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2 ** (failures - 1))
            fields["next_attempt_at"] = now + delay
            log.warning("%s: attempt %d failed (%s); retrying in %.0f s", name, failures, error, delay,
                        extra=event("failed", name, error=error, attempt=failures,
                                    max_attempts=self.config.max_attempts, retry_in_sec=delay))
        self.journal.update(name, status="not_running", **fields)
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
            self.notifier.send(MailEvent.gave_up(name, error=error, attempts=failures,
                                                retry=retry_command(name, config=self.config_path)))
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
        if child.proc.poll() is None and start_time(child.proc.pid) == child.start_ticks:
            child.proc.send_signal(sig)

    def scan(self) -> None:
        now = self.clock()
        for rundir in self._candidates():
            if len(self.children) >= self.config.max_concurrent_runs:
                if rundir.name not in self.children:
                    self._wait(rundir.name, f"not considered yet: {len(self.children)} archive(s) running "
                                            f"(max_concurrent_runs {self.config.max_concurrent_runs})")
                continue
            self._consider(rundir, now)

    def _wait(self, name: str, why: str) -> None:
        """With -v: one line per run the daemon is not starting, and why; again only when
        the reason changes (numbers aside: an age growing each cycle is the same reason)."""
        key = re.sub(r"[\d.:-]+", "#", why)
        if self._why_waiting.get(name) != key:
            self._why_waiting[name] = key
            log.debug("%s: waiting: %s", name, why)

    def _candidates(self) -> list[Path]:
        """Run folders in the watch directories, then those of unfinished runs that are
        elsewhere now (found changed, or their archive gone, after they were moved: they
        are archived again from where they are)."""
        found: dict[str, Path] = {}
        for watchdir in self.config.watchdirs:
            try:
                # Not through links: a link planted in a watch directory must not make us
                # archive (read) a folder elsewhere on the machine.
                children = sorted(
                    p for p in watchdir.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
                )
            except OSError as exc:
                log.error("cannot read watchdir %s: %s", watchdir, exc.strerror)
                continue
            for p in children:
                found.setdefault(p.name, p)
        for task in self.journal.tasks():
            if task.status != "complete" and task.gave_up_at is None and task.rundir_found:
                p = Path(task.rundir_found)
                if task.name not in found and p.is_dir() and not p.is_symlink():
                    found[task.name] = p
        return list(found.values())

    def _consider(self, rundir: Path, now: float) -> None:
        name = rundir.name
        if name in self.children:
            return
        task = self.journal.get(name)
        if task is not None:
            if task.rundir_found is None:  # archived by hand with this journal: ours to move now
                self.journal.update(name, rundir_found=str(rundir))
            if task.status == "complete":
                return
            if task.gave_up_at is not None:
                return self._wait(name, f"gave up after {task.failures} failed attempts ({task.last_error}); "
                                        f"after fixing the cause: {retry_command(name, config=self.config_path)}")
            if task.next_attempt_at is not None and task.next_attempt_at > now:
                return self._wait(name, f"attempt {task.failures} failed ({task.last_error}); retrying in "
                                        f"{task.next_attempt_at - now:.0f} s")
            if alive(task.pid, task.pid_start):
                # A live archive of it that we did not start (another daemon, a person).
                return self._wait(name, f"being archived by another process (pid {task.pid})")
            if task.changed_at is not None and not self._quiet(task.name, rundir, task.changed_at, now):
                return self._wait(name, f"the folder changed after it was scanned; waiting until nothing in it "
                                        f"changed for {self.config.quiet_period_sec} s")
        state = run_state(rundir, self.rules, now)
        if not state.complete:
            return self._wait(name, f"not finished: {state.reason}")
        if self.leases is not None and not self.leases.claim(name, self.host, self.config.lease_sec):
            # Another daemon has it, it is archived, or Firestore cannot say: no double work.
            return self._wait(name, "claimed by another daemon, archived per Firestore, or Firestore unreachable")
        self._why_waiting.pop(name, None)
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

    def _quiet(self, name: str, rundir: Path, changed_at: float, now: float) -> bool:
        """Whether a folder found changed has been quiet for ``quiet_period_sec``. The walk
        (every entry's mtime and ctime) runs at most about once per quiet period."""
        quiet = self.config.quiet_period_sec
        if now - changed_at >= quiet:
            newest = newest_change(rundir)
            if now - newest >= quiet:
                self._waiting.discard(name)
                return True
            self.journal.update(name, changed_at=newest)
        if name not in self._waiting:
            self._waiting.add(name)
            log.info("%s: the run folder changed after it was scanned; waiting until nothing in it changed for %d s",
                     name, quiet)
        return False

    def _start(self, name: str, rundir: Path) -> None:
        self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        cmd = [self.python, "-m", "sruns_stream", "archive", str(rundir), "--config", str(self.config_path),
               "--journal", str(self.journal.path), "--json",
               # The daemon applied the completion rules itself, with its own clock and
               # quiet periods: the child does not judge the run again.
               "--not-finished"]
        env = dict(os.environ, SRUNS_PARENT_PID=str(os.getpid()))
        # O_NOFOLLOW: a link planted at the log's name must not make us append elsewhere.
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            proc = subprocess.Popen(cmd, stdout=log_fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        finally:
            os.close(log_fd)
        ticks = start_time(proc.pid)
        self.children[name] = _Child(name, rundir, proc, ticks, self.clock(), log_path)
        self.journal.update(name, pid_start=ticks, next_attempt_at=None)
        log.info("%s: archiving (pid %d)", name, proc.pid, extra=event("started", name, pid=proc.pid))
        task = self.journal.get(name)
        self.notifier.send(
            MailEvent.started(
                name,
                host=self.host,
                destination=self.config.destination or "",
                resumed=bool(task and task.durable_offset),
            )
        )

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


def retry_run(journal: Journal, name: str) -> str:
    """Make a run the daemon gave up on (or is backing off from) eligible again: its
    failures, give-up time and next attempt are cleared, so the next cycle starts it
    (with a fresh ``max_attempts``). Returns what was cleared, for the user."""
    task = journal.get(name)
    if task is None:
        raise UsageError(f"run {name!r} is not in the journal {journal.path}: nothing to retry "
                         "(the daemon archives the runs it finds by itself)")
    if task.status == "complete":
        raise UsageError(f"run {name!r} is archived (complete): to archive it again, "
                         "sruns-stream archive RUNDIR --force")
    if task.status in IN_PROGRESS and alive(task.pid, task.pid_start):
        raise RunLocked(f"run {name!r} is being archived now (pid {task.pid}): nothing to retry")
    if task.gave_up_at is not None:
        was = f"the daemon had given up after {task.failures} failed attempts"
    elif task.next_attempt_at is not None:
        was = f"it was waiting to retry after {task.failures} failed attempts"
    else:
        was = "it was not waiting"
    journal.update(name, gave_up_at=None, failures=0, next_attempt_at=None)
    last = f" (last error: {task.last_error})" if task.last_error else ""
    return f"{name}: eligible again; {was}{last}. The daemon starts it at its next cycle."


def _last_line(path: Path) -> str | None:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1][:500] if lines else None
