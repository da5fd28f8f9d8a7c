"""Destinations for the archive stream, chosen by the `--dest` string.

``null`` discards; ``gs://bucket/prefix`` is a GCS resumable upload; a plain path or
``file://path`` is a local or mounted directory. Anything else that looks like a URL
(``gs:/x``, ``s3://x``, ``http://x``) is a usage error, never a directory named
``gs:``.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
from pathlib import Path

import google_crc32c

from ..config import ArchiveOptions
from ..errors import DestinationError, Interrupted, UsageError
from .base import ArchiveInfo, Sink, Stored
from .local import LocalSink
from .null import NullSink

__all__ = ["ArchiveInfo", "Sink", "Stored", "check_bucket_name", "make_sink", "normalize_destination", "probe_archive"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# GCS bucket names: 3-63 characters (222 with dots, 63 between dots), lowercase letters,
# digits, '-', '_' and '.', starting and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_READ = 4 << 20
_FORMS = "a directory, file://DIR, gs://BUCKET[/PREFIX] or null"


def check_bucket_name(bucket: str, where: str) -> None:
    """Raise UsageError unless ``bucket`` is a valid GCS bucket name."""
    if not _BUCKET.match(bucket) or any(len(part) > 63 for part in bucket.split(".")) or (
        "." not in bucket and len(bucket) > 63
    ):
        raise UsageError(
            f"{where}: {bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, '-', '_' "
            "or '.', starting and ending with a letter or digit)"
        )


def normalize_destination(dest: str) -> str:
    """The canonical form kept in the journal: ``null``, ``gs://b/p`` or an absolute path."""
    if dest == "null":
        return dest
    if dest.startswith("gs://"):
        bucket = dest[5:].split("/", 1)[0]
        if not bucket:
            raise UsageError(f"destination {dest!r} names no bucket: use gs://BUCKET[/PREFIX]")
        check_bucket_name(bucket, f"destination {dest!r}")
        return dest.rstrip("/")
    if dest.startswith("file://"):
        path = dest.removeprefix("file://")
    elif _SCHEME.match(dest):
        raise UsageError(f"destination {dest!r} is not a form sruns-stream knows: use {_FORMS} (./{dest} for a directory)")
    else:
        path = dest
    if not path:
        raise UsageError(f"destination {dest!r} names no directory: use {_FORMS}")
    return str(Path(path).expanduser().absolute())


def make_sink(dest: str, run: str, extension: str, options: ArchiveOptions) -> Sink:
    dest = normalize_destination(dest)
    if dest == "null":
        return NullSink(options.sync_interval)
    if dest.startswith("gs://"):
        from .gcs import GcsSink  # google-cloud-storage loads only when needed

        bucket, _, prefix = dest[5:].partition("/")
        return GcsSink(bucket, prefix, run, extension, options)
    return LocalSink(Path(dest), run, extension, options.sync_interval)


def probe_archive(
    destination: str, location: str, *, read: bool = False, cancel: threading.Event | None = None
) -> tuple[int, int | None] | None:
    """(size, crc32c) of a stored archive, or None when it is not there.

    ``location`` is what `Stored.location` said: a path, or ``bucket/blob`` for GCS. GCS
    reports the crc32c with the object's metadata; a local archive's crc32c is None
    unless ``read``, which reads the whole file (``cancel`` stops it: Interrupted).
    """
    if destination == "null":
        return None
    if destination.startswith("gs://"):
        from .gcs import probe_object

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
