"""How numbers, times and checksums are shown to people: one convention everywhere.

- sizes and rates shown in SI units (1 MB = 10^6 bytes, MB/s), as the archive's summary
  line, the mails and ``gcloud storage`` have them;
- sizes given (flags such as ``--block-size 1M``) in binary units, K, M, G, T = KiB, MiB,
  GiB, TiB (``1M`` = 1,048,576 bytes; ``1MiB`` and ``1MB`` are read the same), since
  what they set must be multiples of 4 KiB or 256 KiB: `parse_size`, and `flag_size`
  for a default shown in ``--help``;
- a size where the exact count matters too (a mail, a webhook) as ``4.19 GB (4,194,304,000 bytes)``;
- the compression ratio as raw / archive (``1.68``: how many times smaller), everywhere;
- durations as ``h:mm:ss`` (ten hours is ``10:00:00``, never ``600:00``), and a time
  relative to now as ``in 4 min`` or ``5 min ago``;
- times as local ``YYYY-MM-DD HH:MM:SS`` for reading, ISO 8601 with the UTC offset for
  ``--json``;
- a crc32c as 8 hex digits and as gcloud shows it (``crc32c_hash``: the four bytes,
  big-endian, in base64), so either can be compared with what a tool prints.
"""

from __future__ import annotations

import base64
import datetime as dt
import math

__all__ = [
    "ago", "crc32c_base64", "exact_bytes", "flag_size", "hms", "human_bytes", "human_rate", "iso_time", "local_time",
    "parse_size", "ratio",
]

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def human_bytes(n: float) -> str:
    """``512 B``, ``1.5 kB``, ``4.19 GB``: three significant figures, SI units."""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 999.5 or unit == _UNITS[-1]:
            break
        value /= 1000
    if unit == "B":
        return f"{value:.0f} B"
    return f"{value:.3g} {unit}" if abs(value) >= 1 else f"{value:.2f} {unit}"


_BINARY = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """A size as flags give it: ``16777216``, ``256K``, ``1M``, ``1.5G``, ``5T`` (binary:
    ``1M`` = 1 MiB; ``MiB``/``MB`` suffixes read the same). ValueError if it is not one."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    value = float(t[:-1]) * _BINARY[t[-1]] if t and t[-1] in _BINARY else float(int(t))
    if not math.isfinite(value):  # a negative size is for the setting it is given to to refuse
        raise ValueError(f"not a size: {text!r}")
    return int(value)


def flag_size(n: int) -> str:
    """A size as a flag takes it (``1M``, ``64M``, ``5T``), exact: ``parse_size`` of it
    gives ``n`` back (a size no unit divides stays in bytes)."""
    for unit in ("T", "G", "M", "K"):
        if n and n % _BINARY[unit] == 0:
            return f"{n // _BINARY[unit]}{unit}"
    return str(n)


def exact_bytes(n: int) -> str:
    """``4.19 GB (4,194,304,000 bytes)``; ``512 B`` where the two would say the same."""
    return human_bytes(n) if abs(n) < 1000 else f"{human_bytes(n)} ({n:,} bytes)"


def ratio(raw_bytes: int, archive_bytes: int) -> str:
    """Raw / archive, two decimals (``1.68``): how many times smaller the archive is."""
    return f"{raw_bytes / archive_bytes:.2f}" if archive_bytes > 0 else "n/a"


def human_rate(bytes_per_s: float | None) -> str:
    """``85.3 MB/s`` (always MB/s, as the summary line: rates are compared with each other)."""
    if bytes_per_s is None:
        return "-- MB/s"
    return f"{bytes_per_s / 1e6:.1f} MB/s"


def hms(seconds: float | None) -> str:
    """``h:mm:ss``; ``-:--:--`` when unknown."""
    if seconds is None or seconds < 0 or math.isnan(seconds):
        return "-:--:--"
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def ago(seconds: float) -> str:
    """How long ago (or, negative, how far ahead): ``12 s``, ``5 min``, ``3 h 10 min``, ``2 days``."""
    future = seconds < 0
    s = abs(seconds)
    if s < 60:
        text = f"{s:.0f} s"
    elif s < 3600:
        text = f"{s // 60:.0f} min"
    elif s < 86400 * 2:
        text = f"{s // 3600:.0f} h {s % 3600 // 60:.0f} min"
    else:
        text = f"{s // 86400:.0f} days"
    return f"in {text}" if future else f"{text} ago"


def local_time(ts: float) -> str:
    """``2026-11-23 14:05:12`` in the local time zone."""
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def iso_time(ts: float | None) -> str | None:
    """ISO 8601 with the UTC offset (``2026-11-23T13:05:12+00:00``), for machines."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


def crc32c_base64(crc: int | str) -> str:
    """A crc32c (an int, or 8 hex digits) as gcloud prints it: base64 of its 4 big-endian bytes."""
    value = int(crc, 16) if isinstance(crc, str) else crc
    return base64.b64encode(value.to_bytes(4, "big")).decode()
