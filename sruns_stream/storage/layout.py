"""Where an archive and its manifest live, and how a user names a place: one grammar.

The storage contract, sruns-monitor's layout kept as it was:

- a local (or NFS) destination ``DIR`` holds ``DIR/<run>/<run>.tar.gz`` (``.tar`` with
  compression ``none``) and ``DIR/<run>/<run>.manifest.tsv`` beside it;
- a GCS destination ``gs://BUCKET/PREFIX`` holds the blobs
  ``PREFIX/<run>/<run>.tar.gz`` and ``PREFIX/<run>/<run>.manifest.tsv``;
- the journal's ``gcp_tarfile`` and Firestore's ``storage`` name a GCS archive as
  ``BUCKET/BLOB`` (sruns-monitor's form), a local one by its absolute path.

This module is also the one home of every other name the stores write: volumes
(``<archive>.000`` …, read back by `volume_number`), temporaries (a local ``.part``, a
segmented upload's parts, trailer and compose intermediates), the content types of the
objects, and the metadata keys a GCS archive carries.

Every command reads places in the same grammar (`parse_location`): ``null``;
``gs://BUCKET[/PATH]``; ``file://PATH``; a plain path. Anything else that looks like a
URL (``gs:/x``, ``gs:bucket``, ``s3://x``) is a usage error naming the forms, never a
directory called ``gs:``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import UsageError

__all__ = [
    "GZIDX_SUFFIX",
    "INDEX_SUFFIX",
    "LOCAL_TEMPORARY_SUFFIX",
    "MANIFEST_SUFFIX",
    "RATARMOUNT_SUFFIX",
    "READ_EXTENSIONS",
    "TSV_CONTENT_TYPE",
    "WRITE_EXTENSIONS",
    "Location",
    "archive_content_type",
    "archive_filename",
    "archive_metadata",
    "blob_name",
    "check_bucket_name",
    "compose_scratch",
    "compose_temporary",
    "destination_of",
    "index_next_to",
    "read_index_names",
    "is_url",
    "local_temporary",
    "manifest_filename",
    "manifest_next_to",
    "parse_location",
    "part_name",
    "parts_prefix",
    "session_metadata",
    "split_archive_filename",
    "storage_uri",
    "trailer_name",
    "volume_metadata",
    "volume_names",
    "volume_number",
    "volume_of",
]

MANIFEST_SUFFIX = ".manifest.tsv"
INDEX_SUFFIX = ".index.tsv"  # the archive's access points (`access_index`)
# The indexes other tools read, named as they look for them beside the archive itself
# (`read_indexes`): indexed_gzip's / rapidgzip's GZIDX, ratarmount's SQLite.
GZIDX_SUFFIX = ".gzidx"
RATARMOUNT_SUFFIX = ".index.sqlite"
# What a reader accepts as an archive's name (sruns-monitor and hand-made ones use .tgz).
READ_EXTENSIONS = (".tar.gz", ".tgz", ".tar")
# What sruns-stream writes, gzip first: the names a reader looks for in a run's folder.
WRITE_EXTENSIONS = (".tar.gz", ".tar")
# The manifest, the access index and the volume listing: UTF-8 text (paths may be any Unicode).
TSV_CONTENT_TYPE = "text/tab-separated-values; charset=utf-8"
# Bytes go to ``<name>.part`` (volume k > 0 to ``<name>.part.<k>``) and are renamed at the end.
LOCAL_TEMPORARY_SUFFIX = ".part"
FORMS = "DIR, file://DIR, gs://BUCKET[/PATH] or null"

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # what a URL starts with (RFC 3986)
# GCS bucket names: 3-63 characters (222 with dots, 63 between dots), lowercase letters,
# digits, '-', '_' and '.', starting and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


def archive_filename(run: str, extension: str) -> str:
    return f"{run}{extension}"


def manifest_filename(run: str) -> str:
    return f"{run}{MANIFEST_SUFFIX}"


def blob_name(prefix: str, run: str, extension: str) -> str:
    """``<prefix>/<run>/<run><extension>``, without a leading slash when prefix is empty."""
    prefix = prefix.strip("/")
    name = f"{run}/{archive_filename(run, extension)}"
    return f"{prefix}/{name}" if prefix else name


PARTS_FOLDER = ".sruns-parts"  # one lifecycle rule on <prefix>/.sruns-parts/ sweeps what crashes left


def parts_prefix(prefix: str, run: str) -> str:
    """Where an archive uploaded in parallel keeps its temporary parts:
    ``<prefix>/.sruns-parts/<run>/``."""
    prefix = prefix.strip("/")
    return f"{prefix}/{PARTS_FOLDER}/{run}/" if prefix else f"{PARTS_FOLDER}/{run}/"


def part_name(parts: str, seq: int) -> str:
    return f"{parts}segment-{seq:05d}"


def trailer_name(parts: str) -> str:
    """The temporary object holding the gzip trailer a segmented archive ends with."""
    return f"{parts}trailer"


def compose_scratch(parts: str, volume: int) -> str:
    """Where the intermediate objects of volume ``volume``'s compose tree are named."""
    return f"{parts}v{volume:03d}-"


def compose_temporary(scratch: str, level: int, index: int) -> str:
    """An intermediate object of a compose tree (more sources than one request takes)."""
    return f"{scratch}compose-{level}-{index:04d}"


def local_temporary(final: str, volume: int = 0) -> str:
    """The name a local archive (or its volume ``volume``) is written under until renamed."""
    name = final + LOCAL_TEMPORARY_SUFFIX
    return name if volume == 0 else f"{name}.{volume}"


def volume_names(archive: str, count: int) -> list[str]:
    """The names of an archive's volumes: the archive's own name when it is one object,
    else ``<archive>.000``, ``.001`` … (in name order, their concatenation is the archive)."""
    if count <= 1:
        return [archive]
    width = max(3, len(str(count - 1)))
    return [f"{archive}.{i:0{width}d}" for i in range(count)]


def volume_number(archive: str, name: str) -> int | None:
    """k for ``<archive>.<k>`` (a volume's name, any width of digits), else None."""
    tail = name[len(archive) + 1 :] if name.startswith(archive + ".") else ""
    return int(tail) if tail.isdigit() else None


def volume_of(name: str) -> str | None:
    """The archive a volume's name (``<run>.tar.gz.<k>``, with or without a folder) is
    part of, else None."""
    head, _, number = name.rpartition(".")
    return head if number.isdigit() and split_archive_filename(head.rsplit("/", 1)[-1]) else None


def archive_content_type(extension: str) -> str:
    return "application/x-tar" if extension == ".tar" else "application/gzip"


def session_metadata(run: str, compression: str, tool_version: str) -> dict[str, str]:
    """What a GCS archive's metadata holds from the start (`archive_metadata` at the end)."""
    return {"run": run, "compression": compression, "tool_version": tool_version}


def archive_metadata(
    run: str, raw_bytes: int, file_count: int, tar_crc32: int, compression: str, tool_version: str
) -> dict[str, str]:
    """A GCS archive's metadata once it is stored, the same keys whether it was uploaded
    as one stream or in segments (volumes add `volume_metadata`)."""
    return {
        **session_metadata(run, compression, tool_version),
        "raw_bytes": str(raw_bytes),
        "file_count": str(file_count),
        "tar_crc32": f"{tar_crc32:08x}",
        "manifest": manifest_filename(run),
    }


def volume_metadata(volumes: int, archive_bytes: int, archive_crc32c: int, volume: int) -> dict[str, str]:
    """What each volume of an archive stored as several carries beside `archive_metadata`."""
    return {
        "volumes": str(volumes),
        "archive_bytes": str(archive_bytes),
        "archive_crc32c": f"{archive_crc32c:08x}",
        "volume": str(volume),
    }


def manifest_next_to(archive: str, run: str) -> str:
    """The manifest's path or blob name beside an archive's path or blob name."""
    folder = archive.rsplit("/", 1)[0] + "/" if "/" in archive else ""
    return folder + manifest_filename(run)


def index_next_to(archive: str, run: str) -> str:
    """The access index's path or blob name beside an archive's (``<run>.index.tsv``)."""
    folder = archive.rsplit("/", 1)[0] + "/" if "/" in archive else ""
    return f"{folder}{run}{INDEX_SUFFIX}"


def read_index_names(archive: str) -> tuple[str, str]:
    """The GZIDX and ratarmount index paths or blob names of an archive (``<run>.tar.gz``:
    ``<run>.tar.gz.gzidx``, ``<run>.tar.gz.index.sqlite``; an archive in volumes is named
    by the archive they make up)."""
    return archive + GZIDX_SUFFIX, archive + RATARMOUNT_SUFFIX


def split_archive_filename(filename: str) -> tuple[str, bool] | None:
    """(run, gzip) from ``<run>.tar.gz`` / ``.tgz`` / ``.tar``, else None."""
    for ext in READ_EXTENSIONS:
        if filename.endswith(ext) and len(filename) > len(ext):
            return filename[: -len(ext)], ext != ".tar"
    return None


def destination_of(run: str, storage: str) -> str:
    """The ``gs://`` destination an archive named ``BUCKET/[PREFIX/]<run>/<file>`` was
    written to (for journals that recorded only the archive, as sruns-monitor's do)."""
    parts = storage.split("/")
    if len(parts) >= 3 and parts[-2] == run:
        return "gs://" + "/".join(parts[:-2])
    return "gs://" + parts[0]


def storage_uri(storage: str) -> str:
    """``gs://BUCKET/BLOB`` for a GCS ``storage`` string, the path for a local one."""
    return storage if storage.startswith("/") else f"gs://{storage}"


def is_url(text: str) -> bool:
    """Whether ``text`` starts like a URL (``scheme:``), known form or not."""
    return bool(_SCHEME.match(text))


def check_bucket_name(bucket: str, where: str) -> None:
    """Raise UsageError unless ``bucket`` is a valid GCS bucket name."""
    if (
        not _BUCKET.match(bucket)
        or any(len(part) > 63 for part in bucket.split("."))
        or ("." not in bucket and len(bucket) > 63)
    ):
        raise UsageError(
            f"{where}: {bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, '-', '_' "
            "or '.', starting and ending with a letter or digit)"
        )


@dataclass(frozen=True)
class Location:
    """A place, parsed: ``null``, a GCS bucket and path, or an absolute local path."""

    kind: Literal["null", "gcs", "local"]
    bucket: str = ""
    path: str = ""  # GCS: object name or prefix, no slashes at either end; local: absolute

    def __str__(self) -> str:
        if self.kind == "null":
            return "null"
        if self.kind == "gcs":
            return f"gs://{self.bucket}/{self.path}" if self.path else f"gs://{self.bucket}"
        return self.path

    @property
    def storage(self) -> str:
        """The journal's and Firestore's name for it (``BUCKET/BLOB``, or the path)."""
        return f"{self.bucket}/{self.path}" if self.kind == "gcs" else self.path


def parse_location(text: str, what: str = "destination") -> Location:
    """Parse a place in the one grammar of the module docstring; UsageError if it is none."""
    if text == "null":
        return Location("null")
    if text.startswith("gs://"):
        bucket, _, path = text[len("gs://") :].partition("/")
        if not bucket:
            raise UsageError(f"{what} {text!r} names no bucket: use gs://BUCKET[/PATH]")
        check_bucket_name(bucket, f"{what} {text!r}")
        return Location("gcs", bucket, path.strip("/"))
    if text.startswith("file://"):
        path = text[len("file://") :]
    elif is_url(text):
        raise UsageError(f"{what} {text!r} is not a form sruns-stream knows: use {FORMS} (./{text} for a directory)")
    else:
        path = text
    if not path:
        raise UsageError(f"{what} {text!r} names no directory: use {FORMS}")
    return Location("local", path=str(Path(path).expanduser().absolute()))
