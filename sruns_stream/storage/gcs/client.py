"""Google Cloud Storage access, for both directions: the upload (`gcs.upload`,
`gcs.parts`) and the read-back (`readback`). Every call to GCS goes through here.

One home for what talking to GCS needs: the client (the emulator's when
``STORAGE_EMULATOR_HOST`` is set, else Google's default credentials), the timeouts, the
one error table (`translate`: a library error or an HTTP answer becomes one of ours, with
one wording per status, transient or not decided there, as httpx maps transport errors
in one place), the object calls (`GcsBucket`: stat, list, small upload, metadata patch,
delete, compose, session creation) run under the one retry policy (`retry`) with the
library's own retry turned off, so that retries never nest and ``--upload-retries``
bounds them all, and the two requests the library has no public call for (`request`).
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import google_crc32c
import requests
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud.storage import Client  # type: ignore[import-untyped]  # the library ships no type information
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse  # type: ignore[import-untyped]

from ...errors import EXIT_TEMPORARY, DestinationError, IntegrityError, UploadError, temporary
from ..retry import RETRY, RetryPolicy, pause

__all__ = [
    "DEFAULT_TIMEOUT",
    "FAILURES",
    "TRANSIENT_ERRORS",
    "TRANSIENT_STATUS",
    "Client",
    "GcsBucket",
    "ObjectInfo",
    "Transient",
    "b64_crc32c",
    "crc32c_from_b64",
    "exhausted",
    "is_transient",
    "make_client",
    "media_url",
    "probe_object",
    "reason",
    "request",
    "translate",
]

# Connect, then each socket operation. Sending a whole 64 MiB chunk must fit in one
# (Python's sendall timeout covers the whole call): that asks for about 0.6 MB/s. GCS
# answers a committed chunk, or starts a ranged GET, within seconds even when busy.
DEFAULT_TIMEOUT = (30.0, 120.0)
# Answers worth another try, as Google's retry guidance lists them.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Failures below HTTP worth another try: the connection, a timeout, a body cut short.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    auth_exceptions.TransportError,
)
# Everything a google-cloud-storage call raises that is about GCS, not about us: what
# `translate` maps. DataCorruption: the library compared the server's crc32c with its
# own; InvalidResponse: a status the library did not map (e.g. a 308 where it wants 200).
FAILURES: tuple[type[BaseException], ...] = (
    api_exceptions.GoogleAPICallError,
    auth_exceptions.RefreshError,
    DataCorruption,
    InvalidResponse,
    *TRANSIENT_ERRORS,
)

T = TypeVar("T")
Failure = BaseException | requests.Response

def make_client() -> Client:
    """A storage client: the emulator's when STORAGE_EMULATOR_HOST is set, else Google's
    default credentials (a service account on a VM, or `gcloud auth application-default`)."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        # The client sends every request to the emulator itself; it wants no credentials.
        project = os.environ.get("GOOGLE_CLOUD_PROJECT") or "test"
        return Client(project=project, credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
    try:
        return Client()
    except auth_exceptions.DefaultCredentialsError as exc:
        raise DestinationError(
            "no Google credentials found: run on a VM with a service account, set "
            "GOOGLE_APPLICATION_CREDENTIALS, or run `gcloud auth application-default login`"
        ) from exc


class Transient(DestinationError):
    """A failure worth another try (`is_transient`). The retry loop catches it; after the
    last attempt it becomes the caller's error class, saying how often it was tried
    (`exhausted`). ``doing``, ``where`` and ``why`` are the parts of its one line."""

    exit_code = EXIT_TEMPORARY  # should one ever reach the CLI unconverted

    def __init__(self, doing: str, where: str, why: str) -> None:
        super().__init__(f"{doing} {where}: {why}")
        self.doing, self.where, self.why = doing, where, why


def _status(failure: Failure) -> int | None:
    if isinstance(failure, requests.Response):
        return failure.status_code
    if isinstance(failure, api_exceptions.GoogleAPICallError):
        return failure.code or None
    return None


def is_transient(failure: Failure) -> bool:
    """Whether a library error or an HTTP answer is worth another try."""
    status = _status(failure)
    if status is not None:
        return status in TRANSIENT_STATUS
    return isinstance(failure, TRANSIENT_ERRORS)


def reason(failure: Failure) -> str:
    """A library error or an HTTP answer as a short line (status and the server's own message)."""
    if isinstance(failure, requests.Response):
        text = ""
        try:
            body = failure.json()
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                text = str(body["error"].get("message") or "")
        except ValueError:
            text = failure.text
        text = " ".join(text.split())[:200]
        return f"HTTP {failure.status_code}" + (f" {text}" if text else "")
    if isinstance(failure, api_exceptions.GoogleAPICallError):
        if isinstance(failure.response, requests.Response):
            # The answer itself, as the session's requests are worded: the library's own
            # message prefixes the method and URL, which can carry a session's upload id.
            return reason(failure.response)
        message = " ".join(str(getattr(failure, "message", "") or failure).split())[:200]
        return f"HTTP {failure.code} {message}".strip()
    return f"{type(failure).__name__}: {' '.join(str(failure).split())[:200]}"


def translate(
    failure: Failure, doing: str, where: str, error: type[DestinationError] = DestinationError,
    missing: str | None = None,
) -> DestinationError:
    """The error table: ``failure`` (a library error, or an HTTP answer that is not a
    success) while ``doing`` (``reading``, ``composing`` …) ``where`` (``gs://…``), as the
    one of ours to raise. `Transient` when worth another try; else ``error`` (the caller's
    class: UploadError writing, DestinationError reading) with one wording per status,
    the same for every call. ``missing`` is the caller's line for a 404, when it knows
    what is missing (a bucket, an object deleted while read)."""
    why = reason(failure)
    if is_transient(failure):
        return Transient(doing, where, why)
    status = _status(failure)
    if status in (401, 403):
        return error(f"permission denied: {doing} {where}: {why}")
    if status == 404:
        return error(missing or f"not found: {doing} {where}: {why}")
    if isinstance(failure, DataCorruption):
        return IntegrityError(f"{doing} {where}: the crc32c GCS computed differs from ours: {failure}")
    if isinstance(failure, InvalidResponse):
        return error(f"{doing} {where}: unexpected answer from GCS ({failure})")
    if isinstance(failure, auth_exceptions.RefreshError):
        return error(f"{doing} {where}: cannot refresh Google credentials: {why}")
    return error(f"{doing} {where} failed: {why}")


def exhausted(last: Transient, attempts: int, error: type[DestinationError] = DestinationError) -> DestinationError:
    """What a transient failure becomes once the retries are spent."""
    return temporary(
        error(f"{last.doing} {last.where} failed {attempts} times, last: {last.why}; run the same command again")
    )


def request(client: Client, method: str, url: str, **kwargs: Any) -> requests.Response:
    """A request through the client's authorized session (``client._http``: credentials,
    token refresh). Only for the two requests google-cloud-storage has no public call for:
    the PUTs of a resumable session saved by another process (`gcs.upload`), and a
    streaming ranged GET of one pinned generation that re-opens at any byte (`media_url`)."""
    resp: requests.Response = client._http.request(method, url, **kwargs)
    return resp


def media_url(client: Client, bucket: str, name: str, generation: int | None) -> str:
    """The JSON API's download URL of one object (one generation, when given)."""
    return (
        f"{client.api_endpoint}/download/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"
        f"?alt=media" + (f"&generation={generation}" if generation else "")
    )


def b64_crc32c(value: int) -> str:
    return base64.b64encode(value.to_bytes(4, "big")).decode("ascii")


def crc32c_from_b64(text: str | None) -> int | None:
    """GCS's crc32c field (base64 of 4 big-endian bytes) as an int; None if absent."""
    if not text:
        return None
    raw = base64.b64decode(text)
    return int.from_bytes(raw, "big") if len(raw) == 4 else None


@dataclass(frozen=True)
class ObjectInfo:
    """An object as GCS describes it."""

    name: str
    size: int
    crc32c: int | None
    generation: int | None
    metadata: dict[str, str] = field(default_factory=dict)


def _info(blob: Any) -> ObjectInfo:
    return ObjectInfo(blob.name, int(blob.size or 0), crc32c_from_b64(blob.crc32c), blob.generation,
                      dict(blob.metadata or {}))


class GcsBucket:
    """One bucket's objects, every call through `translate` under one retry policy.

    ``error`` is the class a permanent failure raises (UploadError for the write side,
    DestinationError for the read side); ``sleep`` the backoff (the sink cuts it short
    when it is stopped)."""

    def __init__(
        self, bucket: str, client: Client, *, retry: RetryPolicy = RETRY,
        error: type[DestinationError] = UploadError, sleep: Callable[[float], None] = pause,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        self.name = bucket
        self.client = client
        self.bucket = client.bucket(bucket)
        self.retry = retry
        self.error = error
        self._sleep = sleep
        self._timeout = timeout

    def url(self, name: str) -> str:
        return f"gs://{self.name}/{name}" if name else f"gs://{self.name}"

    def call(self, doing: str, name: str, fn: Callable[[], T], missing: str | None = None) -> T:
        """``fn()`` (a google-cloud-storage call made with ``retry=None``), its failures
        translated, the transient ones tried again under the one policy."""
        where = self.url(name)

        def once(_: int) -> T:
            try:
                return fn()
            except FAILURES as exc:
                raise translate(exc, doing, where, self.error, missing) from exc

        try:
            return self.retry.call(once, Transient, sleep=self._sleep)
        except Transient as exc:
            raise exhausted(exc, self.retry.attempts, self.error) from None

    def settings(self) -> Any:
        """The bucket's own resource (retention policy, default hold, storage class)."""
        self.call("reading the settings of", "", lambda: self.bucket.reload(timeout=self._timeout, retry=None))
        return self.bucket

    def stat(self, name: str) -> ObjectInfo | None:
        """The object's description, or None when it (or the bucket) does not exist."""

        def get() -> Any:
            try:
                return self.bucket.get_blob(name, timeout=self._timeout, retry=None)
            except api_exceptions.NotFound:
                return None

        blob = self.call("reading", name, get)
        return None if blob is None else _info(blob)

    def list(self, prefix: str) -> list[ObjectInfo]:
        """The objects whose names start with ``prefix``, every page of them."""
        return self.call(
            "listing", prefix + "*",
            lambda: [_info(b) for b in self.client.list_blobs(self.bucket, prefix=prefix, timeout=self._timeout,
                                                              retry=None)],
        )

    def upload(self, name: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None) -> ObjectInfo:
        """A small object, written whole, checked by its crc32c."""
        blob = self.bucket.blob(name)
        if metadata:
            blob.metadata = metadata
        self.call(
            "writing", name,
            lambda: blob.upload_from_string(data, content_type=content_type, timeout=self._timeout,
                                            checksum="crc32c", retry=None),
        )
        stored, expected = crc32c_from_b64(blob.crc32c), google_crc32c.value(data)
        if stored != expected:
            raise IntegrityError(
                f"{self.url(name)} reads back with crc32c {stored if stored is None else f'{stored:08x}'}, "
                f"expected {expected:08x}"
            )
        return ObjectInfo(name, len(data), stored, blob.generation, dict(blob.metadata or {}))

    def patch_metadata(
        self, name: str, metadata: dict[str, str], generation: int | None, missing: str | None = None
    ) -> ObjectInfo:
        """Add ``metadata`` to the object (of ``generation``: never to one that replaced it)."""
        blob = self.bucket.blob(name)
        blob.metadata = metadata
        self.call(
            "updating the metadata of", name,
            lambda: blob.patch(if_generation_match=generation, timeout=self._timeout, retry=None), missing,
        )
        return _info(blob)

    def delete(self, name: str, generation: int | None = None) -> None:
        """Delete the object (of ``generation``, when given); one already gone is not an error."""

        def drop() -> None:
            with contextlib.suppress(api_exceptions.NotFound):
                self.bucket.blob(name).delete(if_generation_match=generation, timeout=self._timeout, retry=None)

        self.call("deleting", name, drop)

    def compose(self, sources: Sequence[str], dest: str, content_type: str) -> ObjectInfo:
        """``dest`` as the concatenation of at most 32 ``sources`` (one request)."""
        blob = self.bucket.blob(dest)
        blob.content_type = content_type
        self.call(
            "composing", dest,
            lambda: blob.compose([self.bucket.blob(s) for s in sources], timeout=self._timeout, retry=None),
        )
        return _info(blob)

    def create_session(
        self, name: str, content_type: str, metadata: dict[str, str], missing: str | None = None
    ) -> str:
        """A new resumable upload session's URI (a bearer credential: see `gcs.upload`)."""
        blob = self.bucket.blob(name)
        blob.metadata = metadata
        blob.content_type = content_type
        uri: str = self.call(
            "starting the upload of", name,
            lambda: blob.create_resumable_upload_session(
                content_type=content_type, size=None, timeout=self._timeout, retry=None
            ),
            missing,
        )
        return uri


def probe_object(bucket: str, name: str, client: Client | None = None) -> tuple[int, int | None] | None:
    """(size, crc32c) of ``gs://bucket/name`` from its metadata (no download), or None
    when the object (or the bucket) does not exist."""
    own = client is None
    client = client or make_client()
    try:
        info = GcsBucket(bucket, client, error=DestinationError).stat(name)
    finally:
        if own:
            client.close()
    return None if info is None else (info.size, info.crc32c)
