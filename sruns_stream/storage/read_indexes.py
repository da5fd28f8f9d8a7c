"""The indexes other tools read, rendered from what the stream knows and written beside
the archive: ``<archive>.gzidx`` (`gzidx`: indexed_gzip, rapidgzip) and
``<archive>.index.sqlite`` (`ratarmount_index`: ratarmount).

Both come from the manifest (members and their offsets) and the access points
(``<run>.index.tsv``): no byte of the archive is read again. The archiver writes them
after the archive is stored; ``sruns-stream index`` writes them for an archive made
before. They are conveniences beside a verified archive: the archive never depends on
them, and `verify` checks them against the manifest and the access index.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import gzidx, ratarmount_index
from .gzipframe import AccessPoint
from .layout import Location, local_temporary, parse_location, read_index_names
from .manifest_tsv import ManifestRow

if TYPE_CHECKING:
    from google.cloud.storage import Client  # type: ignore[import-untyped]  # the library ships no type information

__all__ = ["EOF_MARKER", "ReadIndexes", "render", "render_with", "write_beside"]

EOF_MARKER = 1024  # the two zero blocks a tar stream ends with
_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class ReadIndexes:
    gzidx: bytes
    ratarmount: bytes


def render(rows: Sequence[ManifestRow], points: Sequence[AccessPoint], access_interval: int, archive_size: int,
           raw_size: int, owners: Sequence[tuple[int, int]] | tuple[int, int], tool_version: str) -> ReadIndexes:
    """Both files for an archive of ``archive_size`` bytes holding a tar stream of
    ``raw_size`` bytes, from its manifest rows (with offsets) and access points."""
    return render_with(ratarmount_index.table(rows, raw_size - EOF_MARKER, owners), points, access_interval,
                       archive_size, raw_size, tool_version)


def render_with(files: ratarmount_index.Table, points: Sequence[AccessPoint], access_interval: int,
                archive_size: int, raw_size: int, tool_version: str) -> ReadIndexes:
    """As `render`, with ratarmount's ``files`` rows made already (`ratarmount_index.table`)."""
    blob = gzidx.render(points, archive_size, raw_size, access_interval)
    return ReadIndexes(blob, ratarmount_index.render_table(files, archive_size, blob, tool_version))


def write_beside(
    archive: str, files: ReadIndexes, client_factory: Callable[[], Client] | None = None,
    storage_class: str | None = None, kms_key: str | None = None,
) -> list[str]:
    """Write both beside ``archive`` (a local path or gs://BUCKET/NAME), each whole or not
    at all; returns where they went. In GCS, created in ``storage_class`` (None: the
    bucket's default) under the Cloud KMS key ``kms_key``, as the run's other small files."""
    where = parse_location(archive, "archive")
    names = read_index_names(where.path)
    pairs = list(zip(names, (files.gzidx, files.ratarmount), strict=True))
    if where.kind == "gcs":
        from .gcs.client import GcsBucket, make_client

        bucket = GcsBucket(where.bucket, (client_factory or make_client)(), kms_key=kms_key)
        for name, data in pairs:
            bucket.upload(name, data, _CONTENT_TYPE, storage_class=storage_class)
        return [str(Location("gcs", where.bucket, n)) for n in names]
    for name, data in pairs:
        _write_local(Path(name), data)
    return list(names)


def _write_local(path: Path, data: bytes) -> None:
    """A temporary beside it, synced, renamed over it: a reader sees the old file or the new."""
    tmp = path.with_name(local_temporary(path.name))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover, or a planted link: removed, never followed
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with open(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
