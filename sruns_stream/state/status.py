"""`sruns-stream status`: what the journal says about each run, for people and for `--json`.

Per run: its status; while it streams, the percentage of the tar stream stored, the rate
and the time left (from the attempt's start and its newest checkpoint, both in the
journal); attempts and failures, the last error, a clean stop, the next retry or that
the daemon gave up (and how to retry); where the archive is as a URI that `verify`,
`restore` and gcloud accept (``gs://…``, or a path), its crc32c in hex and as gcloud
shows it (base64); times as dates and "ago" (``--json``: ISO 8601). Nothing here writes:
the caller opens the journal (an existing one only) and `watch` redraws until Ctrl-C.

A facility's journal holds hundreds of runs: by default they are a table, one line per
run (`render_table`, drawn by rich, which fits it to the terminal's width; under
``--watch`` also to its height, the runs that matter most first), and `render_text`'s
block per run is ``--long``. `select` applies the filters (``--failed``, ``--active``, a
run name or glob).
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import shlex
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from ..humanize import ago, crc32c_base64, hms, human_bytes, human_rate, iso_time, local_time
from ..storage.layout import storage_uri
from ..storage.prices import MINIMUM_DAYS, estimate
from .journal import ARCHIVED, IN_PROGRESS, Task
from .process import alive

__all__ = ["render_json", "render_table", "render_text", "retry_command", "run_view", "select", "watch"]


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


# The price table's region and per-class overrides (`storage.prices.estimate`).
Prices = tuple[str, Sequence[tuple[str, float, float]]]
DEFAULT_PRICES: Prices = ("us-central1", ())


def _cost(task: Task, prices: Prices) -> dict[str, Any] | None:
    """The stored archive's bill, from the class GCS reported (None: not a GCS archive)."""
    storage_class = task.compliance_view["storage_class"]
    if storage_class not in MINIMUM_DAYS or task.archive_bytes is None or task.status not in ARCHIVED:
        return None
    return estimate(task.archive_bytes, storage_class, prices[0], prices[1]).as_dict()


def run_view(
    task: Task, now: float, done: tuple[int, int] | None = None, prices: Prices = DEFAULT_PRICES,
) -> dict[str, Any]:
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
        **task.compliance_view,  # storage_class, kms_key_name, retain_until, holds
        "cost": _cost(task, prices),
    }


_TIMES = ("next_attempt_at", "gave_up_at", "created_at", "started_at", "updated_at", "finished_at",
          "interrupted_at", "moved_at", "swept_at")


def render_json(
    tasks: list[Task], now: float, *, compact: bool = False, done: Mapping[str, tuple[int, int]] | None = None,
    prices: Prices = DEFAULT_PRICES,
) -> str:
    """A JSON list, one object per run, times in ISO 8601 with the UTC offset."""
    rows = []
    for task in tasks:
        row = run_view(task, now, (done or {}).get(task.name), prices)
        for key in _TIMES:
            row[key] = iso_time(row[key])
        rows.append(row)
    return json.dumps(rows, indent=None if compact else 2)


def select(tasks: list[Task], pattern: str | None = None, *, failed: bool = False, active: bool = False) -> list[Task]:
    """The runs a `status` asks for: named by ``pattern`` (a run name or an fnmatch
    glob), that failed (the last attempt failed, or the daemon gave up) or that are
    active (an archive of them is running now); the filters combine with "and"."""
    out = []
    for task in tasks:
        if pattern is not None and not fnmatch.fnmatchcase(task.name, pattern):
            continue
        if failed and not _failed(task):
            continue
        if active and not (task.status in IN_PROGRESS and alive(task.pid, task.pid_start)):
            continue
        out.append(task)
    return out


def _failed(task: Task) -> bool:
    return task.gave_up_at is not None or (
        task.status == "not_running" and bool(task.last_error) and task.changed_at is None
    )


def _rank(task: Task, view: dict[str, Any]) -> tuple[int, float]:
    """What matters most first: running, failed or given up, waiting, then done; the
    most recently updated first within each."""
    if view["running"]:
        group = 0
    elif _failed(task):
        group = 1
    elif task.status not in ARCHIVED:
        group = 2
    else:
        group = 3
    return group, -(task.updated_at or 0.0)


def _short(task: Task, view: dict[str, Any]) -> str:
    """The status column: the headline without its explanations."""
    return _headline(task, view).split(" (", 1)[0]


def _done(task: Task, view: dict[str, Any]) -> str:
    if task.status in ARCHIVED and task.archive_bytes is not None:
        return human_bytes(task.archive_bytes)
    if view["percent"] is not None and view["raw_done"]:
        return f"{view['percent']:.1f}%"
    return ""


def _note(task: Task, view: dict[str, Any], now: float) -> str:
    """The one thing to know next, for the table's last column."""
    if view["running"]:
        rate = view["rate_mb_s"] * 1e6 if view["rate_mb_s"] is not None else None
        return f"{human_rate(rate)}, ETA {hms(view['eta_seconds'])}"
    if task.gave_up_at is not None:
        return f"gave up: {task.last_error or 'no error recorded'}"
    if task.last_error:
        retry = (f" (retry {ago(now - task.next_attempt_at)})"
                 if task.next_attempt_at is not None and task.status != "complete" else "")
        return f"{task.last_error}{retry}"
    if task.swept_at:
        return f"{view['location']}; swept"
    if task.moved_to:
        return f"{view['location']}; moved to {task.moved_to}"
    if view["location"] and task.status in ARCHIVED:
        return str(view["location"])
    return ""


def render_table(
    tasks: list[Task], now: float, done: Mapping[str, tuple[int, int]] | None = None, *, width: int = 120,
    height: int | None = None, terminal: bool = False,
) -> str:
    """One line per run (RUN, STATUS, DONE, UPDATED, NOTE), at most ``width`` columns: a
    long note is cut with an ellipsis, never wrapped. With ``height`` (``--watch`` on a
    terminal) at most that many lines, the runs that matter most first, and a last line
    saying how many more there are. ``terminal``: with colour."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if not tasks:
        return "no runs in the journal yet\n"
    views = {t.name: run_view(t, now, (done or {}).get(t.name)) for t in tasks}
    ordered = sorted(tasks, key=lambda t: _rank(t, views[t.name])) if height is not None else tasks
    shown = ordered
    if height is not None and len(ordered) > max(1, height - 3):
        shown = ordered[: max(1, height - 3)]  # the header, its rule and the "more" line
    styles = {0: "cyan", 1: "red", 2: "yellow", 3: ""}
    cells = []
    for task in shown:
        view = views[task.name]
        cells.append((task.name, _short(task, view), _done(task, view),
                       ago(now - task.updated_at) if task.updated_at else "", " ".join(_note(task, view, now).split()),
                       styles[_rank(task, view)[0]] if terminal else ""))
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=False)
    # Only the note is ever cut (with an ellipsis); the run's name takes at most half the
    # width. A terminal too narrow for them all loses UPDATED, then DONE, then NOTE.
    headers = ["RUN", "STATUS", "DONE", "UPDATED", "NOTE"]
    widths = [max(len(h), *(len(c[k]) for c in cells)) for k, h in enumerate(headers)]
    widths[0] = min(widths[0], width // 2)
    keep = [0, 1, 2, 3, 4]
    for dropped in (3, 2):
        if sum(widths[k] for k in keep if k != 4) + 3 * (len(keep) - 1) + 8 <= width:
            break
        keep.remove(dropped)
    if sum(widths[k] for k in keep if k != 4) + 3 * (len(keep) - 1) + 8 > width:
        keep.remove(4)
    room = width - sum(widths[k] for k in keep if k != 4) - 3 * (len(keep) - 1)
    for k in keep:
        table.add_column(headers[k], no_wrap=True, justify="right" if k == 2 else "left", overflow="ellipsis",
                         min_width=widths[k] if k != 4 else None, max_width=min(widths[k], room) if k == 4 else None)
    for cell in cells:
        # Text, never markup: a run name or an error with [brackets] is shown as it is.
        table.add_row(*(Text(cell[k], style=cell[5] if k == 1 else "") for k in keep))
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=terminal, color_system="standard" if terminal else None,
                      highlight=False, soft_wrap=False, legacy_windows=False)
    console.print(table)
    text = "\n".join(line.rstrip() for line in buffer.getvalue().splitlines() if line.strip()) + "\n"
    if len(shown) < len(ordered):
        more = f"… and {len(ordered) - len(shown)} more: a filter (--failed, --active, RUN-GLOB) or a bigger window"
        text += more[:width] + "\n"
    return text


def _when(ts: float, now: float) -> str:
    return f"{local_time(ts)} ({ago(now - ts)})"


def render_text(
    tasks: list[Task], now: float, done: Mapping[str, tuple[int, int]] | None = None, prices: Prices = DEFAULT_PRICES,
    retry: Callable[[str], str] = retry_command,
) -> str:
    """A block per run: a headline, then only the lines that say something. ``retry``
    gives the retry command for a run the daemon gave up on."""
    if not tasks:
        return "no runs in the journal yet\n"
    return "\n".join(_block(task, now, (done or {}).get(task.name), prices, retry) for task in tasks)


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


def _block(task: Task, now: float, done: tuple[int, int] | None, prices: Prices, retry: Callable[[str], str]) -> str:
    v = run_view(task, now, done, prices)
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
        if v["cost"] is not None:
            cost = v["cost"]
            minimum = f", billed at least {cost['minimum_days']} days" if cost["minimum_days"] else ""
            add("class", f"{v['storage_class']}: about ${cost['monthly_usd']:,.2f} a month, "
                         f"${cost['read_back_usd']:,.2f} to read it all back ({cost['region']} list prices "
                         f"of {cost['prices_date']}{minimum})")
        if v["kms_key_name"]:
            add("key", v["kms_key_name"])
        if v["retain_until"] or v["holds"]:
            kept = [f"retained until {v['retain_until']}"] if v["retain_until"] else []
            add("kept", ", ".join(kept + [f"{h.replace('_', '-')} hold" for h in v["holds"]]))
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
