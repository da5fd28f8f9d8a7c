"""A local (or NFS) directory destination: `<dest>/<run>/<run>.tar.gz`, resumable.

Bytes go to `<name>.part` through a writer thread, so the copy into the page cache
never stalls the tar reader and the compressors. An fsync every half ``sync_interval``
runs on a third thread while later pieces are written; what it has synced is the
durable offset the journal's checkpoints are recorded against. On resume the part
file is cut back to that offset: anything after it was written but never synced, and
could be garbage after a power loss. After each fsync the synced range is read back
(while the page cache still holds it: a multi-TB archive is never read from disk a
second time) into a crc32c, the local twin of GCS's stored crc32c, compared with the
stream's own at the end. The final name appears only after the trailer is synced and
the whole file has read back right.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import google_crc32c

from ..errors import DestinationNotWritable, DiskFull, IntegrityError
from ..stopping import STOP
from .base import ArchiveInfo, Stored

__all__ = ["LocalSink"]

_READ_BACK = 4 << 20
_POLL = 0.1  # seconds between looks at errors and stop requests while waiting


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
        # Set by the writer thread only; plain ints are read atomically under the GIL.
        self._durable = 0
        self._read_back = 0
        self._read_back_crc = 0
        # None, queued after the last write, means: sync, read back, report.
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._room = threading.Condition()
        self._queued_bytes = 0
        self._writer: threading.Thread | None = None
        self._abandon = threading.Event()
        self._failure: BaseException | None = None

    def open(self, state: str | None, durable: int) -> int:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            # Read and write: the read-back preads the synced ranges through the same fd.
            fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise self._error(exc, f"cannot write to {self.dir}") from exc
        self._fd = fd
        try:
            size = os.fstat(fd).st_size
            # Resume only from the part file this journal row wrote and synced.
            keep = durable if state == str(self.part) and size >= durable else 0
            os.ftruncate(fd, keep)
            os.lseek(fd, keep, os.SEEK_SET)
        except OSError as exc:
            raise self._error(exc, f"cannot prepare {self.part}") from exc
        self._durable = keep
        self._writer = threading.Thread(target=self._write_loop, args=(keep,), name="local-writer", daemon=True)
        self._writer.start()
        return keep

    def state(self) -> str | None:
        return str(self.part)

    @property
    def durable_offset(self) -> int:
        return self._durable

    def write(self, data: bytes) -> None:
        assert self._writer is not None, "open() first"
        self._raise_failure()
        if not data:
            return
        piece = bytes(data)
        with self._room:
            # One piece at a time: the writer writes it while the main thread reads and
            # compresses the next. The journal records durable progress only between the
            # main thread's writes, so a producer running further ahead would let the
            # journal lag the disk, and a crash redo more than one sync interval.
            while self._queued_bytes:
                self._room.wait(_POLL)
                self._raise_failure()
                STOP.check()
            self._queued_bytes += len(piece)
        self._queue.put(piece)

    def finalize(self, info: ArchiveInfo, manifest_tsv: bytes) -> Stored:
        assert self._writer is not None, "open() first"
        self._queue.put(None)
        self._writer.join(_POLL)
        while self._writer.is_alive():
            STOP.check()  # syncing and reading back the rest of a large archive takes a while
            self._writer.join(_POLL)
        self._writer = None
        self._raise_failure()
        crc = self._read_back_crc
        if crc != info.crc32c or self._read_back != info.size or self._durable != info.size:
            raise IntegrityError(
                f"{self.part} reads back {self._read_back} bytes with crc32c {crc:08x}, "
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

    def abort(self) -> None:
        # What was synced stays: the journal's checkpoint points into it.
        writer, self._writer = self._writer, None
        if writer is not None:
            self._abandon.set()
            writer.join()  # never close the fd under a running write or fsync
        if self._fd is not None:
            fd, self._fd = self._fd, None  # forgotten first: a signal here must not double-close
            os.close(fd)

    # -- the writer thread -------------------------------------------------------------

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _write_loop(self, start: int) -> None:
        fd = self._fd
        assert fd is not None
        written = synced_from = start
        # fsync and read-back run on a third thread while later pieces are written (an
        # fsync covers what was written before it started), so the disk always has
        # writeback queued and never waits for the writer.
        syncer = ThreadPoolExecutor(1, thread_name_prefix="fsync")
        in_flight: Future[None] | None = syncer.submit(self._read_back_to, fd, start)  # the resumed prefix
        try:
            while not self._abandon.is_set():
                try:
                    piece = self._queue.get(timeout=_POLL)
                except queue.Empty:
                    continue
                if piece is None:
                    if in_flight is not None:
                        in_flight.result()
                    self._sync(fd, written)
                    break
                view = memoryview(piece)
                try:
                    while view:
                        view = view[os.write(fd, view):]
                except OSError as exc:
                    raise self._error(exc, f"cannot write {self.part}") from exc
                written += len(piece)
                with self._room:
                    self._queued_bytes -= len(piece)
                    self._room.notify()
                if in_flight is not None and in_flight.done():
                    finished, in_flight = in_flight, None
                    finished.result()  # its error, if any, is ours now
                # A sync starts every half interval, after the previous one finished, so
                # what a crash can lose (written, not yet synced) stays under one interval.
                if written - synced_from >= self._sync_interval // 2:
                    if in_flight is not None:
                        in_flight.result()
                    synced_from = written
                    in_flight = syncer.submit(self._sync, fd, written)
        except BaseException as exc:  # noqa: BLE001 - raised on the main thread by its next call
            self._failure = exc
        finally:
            syncer.shutdown(wait=True)  # never leave an fsync on a descriptor about to close

    def _sync(self, fd: int, written: int) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            raise self._error(exc, f"cannot sync {self.part}") from exc
        self._durable = written
        self._read_back_to(fd, written)

    def _read_back_to(self, fd: int, end: int) -> None:
        # pread leaves the file position, which the writer's os.write uses, untouched.
        crc, at = self._read_back_crc, self._read_back
        try:
            while at < end and not self._abandon.is_set():
                chunk = os.pread(fd, min(_READ_BACK, end - at), at)
                if not chunk:
                    raise IntegrityError(f"{self.part} ends at {at} bytes, but {end} were synced: the disk lost data")
                crc = google_crc32c.extend(crc, chunk)
                at += len(chunk)
        except OSError as exc:
            raise self._error(exc, f"cannot read back {self.part}") from exc
        self._read_back_crc, self._read_back = crc, at

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
