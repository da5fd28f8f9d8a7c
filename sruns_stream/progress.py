"""Progress reporting: a bar on a terminal, nothing otherwise; injected, never global."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO

__all__ = ["NoProgress", "Progress", "TerminalProgress", "human_bytes"]


class Progress(Protocol):
    def start(self, total_raw: int, done_raw: int) -> None: ...

    def update(self, done_raw: int, archive_bytes: int) -> None: ...

    def note(self, message: str) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    """The default: say nothing (but notes still reach stderr, they matter)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr

    def start(self, total_raw: int, done_raw: int) -> None:
        pass

    def update(self, done_raw: int, archive_bytes: int) -> None:
        pass

    def note(self, message: str) -> None:
        print(f"sruns-stream: {message}", file=self._stream)

    def close(self) -> None:
        pass


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class TerminalProgress:
    """One redrawn line: percent, bytes, rate, ETA; redrawn at most 5 times a second."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._clock = clock
        self._total = 0
        self._t0 = 0.0
        self._done0 = 0
        self._last = 0.0

    def start(self, total_raw: int, done_raw: int) -> None:
        self._total = total_raw
        self._t0 = self._clock()
        self._done0 = done_raw

    def update(self, done_raw: int, archive_bytes: int) -> None:
        now = self._clock()
        if now - self._last < 0.2 and done_raw < self._total:
            return
        self._last = now
        elapsed = max(now - self._t0, 1e-9)
        rate = (done_raw - self._done0) / elapsed
        pct = 100.0 * done_raw / self._total if self._total else 100.0
        eta = (self._total - done_raw) / rate if rate > 0 else 0.0
        width = 24
        filled = int(width * pct / 100)
        bar = "#" * filled + "-" * (width - filled)
        self._stream.write(
            f"\r[{bar}] {pct:5.1f}% {human_bytes(done_raw)}/{human_bytes(self._total)}"
            f" -> {human_bytes(archive_bytes)}  {human_bytes(rate)}/s  ETA {int(eta) // 60}:{int(eta) % 60:02d} "
        )
        self._stream.flush()

    def note(self, message: str) -> None:
        self._stream.write(f"\rsruns-stream: {message}\n")
        self._stream.flush()

    def close(self) -> None:
        if self._last:
            self._stream.write("\n")
            self._stream.flush()
