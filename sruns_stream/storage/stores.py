"""Destinations for the archive stream, chosen by the `--dest` string (see `layout`).

``null`` discards; ``gs://bucket/prefix`` is a GCS resumable upload; a plain path or
``file://path`` is a local or mounted directory.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path

import google_crc32c

from ..config import ArchiveOptions
from ..errors import DestinationError, Interrupted
from .layout import parse_location
from .local import LocalSink
from .null import NullSink
from .sink import ArchiveInfo, Sink, Stored
from .volumes import combined

__all__ = ["ArchiveInfo", "Sink", "Stored", "make_sink", "normalize_destination", "probe_archive"]

_READ = 4 << 20


def normalize_destination(dest: str) -> str:
    """The canonical form kept in the journal: ``null``, ``gs://b/p`` or an absolute path."""
    return str(parse_location(dest))


def make_sink(dest: str, run: str, extension: str, options: ArchiveOptions) -> Sink:
    where = parse_location(dest)
    if where.kind == "null":
        return NullSink(options.sync_interval)
    if where.kind == "gcs":
        from .gcs.upload import GcsSink  # google-cloud-storage loads only when needed

        return GcsSink(where.bucket, where.path, run, extension, options)
    return LocalSink(Path(where.path), run, extension, options.sync_interval, options.volume_size)


def probe_archive(
    destination: str, location: str, *, volumes: Sequence[str] = (), read: bool = False,
    cancel: threading.Event | None = None,
) -> tuple[int, int | None] | None:
    """(size, crc32c) of a stored archive, or None when it is not there.

    ``location`` is what `Stored.location` said: a path, or ``BUCKET/BLOB`` for GCS; an
    archive stored as volumes is looked at through ``volumes`` (`Stored.volumes`), and is
    there only when every one is: its size is theirs summed, its crc32c theirs combined.
    GCS reports the crc32c with the object's metadata; a local archive's crc32c is None
    unless ``read``, which reads the whole file (``cancel`` stops it: Interrupted).
    """
    kind = parse_location(destination).kind
    if kind == "null":
        return None
    if volumes:
        parts = []
        for volume in volumes:
            found = probe_archive(destination, volume, read=read, cancel=cancel)
            if found is None:
                return None
            parts.append(found)
        if any(crc is None for _, crc in parts):
            return sum(size for size, _ in parts), None
        return combined([(size, crc or 0) for size, crc in parts])
    if kind == "gcs":
        from .gcs.client import probe_object

        bucket, _, blob = location.partition("/")
        return probe_object(bucket, blob)
    try:
        fd = os.open(location, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None  # a link where the archive was is not the archive
        raise DestinationError(f"cannot look at {location}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if not read:
            return st.st_size, None
        crc, size = 0, 0
        while piece := os.read(fd, _READ):
            if cancel is not None and cancel.is_set():
                raise Interrupted(f"stopped reading {location}")
            crc = google_crc32c.extend(crc, piece)
            size += len(piece)
        return size, crc
    except OSError as exc:
        raise DestinationError(f"cannot read {location}: {exc.strerror}") from exc
    finally:
        os.close(fd)
