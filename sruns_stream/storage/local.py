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

Volumes: an archive larger than ``volume_size`` is written as volumes of exactly that
many bytes (the last one shorter): volume 0 to `<name>.part`, volume *k* to
`<name>.part.<k>`; a piece crossing a boundary is split there and the finished volume
synced before the next is begun. The read-back records the running crc32c at each
boundary, from which each volume's own crc32c follows (`_volume_crcs`). At the end the
manifest and the volume listing (`volumes`) land, then the parts are renamed to
`<run>.tar.gz.000`, `.001`, … (the last first, so that ``.000`` appearing means all are
there). An archive that fits keeps the one name and is written exactly as before.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import queue
import stat
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import google_crc32c

from ..errors import DestinationNotWritable, DiskFull, IntegrityError, RunLocked
from ..runfolder.safefs import DIR_FLAGS, make_dirs
from ..stopping import STOP
from .crc import crc32c_combine
from .layout import archive_filename, index_next_to, local_temporary, manifest_filename, volume_names
from .sink import ArchiveInfo, Stored
from .volumes import Volume, is_stored_form, listing_name, render

__all__ = ["LocalSink"]

_READ_BACK = 4 << 20
_POLL = 0.1  # seconds between looks at errors and stop requests while waiting
_SYNC_NOW = b""  # queued by request_durable(); write() never queues empty pieces
_FINISH = None  # queued by finalize(): sync, read back, stop


class LocalSink:
    def __init__(
        self, directory: Path, run: str, extension: str, sync_interval: int = 16 << 20, volume_size: int | None = None,
    ) -> None:
        self.dir = Path(directory) / run
        self.final = self.dir / archive_filename(run, extension)
        self.part = self.final.with_name(local_temporary(self.final.name))
        self.manifest_path = self.dir / manifest_filename(run)
        self.index_name = index_next_to(self.final.name, run)
        self.description = str(self.final)
        self.archive_name = str(self.final)
        self._sync_interval = sync_interval
        self._volume = volume_size or 1 << 62  # bytes per volume; "never" when not asked for
        self._dir_fd: int | None = None
        self._fd: int | None = None  # the volume being written (the writer thread's)
        self._fd_volume = 0  # which one
        self._lock_fd: int | None = None  # volume 0's part, flocked while this sink is open
        # Set by the writer threads only; each is one object, read atomically under the GIL.
        self._durable = 0
        self._read_back: tuple[int, int] = (0, 0)  # (offset, crc32c of the bytes before it)
        self._ends: list[int] = []  # the read-back's crc32c at the end of each full volume
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
        saved = _parse_state(state)
        try:
            make_dirs(self.dir)
            self._dir_fd = os.open(self.dir, DIR_FLAGS)
        except OSError as exc:
            self.abort()
            if self.dir.is_symlink():
                raise self._planted(self.dir) from exc
            raise self._error(exc, f"cannot write to {self.dir}") from exc
        try:
            self._lock_fd, size0 = self._open_part(0)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.abort()
                raise RunLocked(
                    f"another process is writing {self.part} (an archive of the same run, perhaps with "
                    "another journal): wait for it to finish or stop it first"
                ) from None
            # Resume only from the part files this journal row wrote and synced, cut into
            # volumes of the same size.
            same_cut = saved.volume == self._volume or durable < min(saved.volume, self._volume)
            keep = durable if saved.part == str(self.part) and same_cut else 0
            if not self._parts_hold(keep, size0):
                keep = 0
            current = keep // self._volume
            self._remove_parts_after(current)
            self._fd, _ = self._open_part(current)
            self._fd_volume = current
            os.ftruncate(self._fd, keep - current * self._volume)
            os.lseek(self._fd, keep - current * self._volume, os.SEEK_SET)
        except OSError as exc:
            self.abort()
            if exc.errno == errno.ELOOP:
                raise self._planted(self.part) from exc
            raise self._error(exc, f"cannot prepare {self.part}") from exc
        except BaseException:
            self.abort()
            raise
        self._durable = keep
        # The read-back went as far as the state says; what lies between there and the
        # durable offset (at most one sync interval) is read back once more now.
        if saved.read_back[0] <= keep and len(saved.ends) == saved.read_back[0] // self._volume:
            self._read_back, self._ends = saved.read_back, list(saved.ends)
        else:
            self._read_back, self._ends = (0, 0), []
        self._writer = threading.Thread(target=self._write_loop, args=(keep,), name="local-writer", daemon=True)
        self._writer.start()
        return keep

    def state(self) -> str | None:
        at, crc = self._read_back
        saved: dict[str, object] = {"part": str(self.part), "read_back": [at, crc]}
        if self._volume < 1 << 62:
            saved.update(volume_size=self._volume, volume_ends=list(self._ends))
        return json.dumps(saved, sort_keys=True)

    # -- the part files (one per volume) -----------------------------------------------

    def _part_name(self, volume: int) -> str:
        return local_temporary(self.final.name, volume)

    def _open_part(self, volume: int, flags: int = os.O_RDWR | os.O_CREAT) -> tuple[int, int]:
        """(fd, size) of one volume's part file, refusing links (see the module doc)."""
        assert self._dir_fd is not None
        name = self._part_name(volume)
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=self._dir_fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise DestinationNotWritable(
                f"{self.dir / name} is not a plain file of its own (it has {st.st_nlink} hard links): "
                "refusing to write through it; remove it and run again"
            )
        return fd, st.st_size

    def _parts_hold(self, keep: int, size0: int) -> bool:
        """Whether the part files hold ``keep`` bytes: every volume before the one ``keep``
        falls in full, and that one at least up to it."""
        current = keep // self._volume
        sizes = [size0]
        for volume in range(1, current + 1):
            try:
                st = os.stat(self._part_name(volume), dir_fd=self._dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            sizes.append(st.st_size if stat.S_ISREG(st.st_mode) else -1)
        return all(n == self._volume for n in sizes[:current]) and sizes[current] >= keep - current * self._volume

    def _remove_parts_after(self, volume: int) -> None:
        """Parts of later volumes (an earlier, longer attempt's) go: they are rewritten."""
        later = volume + 1
        while True:
            try:
                os.unlink(self._part_name(later), dir_fd=self._dir_fd)
            except FileNotFoundError:
                return
            later += 1

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

    def finalize(self, info: ArchiveInfo, manifest_tsv: bytes, index_tsv: bytes | None = None) -> Stored:
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
        count = max(1, -(-info.size // self._volume))
        finals = volume_names(self.final.name, count)
        try:
            # The index, the manifest (and the volume listing) land first, so an archive
            # under its final name always has them.
            if index_tsv is not None:
                self._write_beside(self.index_name, index_tsv)
            self._write_beside(self.manifest_path.name, manifest_tsv)
            if count > 1:
                listing = [Volume(n, min(self._volume, info.size - k * self._volume), c)
                           for k, (n, c) in enumerate(zip(finals, self._volume_crcs(info.size), strict=True))]
                self._write_beside(listing_name(self.final.name), render(listing))
            self._remove_stale({*finals, listing_name(self.final.name)} if count > 1 else set(finals))
            for volume in reversed(range(count)):
                os.replace(self._part_name(volume), finals[volume], src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            os.fsync(self._dir_fd)
        except OSError as exc:
            raise self._error(exc, f"cannot finish {self.final}") from exc
        self.abort()
        volumes = tuple(str(self.dir / n) for n in finals) if count > 1 else ()
        return Stored(str(self.final), self._durable, crc, str(self.manifest_path), volumes)

    def abort(self) -> None:
        # What was synced stays: the journal's checkpoint points into it.
        writer, self._writer = self._writer, None
        if writer is not None:
            self._abandon.set()
            writer.join()  # never close the fd under a running write or fsync
        for attr in ("_fd", "_lock_fd", "_dir_fd"):
            fd = getattr(self, attr)
            if fd is not None:
                setattr(self, attr, None)  # forgotten first: a signal here must not double-close
                os.close(fd)

    def _write_beside(self, name: str, data: bytes) -> None:
        """``name`` in the run's directory, whole or not at all (a temporary, synced, renamed)."""
        dfd = self._dir_fd
        tmp = local_temporary(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)  # a leftover, or a planted link: removed, never followed
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)

    def _remove_stale(self, keep: set[str]) -> None:
        """An earlier archive of this run cut differently (one file, or other volumes, and
        their listing) goes, so that ``<run>.tar.gz.*`` names only this one's volumes."""
        for name in os.listdir(self._dir_fd):
            if name not in keep and is_stored_form(self.final.name, name):
                os.unlink(name, dir_fd=self._dir_fd)

    def _volume_crcs(self, size: int) -> list[int]:
        """Each volume's own crc32c, from the running crc32c at its start and end: since
        crc(a+b) = crc(a)·x^(8·len b) ⊕ crc(b), crc(b) = crc(a+b) ⊕ combine(crc(a), 0, len b)."""
        ends = list(self._ends)
        if len(ends) * self._volume < size:
            ends.append(self._read_back[1])  # the last volume, shorter than the others
        crcs, start = [], 0
        for k, end in enumerate(ends):
            length = min(self._volume, size - k * self._volume)
            crcs.append(end ^ crc32c_combine(start, 0, length))
            start = end
        return crcs

    # -- the writer thread -------------------------------------------------------------

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _write_loop(self, start: int) -> None:
        written = synced_from = start
        # fsync and read-back run on a third thread while later pieces are written (an
        # fsync covers what was written before it started), so the disk always has
        # writeback queued and never waits for the writer.
        syncer = ThreadPoolExecutor(1, thread_name_prefix="fsync")
        in_flight: Future[None] | None = syncer.submit(self._read_back_to, start)  # the resumed prefix
        try:
            while not self._abandon.is_set():
                try:
                    piece = self._queue.get(timeout=_POLL)
                except queue.Empty:
                    continue
                if piece is _FINISH:
                    if in_flight is not None:
                        in_flight.result()
                    self._sync(written)
                    break
                if piece:
                    view = memoryview(piece)
                    while view:
                        room = self._volume - written % self._volume
                        if room == self._volume and written // self._volume != self._fd_volume:
                            # A volume is full: it is synced (no fsync of it in flight
                            # then) and closed before the next one is begun.
                            if in_flight is not None:
                                in_flight.result()
                                in_flight = None
                            self._next_volume(written)
                        try:
                            n = os.write(self._fd, view[:room])  # type: ignore[arg-type]
                        except OSError as exc:
                            raise self._error(exc, f"cannot write {self.part}") from exc
                        view, written = view[n:], written + n
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
                    in_flight = syncer.submit(self._sync, written)
        except BaseException as exc:  # noqa: BLE001 - raised on the main thread by its next call
            self._failure = exc
        finally:
            syncer.shutdown(wait=True)  # never leave an fsync on a descriptor about to close

    def _next_volume(self, written: int) -> None:
        fd = self._fd
        assert fd is not None
        try:
            os.fsync(fd)
            self._fd = None
            os.close(fd)
            self._fd_volume = written // self._volume
            self._fd, _ = self._open_part(self._fd_volume, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        except OSError as exc:
            raise self._error(exc, f"cannot begin the next volume of {self.part}") from exc
        self._durable = written

    def _sync(self, written: int) -> None:
        fd = self._fd
        assert fd is not None
        try:
            os.fsync(fd)
        except OSError as exc:
            raise self._error(exc, f"cannot sync {self.part}") from exc
        self._durable = written
        self._read_back_to(written)

    def _read_back_to(self, end: int) -> None:
        # Through descriptors of its own, read-only: the writer's position stays untouched.
        at, crc = self._read_back
        fd, volume = None, -1
        try:
            while at < end and not self._abandon.is_set():
                if at // self._volume != volume:
                    if fd is not None:
                        os.close(fd)
                        fd = None
                    volume = at // self._volume
                    fd, _ = self._open_part(volume, os.O_RDONLY)
                assert fd is not None
                stop = min(end, (volume + 1) * self._volume)
                chunk = os.pread(fd, min(_READ_BACK, stop - at), at - volume * self._volume)
                if not chunk:
                    raise IntegrityError(f"{self.part} ends at {at} bytes, but {end} were synced: the disk lost data")
                crc = google_crc32c.extend(crc, chunk)
                at += len(chunk)
                if at % self._volume == 0:
                    self._ends.append(crc)
                self._read_back = (at, crc)
        except OSError as exc:
            raise self._error(exc, f"cannot read back {self.part}") from exc
        finally:
            if fd is not None:
                os.close(fd)

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


@dataclass(frozen=True)
class _Saved:
    part: str | None
    read_back: tuple[int, int]  # (offset, crc32c of the bytes before it)
    volume: int  # bytes per volume the parts were cut into
    ends: tuple[int, ...]  # the running crc32c at each full volume's end


def _parse_state(state: str | None) -> _Saved:
    """What ``state()`` saved; a bare path is what earlier versions saved (no read-back
    position: read the prefix back again)."""
    if not state:
        return _Saved(None, (0, 0), 1 << 62, ())
    try:
        saved = json.loads(state)
        at, crc = saved["read_back"]
        return _Saved(str(saved["part"]), (int(at), int(crc)), int(saved.get("volume_size", 1 << 62)),
                      tuple(int(c) for c in saved.get("volume_ends", ())))
    except (ValueError, KeyError, TypeError, AttributeError):
        return _Saved(state, (0, 0), 1 << 62, ())
