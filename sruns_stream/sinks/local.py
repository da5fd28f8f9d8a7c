"""A local (or NFS) directory destination: `<dest>/<run>/<run>.tar.gz`, resumable.

Bytes go to `<name>.part`; fsync makes them durable every ``sync_interval`` bytes, at
a block boundary, so the journal's checkpoint sits exactly at the durable offset. The
fsync runs on a helper thread while later blocks are written (it covers what was
written before it started), so the disk's writeback never stalls the compressors. On
resume the part file is cut back to that offset: anything after it was written but
never synced, and could be garbage after a power loss. The final name appears only
after the trailer is synced and the file read back and checked.
"""

from __future__ import annotations

import errno
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import google_crc32c

from ..errors import DestinationNotWritable, DiskFull, IntegrityError
from ..stopping import STOP
from .base import ArchiveInfo, Stored

__all__ = ["LocalSink"]

_READ_BACK = 4 << 20


class LocalSink:
    def __init__(self, directory: Path, run: str, extension: str, sync_interval: int = 16 << 20):
        self.dir = Path(directory) / run
        self.final = self.dir / f"{run}{extension}"
        self.part = self.final.with_name(self.final.name + ".part")
        self.manifest_path = self.dir / f"{run}.manifest.tsv"
        self.description = str(self.final)
        self.archive_name = str(self.final)
        self._sync_interval = sync_interval
        self._fd: int | None = None
        self._offset = 0
        self._durable = 0
        self._syncer: ThreadPoolExecutor | None = None
        self._sync: tuple[int, Future[None]] | None = None
        self._sync_started = 0

    def open(self, state: str | None, durable: int) -> int:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.part, os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError as exc:
            raise self._error(exc, f"cannot write to {self.dir}") from exc
        self._fd = fd
        size = os.fstat(fd).st_size
        # Resume only from the part file this journal row wrote and synced.
        keep = durable if state == str(self.part) and size >= durable else 0
        os.ftruncate(fd, keep)
        os.lseek(fd, keep, os.SEEK_SET)
        self._offset = self._durable = self._sync_started = keep
        return keep

    def state(self) -> str | None:
        return str(self.part)

    @property
    def durable_offset(self) -> int:
        if self._sync is not None and self._sync[1].done():
            self._collect_sync()
        return self._durable

    def write(self, data: bytes) -> None:
        assert self._fd is not None, "open() first"
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            raise self._error(exc, f"cannot write {self.part}") from exc
        self._offset += len(data)
        # A sync starts every half interval, after the previous one finished, so what a
        # crash can lose (written, not yet synced) stays under one interval plus a block.
        if self._offset - self._sync_started >= self._sync_interval // 2:
            if self._sync is not None:
                self._collect_sync()
            if self._syncer is None:
                self._syncer = ThreadPoolExecutor(1, thread_name_prefix="fsync")
            self._sync_started = self._offset
            self._sync = (self._offset, self._syncer.submit(os.fsync, self._fd))

    def _collect_sync(self) -> None:
        """Wait for the fsync in flight; what was written before it started is durable."""
        assert self._sync is not None
        offset, fut = self._sync
        self._sync = None
        try:
            fut.result()
        except OSError as exc:
            raise self._error(exc, f"cannot sync {self.part}") from exc
        self._durable = offset

    def _sync_now(self) -> None:
        assert self._fd is not None
        if self._sync is not None:
            self._collect_sync()
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise self._error(exc, f"cannot sync {self.part}") from exc
        self._durable = self._offset

    def finalize(self, info: ArchiveInfo, manifest_tsv: bytes) -> Stored:
        self._sync_now()
        crc = self._read_back_crc32c()
        if crc != info.crc32c or self._durable != info.size:
            raise IntegrityError(
                f"{self.part} reads back {self._durable} bytes with crc32c {crc:08x}, "
                f"expected {info.size} bytes with {info.crc32c:08x}: the disk lost data"
            )
        # The manifest lands first, so an archive under its final name always has one.
        tmp = self.manifest_path.with_name(self.manifest_path.name + ".part")
        try:
            with open(tmp, "wb") as f:
                f.write(manifest_tsv)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.manifest_path)
            os.replace(self.part, self.final)
            dir_fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise self._error(exc, f"cannot finish {self.final}") from exc
        self.abort()
        return Stored(str(self.final), self._durable, crc, str(self.manifest_path))

    def _read_back_crc32c(self) -> int:
        # Reading back what the disk holds is the local twin of GCS's stored crc32c.
        crc = 0
        with open(self.part, "rb") as f:
            while chunk := f.read(_READ_BACK):
                STOP.check()  # reading back a TB archive takes minutes
                crc = google_crc32c.extend(crc, chunk)
        return crc

    def abort(self) -> None:
        if self._syncer is not None:
            self._syncer.shutdown(wait=True)  # never close the fd under a running fsync
            self._syncer = None
            self._sync = None
        if self._fd is not None:
            fd, self._fd = self._fd, None  # forgotten first: a signal here must not double-close
            os.close(fd)

    def _error(self, exc: OSError, what: str) -> Exception:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFull(
                f"{what}: no space left on the device; free space and run the same "
                "command again to resume"
            )
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return DestinationNotWritable(
                f"{what}: {exc.strerror}; choose a writable --dest or fix its permissions"
            )
        return DestinationNotWritable(f"{what}: {exc.strerror}")
