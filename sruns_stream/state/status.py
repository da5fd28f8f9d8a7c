"""`sruns-stream status`: what the journal says about each run, for people and for `--json`.

Per run: its status; while it streams, the percentage of the tar stream stored, the rate
and the time left (from the attempt's start and its newest checkpoint, both in the
journal); attempts and failures, the last error, a clean stop, the next retry or that
the daemon gave up (and how to retry); where the archive is as a URI that `verify`,
`restore` and gcloud accept (``gs://…``, or a path), its crc32c in hex and as gcloud
shows it (base64); times as dates and "ago" (``--json``: ISO 8601). Nothing here writes:
the caller opens the journal (an existing one only) and `watch` redraws until Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shlex
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from ..humanize import ago, crc32c_base64, hms, human_bytes, human_rate, iso_time, local_time
from ..storage.layout import storage_uri
from .journal import ARCHIVED, IN_PROGRESS, Task
from .process import alive

__all__ = ["render_json", "render_text", "retry_command", "run_view", "watch"]


def retry_command(run: str, config: Path | None = None, journal: Path | None = None) -> str:
    """The `sruns-stream retry` command a hint prints (status, the daemon's log, the
    gave-up mail and webhook): with the config or journal it needs, so that pasted in any
    directory it acts on the same journal; quoted for a POSIX shell."""
    words = ["sruns-stream", "retry", run]
    if config is not None:
        words += ["--config", str(config)]
    if journal is not None:
        words += ["--journal", str(journal)]
    return shlex.join(words)


def run_view(task: Task, now: float, done: tuple[int, int] | None = None) -> dict[str, Any]:
    """One run as `status --json` shows it (times as epoch seconds here; see `render_json`).
    ``done`` is `Journal.progress` (raw bytes archived, archive bytes stored), which sums
    the segments of a run uploaded by several streams; without it, the row's checkpoint."""
    running = task.status in IN_PROGRESS and alive(task.pid, task.pid_start)
    raw_done, durable = done or (task.checkpoint.raw_offset, task.durable_offset)
    if task.status == "complete" and task.raw_bytes:
        raw_done = task.raw_bytes
    total = task.raw_bytes if task.status == "complete" and task.raw_bytes else task.raw_total
    rate = eta = None
    if running and task.session_started_at and task.updated_at and task.raw_resumed is not None:
        elapsed = task.updated_at - task.session_started_at
        if elapsed > 0 and raw_done > task.raw_resumed:
            rate = (raw_done - task.raw_resumed) / elapsed
            eta = (total - raw_done) / rate if total else None
    location = task.location or task.gcp_tarfile
    return {
        "name": task.name,
        "status": task.status,
        "running": running,
        "percent": round(100.0 * raw_done / total, 1) if total else None,
        "raw_done": raw_done,
        "raw_total": total,
        "rate_mb_s": round(rate / 1e6, 1) if rate is not None else None,
        "eta_seconds": round(eta) if eta is not None else None,
        "attempts": task.attempts,
        "failures": task.failures,
        "last_error": task.last_error,
        "interrupted": task.status == "not_running" and task.interrupted_at is not None and not task.last_error,
        "next_attempt_at": task.next_attempt_at if task.gave_up_at is None else None,
        "gave_up": task.gave_up_at is not None,
        "gave_up_at": task.gave_up_at,
        "location": storage_uri(location) if location and location != "null" else location,
        "gcp_tarfile": task.gcp_tarfile,
        "raw_bytes": task.raw_bytes,
        "archive_bytes": task.archive_bytes,
        "durable_offset": durable,
        "file_count": task.file_count,
        "crc32c": task.crc32c,
        "crc32c_base64": crc32c_base64(task.crc32c) if task.crc32c else None,
        "rundir": task.rundir or task.rundir_found,
        "exclude": list(task.params.get("exclude", [])),
        "instrument_status": task.instrument_status,
        "created_at": task.created_at,
        "started_at": task.session_started_at,
        "updated_at": task.updated_at,
        "finished_at": task.finished_at,
        "interrupted_at": task.interrupted_at,
        "moved_to": task.moved_to,
        "moved_at": task.moved_at,
        "swept_at": task.swept_at,
        "legacy_tarfile": task.legacy_tarfile,
        "pid": task.pid if running else None,
    }


_TIMES = ("next_attempt_at", "gave_up_at", "created_at", "started_at", "updated_at", "finished_at",
          "interrupted_at", "moved_at", "swept_at")


def render_json(
    tasks: list[Task], now: float, *, compact: bool = False, done: Mapping[str, tuple[int, int]] | None = None,
) -> str:
    """A JSON list, one object per run, times in ISO 8601 with the UTC offset."""
    rows = []
    for task in tasks:
        row = run_view(task, now, (done or {}).get(task.name))
        for key in _TIMES:
            row[key] = iso_time(row[key])
        rows.append(row)
    return json.dumps(rows, indent=None if compact else 2)


def _when(ts: float, now: float) -> str:
    return f"{local_time(ts)} ({ago(now - ts)})"


def render_text(tasks: list[Task], now: float, done: Mapping[str, tuple[int, int]] | None = None,
                retry: Callable[[str], str] = retry_command) -> str:
    """A block per run: a headline, then only the lines that say something. ``retry``
    gives the retry command for a run the daemon gave up on."""
    if not tasks:
        return "no runs in the journal yet\n"
    return "\n".join(_block(task, now, (done or {}).get(task.name), retry) for task in tasks)


def _headline(task: Task, view: dict[str, Any]) -> str:
    if view["gave_up"]:
        return "not_running: gave up"
    if task.status in IN_PROGRESS and not view["running"]:
        return f"{task.status} (its process is gone: resumed at the next attempt)"
    if view["interrupted"]:
        return "not_running: stopped (resumes at the next attempt)"
    if task.status == "not_running" and task.last_error:
        return "not_running: failed" if task.changed_at is None else "not_running: waiting for the folder to be quiet"
    return task.status


def _block(task: Task, now: float, done: tuple[int, int] | None, retry: Callable[[str], str]) -> str:
    v = run_view(task, now, done)
    lines = [f"{task.name}  {_headline(task, v)}"]

    def add(label: str, text: str) -> None:
        lines.append(f"  {label:<10} {text}")

    if v["running"]:
        shown = f"{v['percent']:.1f}% ({human_bytes(v['raw_done'])} of {human_bytes(v['raw_total'])})" \
            if v["percent"] is not None else human_bytes(v["raw_done"])
        rate = v["rate_mb_s"] * 1e6 if v["rate_mb_s"] is not None else None
        add("progress", f"{shown}, {human_rate(rate)}, ETA {hms(v['eta_seconds'])} (pid {v['pid']})")
    elif task.status != "complete" and v["percent"] is not None and v["raw_done"]:
        add("progress", f"{v['percent']:.1f}% stored ({human_bytes(v['raw_done'])} of "
            f"{human_bytes(v['raw_total'])}); the next attempt resumes from there if it can")
    if v["location"] and task.status in ARCHIVED:
        size = f"{human_bytes(task.archive_bytes)}" if task.archive_bytes is not None else "size unknown"
        files = f", {task.file_count:,} files" if task.file_count is not None else ""
        add("archive", f"{v['location']} ({size}{files})")
        if task.crc32c:
            add("crc32c", f"{task.crc32c} (base64 {v['crc32c_base64']}, as gcloud shows it)")
    elif v["location"]:
        add("last", f"{v['location']} (not this run's archive now)")
    if v["rundir"]:
        add("folder", v["rundir"])
    if v["exclude"]:
        add("excluded", ", ".join(v["exclude"]))
    attempts = f"{task.attempts}"
    if task.failures:
        attempts += f" ({task.failures} failed)"
    if task.attempts or task.failures:
        add("attempts", attempts)
    if task.last_error:
        add("error", task.last_error)
    if v["interrupted"]:
        add("stopped", _when(task.interrupted_at or now, now))
    if task.gave_up_at is not None:
        add("gave up", f"{_when(task.gave_up_at, now)}; after fixing the cause: {retry(task.name)}")
    elif task.next_attempt_at is not None and task.status != "complete":
        add("retry", f"{local_time(task.next_attempt_at)} ({ago(now - task.next_attempt_at)})")
    if task.session_started_at and task.status != "complete":
        add("started", _when(task.session_started_at, now))
    if task.finished_at and task.status == "complete":
        add("finished", _when(task.finished_at, now))
    if task.moved_to:
        add("moved to", task.moved_to + (f" ({local_time(task.moved_at)})" if task.moved_at else ""))
    if task.swept_at:
        add("swept", _when(task.swept_at, now))
    if task.legacy_tarfile:
        add("old tar", f"sruns-monitor's local tarball {task.legacy_tarfile} is not used: "
            + ("delete it" if task.status == "complete" else "delete it once this run is archived"))
    if task.updated_at:
        add("updated", _when(task.updated_at, now))
    return "\n".join(lines) + "\n"


def watch(frame: Callable[[], str], out: TextIO, interval: float, stop: threading.Event | None = None) -> None:
    """Print ``frame()`` every ``interval`` seconds until Ctrl-C (a KeyboardInterrupt, for
    the caller to end on) or ``stop``; on a terminal each frame replaces the last, else
    frames follow each other (a JSON frame is one line)."""
    clear = out.isatty() and os.environ.get("TERM") != "dumb"
    stop = stop or threading.Event()
    while not stop.is_set():
        text = frame()
        out.write(("\x1b[H\x1b[2J" if clear else "") + (text if text.endswith("\n") else text + "\n"))
        out.flush()
        stop.wait(interval)
