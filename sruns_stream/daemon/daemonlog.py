"""The daemon's log: one line per event on stderr, as text or as JSON.

``text`` (the default) is ``2026-11-23 14:05:12,345 INFO sruns_stream.daemon.monitor: …``.
``json`` (``monitor --log-format json``) writes one object per line, the form Cloud
Logging's agents parse into a structured entry (``severity`` and ``message`` are its
special fields) and that journald stores as it is (``journalctl -o cat``): ``time``
(ISO 8601 with the UTC offset), ``severity``, ``message``, ``logger``, and
``exception`` (the traceback) when there is one, and for the lines that report what
happened to a run (archived, moved, swept, failed, given up) that event's facts as
fields of their own (``event``, ``run``, ``location``, ``archive_bytes``, ``crc32c``,
…: see `event`), so a log query needs no parsing of the message. Without ``-v`` the daemon logs what it
does (start-up, each archive, moves, sweeps, failures, shutdown); with ``-v`` also why
each run it has seen is waiting (`Monitor.scan`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import TextIO

__all__ = ["FORMATS", "JsonFormatter", "configure", "event"]

FORMATS = ("text", "json")
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RESERVED = ("time", "severity", "message", "logger", "exception")


def event(kind: str, run: str, **facts: object) -> dict[str, object]:
    """``extra=`` for a log call that reports what happened to a run: the JSON log line
    gets ``event`` (``archived``, ``moved``, …), ``run`` and ``facts`` as fields; the
    text line is the message alone (which says the same)."""
    return {"sruns_event": {"event": kind, "run": run, **facts}}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
        }
        for key, value in getattr(record, "sruns_event", {}).items():
            if key not in _RESERVED:  # the entry's own fields are never overwritten
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(*, verbose: bool, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every sruns_stream log record at INFO (DEBUG with ``verbose``) to ``stream``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # other libraries: only what goes wrong
    logging.getLogger("sruns_stream").setLevel(logging.DEBUG if verbose else logging.INFO)
