"""Progress reporting: a bar on a terminal, nothing otherwise; injected, never global.

`TerminalProgress` draws one line through ``rich`` (it follows the terminal's width,
redraws in place and restores the cursor): bytes done of the total, files done of the
total when known, the rate and the time left, in `humanize`'s one convention (SI MB,
MB/s, ``h:mm:ss``). `progress_line` composes that line for a width and drops the least
useful parts first, so it never wraps: a wrapped line is what stacks bars on the screen.
`NoProgress` (not a terminal, or ``--json``) draws nothing; notes still reach stderr.
`archive`, `verify` and `restore` share both.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from .humanize import hms, human_bytes, human_rate

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["NoProgress", "Progress", "Silent", "TerminalProgress", "human_bytes", "progress_line"]


class Progress(Protocol):
    def start(self, total: int, done: int, files_total: int | None = None, files_done: int = 0) -> None: ...

    def update(self, done: int, output_bytes: int, files_done: int | None = None) -> None: ...

    def note(self, message: str) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    """The default: say nothing (but notes still reach stderr, they matter)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr

    def start(self, total: int, done: int, files_total: int | None = None, files_done: int = 0) -> None:
        pass

    def update(self, done: int, output_bytes: int, files_done: int | None = None) -> None:
        pass

    def note(self, message: str) -> None:
        print(f"sruns-stream: {message}", file=self._stream)

    def close(self) -> None:
        pass


class Silent(NoProgress):
    """``-q``: not even the notes; errors still reach stderr (they are not notes)."""

    def note(self, message: str) -> None:
        pass


def progress_line(
    width: int, done: int, total: int, files_done: int | None, files_total: int | None,
    rate: float | None, eta: float | None,
) -> str:
    """The bar's one line, at most ``width - 1`` characters (a line that fills the last
    column makes some terminals wrap). Parts are dropped, least useful first, until it fits:
    the file count, the rate, the bar, the totals; the percentage and ETA stay longest."""
    limit = max(1, width - 1)
    pct = 100.0 * done / total if total else 100.0
    parts = {
        "pct": f"{pct:5.1f}%",
        "bytes": f"{human_bytes(done)}/{human_bytes(total)}",
        "files": f"{files_done:,}/{files_total:,} files" if files_total is not None and files_done is not None else "",
        "rate": human_rate(rate),
        "eta": f"ETA {hms(eta)}",
    }
    order = ["pct", "bytes", "files", "rate", "eta"]
    for drop in ([], ["files"], ["files", "rate"], ["files", "rate", "bytes"], ["files", "rate", "bytes", "eta"]):
        text = " ".join(parts[k] for k in order if k not in drop and parts[k])
        room = limit - len(text) - 1  # the bar and a space before the text
        if room >= 12:
            inner = min(room - 2, 40)
            filled = int(inner * min(pct, 100.0) / 100)
            return f"[{'#' * filled}{'-' * (inner - filled)}] {text}"
        if len(text) <= limit:
            return text
    return parts["pct"].strip()[:limit]


class TerminalProgress:
    """One line redrawn in place on a terminal (through ``rich``): at each update at most
    four times a second, and by rich's own thread meanwhile (a long wait still ticks)."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        from rich.console import Console, ConsoleDimensions
        from rich.progress import Progress as RichProgress
        from rich.text import Text

        class _OwnTerminal(Console):
            @property
            def size(self) -> ConsoleDimensions:
                # rich measures the terminal on stdin, stdout or stderr, whichever is one;
                # the bar's width is that of the terminal it is drawn on.
                try:
                    columns, rows = os.get_terminal_size(self.file.fileno())
                except (AttributeError, ValueError, OSError):
                    return super().size
                return ConsoleDimensions(columns, rows)

            @size.setter
            def size(self, new_size: tuple[int, int]) -> None:
                Console.size.fset(self, new_size)  # type: ignore[attr-defined]  # rich's own setter

        self._console = _OwnTerminal(file=stream, highlight=False, soft_wrap=False)
        self._files: tuple[int | None, int | None] = (None, None)
        self._task: Any = None
        self._clock = clock
        self._drawn = float("-inf")
        owner = self

        class _OneLine(RichProgress):
            def get_renderables(self) -> Any:
                for task in self.tasks:
                    yield owner._render(task, Text)

        # Not redirecting stdout: the summary line goes there after the bar is closed.
        self._bar = _OneLine(console=self._console, auto_refresh=True, refresh_per_second=4,
                             redirect_stdout=False, redirect_stderr=False, speed_estimate_period=20.0,
                             get_time=clock)

    def _render(self, task: Any, text: Any) -> RenderableType:
        line = progress_line(
            self._console.width, int(task.completed), int(task.total or 0), self._files[0], self._files[1],
            task.speed, task.time_remaining,
        )
        result: RenderableType = text(line, no_wrap=True, overflow="crop")
        return result

    def start(self, total: int, done: int, files_total: int | None = None, files_done: int = 0) -> None:
        self._files = (files_done if files_total is not None else None, files_total)
        if self._task is None:
            self._task = self._bar.add_task("", total=total, completed=done)
            self._bar.start()
        else:
            self._bar.reset(self._task, total=total, completed=done)

    def update(self, done: int, output_bytes: int, files_done: int | None = None) -> None:
        if self._task is None:
            return
        if files_done is not None:
            self._files = (files_done, self._files[1])
        self._bar.update(self._task, completed=done)
        now = self._clock()
        if now - self._drawn >= 0.25:
            self._drawn = now
            self._bar.refresh()

    def note(self, message: str) -> None:
        # Printed above the bar, which is drawn again below it.
        self._console.print(f"sruns-stream: {message}", soft_wrap=True, markup=False, emoji=False)

    def close(self) -> None:
        if self._task is not None:
            self._bar.refresh()
            self._bar.stop()  # the last state stays on screen; the cursor is shown again
            self._task = None
