"""One archiving process per run: an advisory lock the kernel drops when the holder dies."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from ..errors import JournalError, RunLocked

__all__ = ["RunLock"]


class RunLock:
    """``flock`` on ``<journal>.locks/<run>.lock``; a kill -9 releases it at once."""

    def __init__(self, journal_path: Path, run: str) -> None:
        self.path = Path(f"{journal_path}.locks") / f"{run}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            # O_NOFOLLOW: the lock is truncated and rewritten below; a link planted in its
            # place must not make that happen to the file it points to.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise JournalError(
                f"cannot open lock file {self.path}: {exc.strerror}"
                + ("; it is a symlink: remove it" if exc.errno == errno.ELOOP else "")
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLocked(
                f"run {self.path.stem} is already being archived (pid {holder}); "
                "wait for it to finish or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None  # forgotten first: a signal here must not double-close
            os.close(fd)

    def __enter__(self) -> RunLock:  # noqa: PYI034 - typing.Self needs Python 3.11; we support 3.10
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
