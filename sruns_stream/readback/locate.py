"""Where an archive is: what the user typed, made an `ArchiveSource`.

`resolve_source` turns a run name (found through the journal and then Firestore), a
``gs://bucket/blob`` or ``file://`` URL, or a local path into the archive's bytes and the
``<run>.manifest.tsv`` beside it (`sources`). Places are read in the package's one
location grammar (`layout.parse_location`), names (archives, volumes, manifests) in
`layout`, and every GCS call goes through `gcs.client.GcsBucket`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DestinationError, IntegrityError, UsageError
from ..storage import volumes
from ..storage.layout import (
    WRITE_EXTENSIONS,
    Location,
    archive_filename,
    blob_name,
    index_next_to,
    is_url,
    manifest_filename,
    manifest_next_to,
    parse_location,
    split_archive_filename,
    storage_uri,
    volume_number,
    volume_of,
)
from .sources import ArchiveSource, ByteSource, GcsObject, LocalFile, VolumePart, Volumes, read_all

if TYPE_CHECKING:
    from google.cloud.storage import Client  # type: ignore[import-untyped]  # the library ships no type information

    from ..state.journal import Journal
    from ..storage.gcs.client import GcsBucket

__all__ = ["resolve_source"]

_MAX_URI = len("gs://") + 222 + 1 + 1024  # GCS's longest bucket and object names


def _volume_parts(
    base: str, where: Callable[[str], str], found: dict[str, ByteSource], listing: tuple[str, ByteSource] | None,
) -> list[VolumePart]:
    """The volumes of archive ``base`` in order: as its listing (its name, its bytes) names
    them (each with the size and crc32c listed), or else those ``found`` by name, a gap
    in their numbers standing for a missing one. ``where`` makes a name a location for
    messages."""
    if listing is not None:
        at = where(listing[0])
        try:
            listed = volumes.parse(read_all(listing[1]), at)
        except IntegrityError as exc:
            raise DestinationError(f"{exc}: the archive's volumes cannot be put in order") from None
        for v in listed:
            if volume_number(base, v.name) is None:
                raise DestinationError(f"{at} names {v.name!r}, not a volume of {base}")
        return [VolumePart(where(v.name), found.get(v.name), v.size, v.crc32c) for v in listed]
    numbered = sorted((n, name) for name in found if (n := volume_number(base, name)) is not None)
    width = len(numbered[0][1]) - len(base) - 1
    names = {n: name for n, name in numbered}
    return [
        VolumePart(where(names.get(k, f"{base}.{k:0{width}d}")), found.get(names.get(k, "")))
        for k in range(numbered[-1][0] + 1)
    ]


def _local_volumes(path: Path) -> Volumes | None:
    """The volumes of the archive named by ``path`` (which is not a file), or None."""
    folder, base = path.parent, path.name
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    found: dict[str, ByteSource] = {
        name: LocalFile(folder / name) for name in names
        if volume_number(base, name) is not None and (folder / name).is_file()
    }
    listing = next((n for n in volumes.listing_names(base) if (folder / n).is_file()), None)
    if not found and listing is None:
        return None
    parts = _volume_parts(base, lambda name: str(folder / name), found,
                          (listing, LocalFile(folder / listing)) if listing is not None else None)
    return Volumes(str(path), parts)


def _local(path: Path) -> ArchiveSource:
    path = path.expanduser().absolute()
    archive = volume_of(path.name)
    if archive is not None:
        path = path.with_name(archive)  # one volume named: the archive they make up
    if path.is_dir():
        # A destination's run directory: <dest>/<run>/<run>.tar.gz (or .tar, or volumes).
        for ext in WRITE_EXTENSIONS:
            candidate = path / archive_filename(path.name, ext)
            if candidate.is_file() or _local_volumes(candidate) is not None:
                path = candidate
                break
        else:
            raise UsageError(
                f"{path} is a directory without {path.name}.tar.gz or {path.name}.tar: give the archive's path"
            )
    data = LocalFile(path) if path.is_file() else _local_volumes(path)
    if data is None:
        # A well-formed request for something that is not there: a failure, not a usage error.
        what = "not a regular file" if os.path.lexists(path) else "nothing there"
        raise DestinationError(f"no archive at {path} ({what}): check the path")
    split = split_archive_filename(path.name)
    run, gzip = split if split else (path.name.split(".", 1)[0], True)
    manifest_path = path.with_name(manifest_filename(run))
    index_path = Path(index_next_to(str(path), run))
    return ArchiveSource(
        location=str(path),
        run=run,
        gzip=gzip,
        data=data,
        manifest_location=str(manifest_path),
        manifest=LocalFile(manifest_path) if manifest_path.is_file() else None,
        index=LocalFile(index_path) if gzip and index_path.is_file() else None,
        index_location=str(index_path),
        beside=lambda where: LocalFile(Path(where)) if Path(where).is_file() else None,
    )


def _gcs(where: Location, url: str, client_factory: Callable[[], Client] | None) -> ArchiveSource:
    if not where.path:
        raise UsageError(f"{url!r} names no object: use gs://BUCKET/PREFIX/RUN/RUN.tar.gz")
    from ..storage.gcs.client import make_client

    client = (client_factory or make_client)()
    try:
        return _gcs_with(client, where, url)
    except BaseException:
        client.close()
        raise


def _gcs_with(client: Client, where: Location, url: str) -> ArchiveSource:
    from ..storage.gcs.client import GcsBucket

    bucket_name, name = where.bucket, where.path
    gcs = GcsBucket(bucket_name, client, error=DestinationError)
    candidates = [name]
    prefix, _, base = name.rpartition("/")
    if split_archive_filename(base) is None:
        # gs://bucket/prefix/RUN: the run's folder in the sruns-monitor layout.
        candidates = [*(blob_name(prefix, base, ext) for ext in WRITE_EXTENSIONS), name]
    archive = volume_of(name)
    if archive is not None:
        candidates = [archive]  # one volume named: the archive they make up
    blob = None
    data: ByteSource | None = None
    for candidate in candidates:
        blob = gcs.stat(candidate)  # None also when the bucket itself is missing
        data = _gcs_volumes(gcs, candidate) if blob is None else None
        if blob is not None or data is not None:
            name = candidate
            break
    if blob is None and data is None:
        raise DestinationError(
            f"no archive at {url} (bucket {bucket_name!r}): check the URL, e.g. gs://BUCKET/PREFIX/RUN/RUN.tar.gz"
        )
    if data is None:
        assert blob is not None
        data = GcsObject(client, bucket_name, name, blob.size, blob.generation)
    filename = name.rsplit("/", 1)[-1]
    split = split_archive_filename(filename)
    run, gzip = split if split else (filename.split(".", 1)[0], True)
    manifest_name = manifest_next_to(name, run)
    manifest_blob = gcs.stat(manifest_name)
    index_name = index_next_to(name, run)
    index_blob = gcs.stat(index_name) if gzip else None
    return ArchiveSource(
        location=str(Location("gcs", bucket_name, name)),
        run=run,
        gzip=gzip,
        data=data,
        manifest_location=str(Location("gcs", bucket_name, manifest_name)),
        manifest=(
            GcsObject(client, bucket_name, manifest_name, manifest_blob.size, manifest_blob.generation)
            if manifest_blob is not None else None
        ),
        # Volumes are checked one by one (`Volumes`), against their listing or their own crc32c.
        stored_crc32c=blob.crc32c if blob is not None else None,
        closer=client.close,
        index=(GcsObject(client, bucket_name, index_name, index_blob.size, index_blob.generation)
               if index_blob is not None else None),
        index_location=str(Location("gcs", bucket_name, index_name)),
        beside=lambda where: _gcs_beside(gcs, where),
    )


def _gcs_beside(gcs: GcsBucket, where: str) -> ByteSource | None:
    """The object at gs:// URL ``where`` in the archive's bucket, or None."""
    name = parse_location(where, "object").path
    found = gcs.stat(name)
    return None if found is None else GcsObject(gcs.client, gcs.name, name, found.size, found.generation)


def _gcs_volumes(gcs: GcsBucket, name: str) -> Volumes | None:
    """The volumes of archive ``gs://bucket/name`` (which is not an object), or None."""
    bucket, client = gcs.name, gcs.client
    base = name.rsplit("/", 1)[-1]
    folder = name[: len(name) - len(base)]
    objects = {b.name[len(folder):]: b for b in gcs.list(volumes.stored_forms_prefix(name))
               if "/" not in b.name[len(folder):]}
    found: dict[str, ByteSource] = {
        n: GcsObject(client, bucket, b.name, b.size, b.generation)
        for n, b in objects.items() if volume_number(base, n) is not None
    }
    listing_name = next((n for n in volumes.listing_names(base) if n in objects), None)
    if not found and listing_name is None:
        return None
    listing = None
    if listing_name is not None:
        info = objects[listing_name]
        listing = (listing_name, GcsObject(client, bucket, info.name, info.size, info.generation))
    parts = _volume_parts(base, lambda n: str(Location("gcs", bucket, folder + n)), found, listing)
    if listing is None:
        # No listing: each volume's own crc32c (GCS keeps one per object) checks its transfer.
        for part in parts:
            blob = objects.get(part.description.rsplit("/", 1)[-1])
            part.crc32c = blob.crc32c if blob is not None else None
    return Volumes(str(Location("gcs", bucket, name)), parts)


def _from_run_name(name: str, journal: Journal | None, collection: str | None) -> str | None:
    """Where run ``name`` was archived, per the journal (``gs://…`` or an absolute path)
    then Firestore (``gs://…`` only); None if neither knows it.

    A Firestore document is shared by every host and written by whoever can write the
    collection: a local path in it is refused, never opened (it could name any file on
    this host, and the error would quote its first bytes)."""
    why = ""
    if journal is not None:
        # Here, not at the top: given a journal, its module is loaded already; without one
        # (a path, a gs:// URI) the read side does not load SQLite.
        from ..state.journal import ARCHIVED

        task = journal.get(name)
        if task is not None:
            location = task.location or task.gcp_tarfile
            if location and task.status in ARCHIVED:
                return storage_uri(location)
            why = f"journal {journal.path} says run {name} is {task.status}, not archived"
    if collection:
        from ..state.firestore import lookup

        record = lookup(name, collection)
        if record is not None:
            if record.archived:
                storage = record.storage
                uri = record.archive_uri if isinstance(storage, str) else None
                if uri is None or not uri.startswith("gs://"):
                    shown = repr(storage[:200]) if isinstance(storage, str) else repr(storage)[:200]
                    raise UsageError(
                        f"Firestore collection {collection!r} says run {name} is stored at {shown}, not in "
                        "GCS: a record shared by every host may only name a gs:// location, so it is not read; "
                        "give the archive's path if it is on this host"
                    )
                # A bucket name and an object name (at most 222 and 1,024 bytes), printable:
                # a control character would reach every message that names the archive.
                if len(uri.encode()) > _MAX_URI or any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in uri):
                    raise UsageError(
                        f"Firestore collection {collection!r} says run {name} is stored at {uri[:200]!r}: not a "
                        "GCS object name (control characters, or longer than GCS allows), so it is not read; "
                        "correct the record, or give the archive's gs:// URL"
                    )
                return uri
            why = f"Firestore collection {collection!r} says run {name} is {record.workflow_status}, not archived"
    if why:
        raise UsageError(f"{why}: wait for its archive to finish, or give the archive's gs:// URL or path")
    return None


def _parse(text: str) -> Location:
    """``text`` read in the package's one location grammar (`layout.parse_location`). A
    bucket name it rejects keeps its message; any other URL it rejects (``gs:/x``,
    ``gs:bucket``, ``s3://…``, ``http://…``) is answered with the forms a source may take."""
    try:
        return parse_location(text, "archive")
    except UsageError:
        if text.startswith("gs://"):
            raise
        raise UsageError(
            f"{text!r} is not a source sruns-stream reads: give a run name, gs://BUCKET/PREFIX/RUN/RUN.tar.gz, "
            "file:///PATH or a local path"
        ) from None


def _open(location: Location, text: str, client_factory: Callable[[], Client] | None) -> ArchiveSource:
    """The archive at a parsed ``gs://`` or local location (``text``: as it was given)."""
    if location.kind == "gcs":
        return _gcs(location, text, client_factory)
    return _local(Path(location.path))


def resolve_source(
    source: str, journal: Journal | None, collection: str | None, *,
    client_factory: Callable[[], Client] | None = None,
) -> ArchiveSource:
    """An `ArchiveSource` for a run name, a ``gs://`` or ``file://`` URL or a local path
    (see the module doc).

    A bare name (no ``/``) is looked up as a run first, so a run folder of the same name
    in the current directory does not shadow its archive.
    """
    if source.startswith(("gs://", "file://")) or (is_url(source) and not os.path.lexists(source)):
        # A URL, never a file name (unless one stands there): gs://, file://, or a form we do
        # not read (gs:/bucket/x, gs:bucket, s3://..., http://...).
        return _open(_parse(source), source, client_factory)
    if "/" not in source and source not in (".", ".."):
        location = _from_run_name(source, journal, collection)
        if location is not None:
            return _open(parse_location(location, "archive"), location, client_factory)
        if not os.path.lexists(source) and split_archive_filename(source) is not None:
            # RUN.tar.gz in the current directory, named as a path: it is not there.
            return _local(Path(source))
        if not os.path.exists(source):
            places = [f"journal {journal.path}" if journal is not None else "",
                      f"Firestore collection {collection!r}" if collection else ""]
            known = " or ".join(p for p in places if p)
            what = (f"is not a run in {known}, a gs:// URL, nor an existing path" if known else
                    "is neither a gs:// URL nor an existing path, and no journal or Firestore collection "
                    "was given to look it up as a run")
            raise UsageError(
                f"{source!r} {what}: give the run's name, gs://BUCKET/PREFIX/RUN/RUN.tar.gz or the archive's path"
            )
    return _local(Path(source))
