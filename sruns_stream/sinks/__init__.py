"""Destinations for the archive stream, chosen by the `--dest` string.

``null`` discards; ``gs://bucket/prefix`` is a GCS resumable upload; anything else (or
``file://path``) is a local or mounted directory.
"""

from __future__ import annotations

from pathlib import Path

from ..config import ArchiveOptions
from ..errors import UsageError
from .base import ArchiveInfo, Sink, Stored
from .local import LocalSink
from .null import NullSink

__all__ = ["ArchiveInfo", "Sink", "Stored", "make_sink", "normalize_destination"]


def normalize_destination(dest: str) -> str:
    """The canonical form kept in the journal: ``null``, ``gs://b/p`` or an absolute path."""
    if dest == "null":
        return dest
    if dest.startswith("gs://"):
        bucket = dest[5:].split("/", 1)[0]
        if not bucket:
            raise UsageError(f"destination {dest!r} names no bucket: use gs://BUCKET[/PREFIX]")
        return dest.rstrip("/")
    if "://" in dest and not dest.startswith("file://"):
        raise UsageError(f"destination {dest!r}: use a directory, file://DIR, gs://BUCKET[/PREFIX] or null")
    path = dest.removeprefix("file://")
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
