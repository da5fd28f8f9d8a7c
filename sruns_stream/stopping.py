"""Stop requests: a signal asks, the archive stops at its next safe point.

Raising from a signal handler interrupts whatever bytecode the main thread is on,
including the insides of ``threading``, ``concurrent.futures`` and ``sqlite3`` calls,
whose locks and transactions it can leave half-changed; the unwinding then fails with
an unrelated error (EBADF, "cannot release un-acquired lock") instead of stopping
cleanly. So during an archive the first SIGTERM or Ctrl-C only sets a flag; the
pipeline checks it between blocks, between upload polls and between directories,
where stopping is an ordinary exception through ordinary cleanup.

The flag is process-wide because signals are. It is never set unless ``install()``
ran, which only the ``archive`` command does; library callers and tests are unaffected.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from .errors import Interrupted

__all__ = ["STOP", "StopRequest", "install"]


class StopRequest:
    def __init__(self) -> None:
        self._event = threading.Event()
        self._signum = 0

    def request(self, signum: int) -> None:
        self._signum = signum
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise Interrupted if a stop was requested (call only where stopping is safe)."""
        if self._event.is_set():
            raise Interrupted(f"stopped by {signal.Signals(self._signum).name}")


STOP = StopRequest()


def _handler(signum: int, frame: FrameType | None) -> None:
    if not STOP.requested:
        STOP.request(signum)
        return
    # Asked twice: a user pressing Ctrl-C again wants out now, even from a hung read
    # (the journal's last checkpoint still holds). Repeated SIGTERMs are ignored: a
    # supervisor that will not wait sends SIGKILL, which the journal survives too.
    if signum == signal.SIGINT:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        raise KeyboardInterrupt


def install() -> None:
    """Route SIGTERM and SIGINT to the stop flag. Python lets only the main thread set
    handlers; called from another (an embedding program's worker), it leaves them be."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
