"""A local (or NFS) directory destination: `<dest>/<run>/<run>.tar.gz`, resumable.

Bytes go to `<name>.part` through a writer thread, so the copy into the page cache
never stalls the tar reader and the compressors. An fsync every half ``sync_interval``
(or sooner, when the archive asks for a durable point) runs on a third thread while
later pieces are written; what it has synced is the durable offset the journal's
checkpoints are recorded against. On resume the part file is cut back to that offset:
anything after it was written but never synced, and could be garbage after a power
loss. After each fsync the synced range is read back (while the page cache still holds
it: a multi-TB archive is never read from disk a second time) into a crc32c, the local
twin of GCS's stored crc32c, compared with the stream's own at the end. The read-back
position and crc32c are part of ``state()``, so a resume continues the read-back where
it stood instead of reading the whole prefix again. The final name appears only after
the trailer is synced and the whole file has read back right.

The destination's run directory may be writable by others. Every file in it is opened
through a descriptor of that directory with ``O_NOFOLLOW``: a symlink planted at
`<run>.tar.gz.part` or at the manifest's temporary name is refused, never followed, and
a part file with other hard links is refused too (writing it would change them). The
part file is ``flock``ed while written, so a second process (an archive of the same run
with another journal) is told so instead of interleaving its bytes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import queue
import stat
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import google_crc32c

from ..errors import DestinationNotWritable, DiskFull, IntegrityError, RunLocked
from ..layout import archive_filename, manifest_filename
from ..safefs import DIR_FLAGS
from ..stopping import STOP
from .base import ArchiveInfo, Stored

__all__ = ["LocalSink"]

_READ_BACK = 4 << 20
_POLL = 0.1  # seconds between looks at errors and stop requests while waiting
_SYNC_NOW = b""  # queued by request_durable(); write() never queues empty pieces
_FINISH = None  # queued by finalize(): sync, read back, stop


class LocalSink:
    def __init__(self, directory: Path, run: str, extension: str, sync_interval: int = 16 << 20):
        self.dir = Path(directory) / run
        self.final = self.dir / archive_filename(run, extension)
        self.part = self.final.with_name(self.final.name + ".part")
        self.manifest_path = self.dir / manifest_filename(run)
        self.description = str(self.final)
        self.archive_name = str(self.final)
        self._sync_interval = sync_interval
        self._dir_fd: int | None = None
        self._fd: int | None = None
        # Set by the writer threads only; each is one object, read atomically under the GIL.
        self._durable = 0
        self._read_back: tuple[int, int] = (0, 0)  # (offset, crc32c of the bytes before it)
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._room = threading.Condition()
        self._queued_bytes = 0
        self._writer: threading.Thread | None = None
        self._abandon = threading.Event()
        self._failure: BaseException | None = None

    def open(self, state: str | None, durable: int) -> int:
        # A second open (a resume that falls back to zero) replaces the first: never two
        # writer threads on one queue.
        self.abort()
        self._failure = None
        self._abandon.clear()
        self._queue = queue.Queue()
        self._queued_bytes = 0
        saved_part, saved_read_back = _parse_state(state)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._dir_fd = os.open(self.dir, DIR_FLAGS)
            # Read and write: the read-back preads the synced ranges through the same fd.
            self._fd = os.open(
                self.part.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=self._dir_fd
            )
        except OSError as exc:
            self.abort()
            if self.dir.is_symlink():
                raise self._planted(self.dir) from exc
            if exc.errno == errno.ELOOP:
                raise self._planted(self.part) from exc
            raise self._error(exc, f"cannot write to {self.dir}") from exc
        fd = self._fd
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                self.abort()
                raise DestinationNotWritable(
                    f"{self.part} is not a plain file of its own (it has {st.st_nlink} hard links): "
                    "refusing to write through it; remove it and run again"
                )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.abort()
                raise RunLocked(
                    f"another process is writing {self.part} (an archive of the same run, perhaps with "
                    "another journal): wait for it to finish or stop it first"
                ) from None
            # Resume only from the part file this journal row wrote and synced.
            keep = durable if saved_part == str(self.part) and st.st_size >= durable else 0
            os.ftruncate(fd, keep)
            os.lseek(fd, keep, os.SEEK_SET)
        except OSError as exc:
            self.abort()
            raise self._error(exc, f"cannot prepare {self.part}") from exc
        self._durable = keep
        # The read-back went as far as the state says; what lies between there and the
        # durable offset (at most one sync interval) is read back once more now.
        self._read_back = saved_read_back if saved_read_back[0] <= keep else (0, 0)
        self._writer = threading.Thread(target=self._write_loop, args=(keep,), name="local-writer", daemon=True)
        self._writer.start()
        return keep

    def state(self) -> str | None:
        at, crc = self._read_back
        return json.dumps({"part": str(self.part), "read_back": [at, crc]}, sort_keys=True)

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

    def request_durable(self) -> None:
        if self._writer is not None:
            self._queue.put(_SYNC_NOW)

    def finalize(self, info: ArchiveInfo, manifest_tsv: bytes) -> Stored:
        assert self._writer is not None and self._dir_fd is not None, "open() first"
        self._queue.put(_FINISH)
        self._writer.join(_POLL)
        while self._writer.is_alive():
            STOP.check()  # syncing and reading back the rest of a large archive takes a while
            self._writer.join(_POLL)
        self._writer = None
        self._raise_failure()
        at, crc = self._read_back
        if crc != info.crc32c or at != info.size or self._durable != info.size:
            raise IntegrityError(
                f"{self.part} reads back {at} bytes with crc32c {crc:08x}, "
                f"expected {info.size} bytes with {info.crc32c:08x}: the disk lost data"
            )
        # The manifest lands first, so an archive under its final name always has one.
        dfd = self._dir_fd
        tmp = self.manifest_path.name + ".part"
        try:
            try:
                os.unlink(tmp, dir_fd=dfd)  # a leftover, or a planted link: removed, never followed
            except FileNotFoundError:
                pass
            mfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
            with open(mfd, "wb") as f:
                f.write(manifest_tsv)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.manifest_path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
            os.replace(self.part.name, self.final.name, src_dir_fd=dfd, dst_dir_fd=dfd)
            os.fsync(dfd)
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
        for attr in ("_fd", "_dir_fd"):
            fd = getattr(self, attr)
            if fd is not None:
                setattr(self, attr, None)  # forgotten first: a signal here must not double-close
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
                if piece is _FINISH:
                    if in_flight is not None:
                        in_flight.result()
                    self._sync(fd, written)
                    break
                if piece:
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
                # what a crash can lose (written, not yet synced) stays under one interval;
                # or at once when asked for a durable point.
                due = written - synced_from >= self._sync_interval // 2 or (not piece and written > synced_from)
                if due:
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
        at, crc = self._read_back
        try:
            while at < end and not self._abandon.is_set():
                chunk = os.pread(fd, min(_READ_BACK, end - at), at)
                if not chunk:
                    raise IntegrityError(f"{self.part} ends at {at} bytes, but {end} were synced: the disk lost data")
                crc = google_crc32c.extend(crc, chunk)
                at += len(chunk)
                self._read_back = (at, crc)
        except OSError as exc:
            raise self._error(exc, f"cannot read back {self.part}") from exc

    def _planted(self, path: Path) -> Exception:
        return DestinationNotWritable(
            f"{path} is a symlink: refusing to write through it (someone else may own what it points to); "
            "remove it and run again"
        )

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


def _parse_state(state: str | None) -> tuple[str | None, tuple[int, int]]:
    """(part path, (read-back offset, crc32c)) from ``state()``; a bare path is what
    earlier versions saved (no read-back position: read the prefix back again)."""
    if not state:
        return None, (0, 0)
    try:
        saved = json.loads(state)
        at, crc = saved["read_back"]
        return str(saved["part"]), (int(at), int(crc))
    except (ValueError, KeyError, TypeError):
        return state, (0, 0)
