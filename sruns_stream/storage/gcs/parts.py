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

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from google.api_core import exceptions as api_exceptions

from ...errors import DestinationError, IntegrityError, UploadError
from ..retry import RETRY, RetryPolicy
from ..volumes import is_stored_form
from .client import (
    API_ERRORS,
    DEFAULT_TIMEOUT,
    Client,
    crc32c_from_b64,
    is_transient,
    make_client,
    reason,
)

__all__ = ["COMPONENT_LIMIT", "COMPOSE_LIMIT", "Constraints", "ObjectInfo", "Parts", "bucket_policy"]

COMPOSE_LIMIT = 32  # sources per compose request
COMPONENT_LIMIT = 1024  # components in one composite object

T = TypeVar("T")


class _Transient(UploadError):
    """Worth another try (see gcs.is_transient); private to this module's retries."""


@dataclass(frozen=True)
class Constraints:
    """Why temporary parts should not be used in a bucket (None: no such reason)."""

    undeletable: str | None  # a retention policy or default hold: parts would stay
    billed: str | None  # a class with a minimum storage duration: early deletion is billed

    @property
    def first(self) -> str | None:
        return self.undeletable or self.billed


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    crc32c: int | None
    generation: int | None
    metadata: dict[str, str]


class Parts:
    """One bucket's objects, as an archive's parts are assembled in it."""

    def __init__(self, bucket: str, *, client: Client | None = None, retry: RetryPolicy = RETRY) -> None:
        self.bucket_name = bucket
        self._client = client or make_client()
        self._own = client is None
        self._bucket = self._client.bucket(bucket)
        self._retry = retry

    def close(self) -> None:
        if self._own:
            self._client.close()

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        def once(_: int) -> T:
            try:
                return fn()
            except API_ERRORS as exc:
                if is_transient(exc):
                    raise _Transient(f"{what}: {reason(exc)}") from exc
                code = getattr(exc, "code", 0) or 0
                if code in (401, 403):
                    raise UploadError(
                        f"permission denied: {what} in bucket {self.bucket_name!r}: {reason(exc)}"
                    ) from exc
                raise UploadError(f"{what} in bucket {self.bucket_name!r}: {reason(exc)}") from exc

        try:
            return self._retry.call(once, _Transient)
        except _Transient as exc:
            raise UploadError(f"{exc} ({self._retry.attempts} attempts); run the same command again") from None

    def constraints(self) -> Constraints:
        """What this bucket's settings mean for temporary parts (read once per archive)."""
        self._call("reading the bucket's settings", lambda: self._bucket.reload(timeout=DEFAULT_TIMEOUT, retry=None))
        undeletable = None
        if self._bucket.retention_period:
            undeletable = f"it has a retention policy ({self._bucket.retention_period} s): parts could not be deleted"
        elif self._bucket.default_event_based_hold:
            undeletable = "new objects get an event-based hold: parts could not be deleted"
        storage_class = self._bucket.storage_class or "STANDARD"
        billed = None
        if storage_class not in ("STANDARD", "MULTI_REGIONAL", "REGIONAL"):
            billed = f"its storage class is {storage_class}: deleting parts early is billed"
        return Constraints(undeletable, billed)

    def stat(self, name: str) -> ObjectInfo | None:
        def get() -> Any:
            try:
                return self._bucket.get_blob(name, timeout=DEFAULT_TIMEOUT, retry=None)
            except api_exceptions.NotFound:
                return None

        blob = self._call(f"reading gs://{self.bucket_name}/{name}", get)
        if blob is None:
            return None
        return ObjectInfo(int(blob.size or 0), crc32c_from_b64(blob.crc32c), blob.generation, dict(blob.metadata or {}))

    def names(self, prefix: str) -> list[str]:
        return self._call(
            f"listing gs://{self.bucket_name}/{prefix}",
            lambda: [b.name for b in self._client.list_blobs(self._bucket, prefix=prefix, timeout=DEFAULT_TIMEOUT)],
        )

    def remove_stale(self, archive: str, keep: Sequence[str]) -> list[str]:
        """Delete what an earlier archive of the same run, cut another way, left beside
        ``archive`` (`volumes.is_stored_form`); best effort (a bucket that keeps objects
        refuses): returns what could not be deleted."""
        try:
            stale = [n for n in self.names(archive) if n not in keep and is_stored_form(archive, n)]
        except DestinationError:
            return []
        return [name for name in stale if not self._try_delete(name)]

    def _try_delete(self, name: str) -> bool:
        try:
            self.delete([name])
        except DestinationError:
            return False
        return True

    def delete(self, names: Sequence[str]) -> None:
        """Delete ``names``; one already gone is not an error."""
        for name in names:
            def drop(name: str = name) -> None:
                with contextlib.suppress(api_exceptions.NotFound):
                    self._bucket.blob(name).delete(timeout=DEFAULT_TIMEOUT, retry=None)

            self._call(f"deleting gs://{self.bucket_name}/{name}", drop)

    def upload(self, name: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None) -> ObjectInfo:
        """A small object, written whole, checked by its crc32c."""
        blob = self._bucket.blob(name)
        if metadata:
            blob.metadata = metadata
        self._call(
            f"uploading gs://{self.bucket_name}/{name}",
            lambda: blob.upload_from_string(data, content_type=content_type, timeout=DEFAULT_TIMEOUT,
                                            checksum="crc32c", retry=None),
        )
        return ObjectInfo(len(data), crc32c_from_b64(blob.crc32c), blob.generation, dict(blob.metadata or {}))

    def compose(
        self, sources: Sequence[str], dest: str, content_type: str, scratch: str
    ) -> ObjectInfo:
        """``dest`` as the concatenation of ``sources``, in a tree of intermediate objects
        named under ``scratch`` when there are more than COMPOSE_LIMIT of them."""
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
                name = f"{scratch}compose-{level}-{i:04d}"
                self._compose_one(group, name, content_type)
                names.append(name)
            level += 1
        return self._compose_one(names, dest, content_type)

    def _compose_one(self, sources: Sequence[str], dest: str, content_type: str) -> ObjectInfo:
        blob = self._bucket.blob(dest)
        blob.content_type = content_type
        self._call(
            f"composing gs://{self.bucket_name}/{dest}",
            lambda: blob.compose([self._bucket.blob(s) for s in sources], timeout=DEFAULT_TIMEOUT, retry=None),
        )
        return ObjectInfo(int(blob.size or 0), crc32c_from_b64(blob.crc32c), blob.generation, {})

    def patch_metadata(self, name: str, metadata: dict[str, str], generation: int | None) -> ObjectInfo:
        """Add ``metadata`` to the object (of ``generation``: never to one that replaced it)."""
        blob = self._bucket.blob(name)
        blob.metadata = metadata
        self._call(
            f"updating the metadata of gs://{self.bucket_name}/{name}",
            lambda: blob.patch(if_generation_match=generation, timeout=DEFAULT_TIMEOUT, retry=None),
        )
        return ObjectInfo(int(blob.size or 0), crc32c_from_b64(blob.crc32c), blob.generation, dict(blob.metadata or {}))


def bucket_policy(bucket: str, *, client: Client | None = None) -> Constraints:
    """What ``bucket``'s settings (retention policy, default event-based hold, storage
    class) mean for temporary parts: the one question the archive asks of the bucket
    before it picks one stream or segments (`archiver.run`)."""
    parts = Parts(bucket, client=client)
    try:
        return parts.constraints()
    finally:
        parts.close()
