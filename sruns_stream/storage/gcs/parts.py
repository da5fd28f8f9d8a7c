"""GCS operations that assemble an archive from parts: compose, list, delete, small uploads.

An archive uploaded in parallel segments (`segments`) is a set of temporary objects
under one prefix per run (`layout.parts_prefix`), composed into the archive's object (or
its volumes) and then deleted. GCS composes at most 32 sources per request, so more are
composed in a tree of intermediate objects; a composite counts the components of its
sources, and GCS allows 1,024 (the segment plan keeps well below that).

Temporaries that must outlive a crash are swept by the next run of the same archive; a
bucket lifecycle rule on the parts prefix catches what a run that never comes back left
(the README gives the rule). Buckets where temporaries cannot be deleted (a retention
policy, a default event-based hold) or would pay early-deletion fees (a class other than
STANDARD) are told apart by `constraints`; the archive is then uploaded as one stream
(`archive` decides; only an archive that needs volumes uses parts in a class that bills
their early deletion, since compose needs sources of the result's class).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ...config import ArchiveOptions
from ...errors import DestinationError, IntegrityError
from ..layout import compose_temporary
from ..retry import RETRY, RetryPolicy
from ..volumes import is_stored_form, stored_forms_prefix
from .client import Client, GcsBucket, ObjectInfo, check_kept, make_client

__all__ = [
    "COMPONENT_LIMIT", "COMPOSE_LIMIT", "Constraints", "Parts", "bucket_policy", "helper_class", "holds_of", "settle",
]


def helper_class(options: ArchiveOptions) -> str | None:
    """The class of everything but the archive (parts, trailer, manifest, index, listing):
    STANDARD once a class is asked for (a cold part deleted after compose is billed its
    class's minimum duration; small files read often pay cold classes' retrieval fees);
    else the bucket's default, as before classes could be asked for."""
    return "STANDARD" if options.storage_class else None


def holds_of(info: ObjectInfo) -> tuple[str, ...]:
    return tuple(h for h, on in (("event_based", info.event_based_hold), ("temporary", info.temporary_hold)) if on)


def settle(
    gcs: GcsBucket, info: ObjectInfo, options: ArchiveOptions, now: float | None = None,
) -> ObjectInfo:
    """A finished archive object (or volume): its class and key checked as GCS reports
    them, then its retention and holds set (GCS sets them on an existing object only, in
    a bucket with object retention enabled) and checked. Raises IntegrityError when GCS
    reports other than what was asked; the caller decides the object's fate."""
    where = gcs.url(info.name)
    check_kept(where, info, options.storage_class, gcs.kms_key)
    wants_retention = options.retain_days is not None
    if not (wants_retention or options.event_based_hold or options.temporary_hold):
        return info
    until = None
    if options.retain_days is not None:
        moment = (now if now is not None else time.time()) + options.retain_days * 86400
        until = datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat(timespec="seconds")
    settled = gcs.hold_and_retain(
        info.name, info.generation, retain_until=until,
        mode="Locked" if options.retention_mode == "locked" else "Unlocked",
        event_based_hold=options.event_based_hold, temporary_hold=options.temporary_hold,
    )
    missing = [
        what for what, asked, got in (
            ("retention", wants_retention, settled.retain_until is not None),
            ("event-based hold", options.event_based_hold, settled.event_based_hold),
            ("temporary hold", options.temporary_hold, settled.temporary_hold),
        ) if asked and not got
    ]
    if missing:
        hint = ("the bucket must have object retention enabled (gcloud storage buckets create "
                "--enable-per-object-retention)" if "retention" in missing else "it is not this run's archive")
        raise IntegrityError(
            f"{where} reports no {', no '.join(missing)} after {'it was' if len(missing) == 1 else 'they were'} "
            f"set: {hint}"
        )
    return settled

COMPOSE_LIMIT = 32  # sources per compose request
COMPONENT_LIMIT = 1024  # components in one composite object


@dataclass(frozen=True)
class Constraints:
    """Why temporary parts should not be used in a bucket (None: no such reason)."""

    undeletable: str | None  # a retention policy or default hold: parts would stay
    billed: str | None  # a class with a minimum storage duration: early deletion is billed
    autoclass: bool = False  # GCS picks each object's class itself (and ignores one asked for)

    @property
    def first(self) -> str | None:
        return self.undeletable or self.billed


class Parts:
    """One bucket's objects, as an archive's parts are assembled in it. Each call is one
    of `client.GcsBucket`'s, under ``retry`` (the archive's ``--upload-retries``)."""

    def __init__(
        self, bucket: str, *, client: Client | None = None, retry: RetryPolicy = RETRY, kms_key: str | None = None,
    ) -> None:
        self.bucket_name = bucket
        self._client = client or make_client()
        self._own = client is None
        self._gcs = GcsBucket(bucket, self._client, retry=retry, kms_key=kms_key)

    def close(self) -> None:
        if self._own:
            self._client.close()

    def constraints(self) -> Constraints:
        """What this bucket's settings mean for temporary parts (read once per archive)."""
        bucket = self._gcs.settings()
        undeletable = None
        if bucket.retention_period:
            undeletable = f"it has a retention policy ({bucket.retention_period} s): parts could not be deleted"
        elif bucket.default_event_based_hold:
            undeletable = "new objects get an event-based hold: parts could not be deleted"
        storage_class = bucket.storage_class or "STANDARD"
        billed = None
        if storage_class not in ("STANDARD", "MULTI_REGIONAL", "REGIONAL"):
            billed = f"its storage class is {storage_class}: deleting parts early is billed"
        return Constraints(undeletable, billed, bool(bucket.autoclass_enabled))

    def stat(self, name: str) -> ObjectInfo | None:
        return self._gcs.stat(name)

    def names(self, prefix: str) -> list[str]:
        return [info.name for info in self._gcs.list(prefix)]

    def remove_stale(self, archive: str, keep: Sequence[str]) -> list[str]:
        """Delete what an earlier archive of the same run, cut another way, left beside
        ``archive`` (`volumes.is_stored_form`); best effort (a bucket that keeps objects
        refuses): returns what could not be deleted."""
        try:
            stale = [n for n in self.names(stored_forms_prefix(archive))
                     if n not in keep and is_stored_form(archive, n)]
        except DestinationError:
            return []
        return [name for name in stale if not self._try_delete(name)]

    def _try_delete(self, name: str) -> bool:
        try:
            self._gcs.delete(name)
        except DestinationError:
            return False
        return True

    def delete(self, names: Sequence[str]) -> None:
        """Delete ``names``; one already gone is not an error."""
        for name in names:
            self._gcs.delete(name)

    def upload(
        self, name: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None,
        storage_class: str | None = None,
    ) -> ObjectInfo:
        """A small object, written whole, checked by its crc32c."""
        return self._gcs.upload(name, data, content_type, metadata, storage_class)

    def rewrite_class(self, name: str, storage_class: str, generation: int | None) -> ObjectInfo:
        return self._gcs.rewrite_class(name, storage_class, generation)

    def settle(self, info: ObjectInfo, options: ArchiveOptions) -> ObjectInfo:
        return settle(self._gcs, info, options)

    def compose(
        self, sources: Sequence[str], dest: str, content_type: str, scratch: str, storage_class: str | None = None,
    ) -> ObjectInfo:
        """``dest`` as the concatenation of ``sources``, in a tree of intermediate objects
        named under ``scratch`` (`layout.compose_temporary`) when there are more than
        COMPOSE_LIMIT of them."""
        if len(sources) > COMPONENT_LIMIT:
            raise IntegrityError(
                f"gs://{self.bucket_name}/{dest} would have {len(sources)} components, more than GCS's "
                f"{COMPONENT_LIMIT}: the segment plan should have prevented this"
            )
        level, names = 0, list(sources)
        while len(names) > COMPOSE_LIMIT:
            groups = [names[i : i + COMPOSE_LIMIT] for i in range(0, len(names), COMPOSE_LIMIT)]
            names = []
            for i, group in enumerate(groups):
                name = compose_temporary(scratch, level, i)
                self._gcs.compose(group, name, content_type, storage_class)
                names.append(name)
            level += 1
        return self._gcs.compose(names, dest, content_type, storage_class)

    def patch_metadata(self, name: str, metadata: dict[str, str], generation: int | None) -> ObjectInfo:
        """Add ``metadata`` to the object (of ``generation``: never to one that replaced it)."""
        return self._gcs.patch_metadata(name, metadata, generation)


def bucket_policy(bucket: str, *, client: Client | None = None, retry: RetryPolicy | None = None) -> Constraints:
    """What ``bucket``'s settings (retention policy, default event-based hold, storage
    class) mean for temporary parts: the one question the archive asks of the bucket
    before it picks one stream or segments (`archiver.run`)."""
    parts = Parts(bucket, client=client, retry=retry or RETRY)
    try:
        return parts.constraints()
    finally:
        parts.close()
