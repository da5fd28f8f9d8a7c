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
import datetime
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import google_crc32c
import requests
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud.storage import Client  # type: ignore[import-untyped]  # the library ships no type information
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse  # type: ignore[import-untyped]

from ...errors import EXIT_TEMPORARY, ConfigError, DestinationError, IntegrityError, UploadError, temporary
from ..retry import RETRY, RetryPolicy, pause

__all__ = [
    "ARCHIVE_PERMISSIONS",
    "CREDENTIALS_VARIABLE",
    "DEFAULT_TIMEOUT",
    "FAILURES",
    "TRANSIENT_ERRORS",
    "TRANSIENT_STATUS",
    "Client",
    "GcsBucket",
    "ObjectInfo",
    "Transient",
    "b64_crc32c",
    "check_bucket",
    "crc32c_from_b64",
    "exhausted",
    "is_transient",
    "check_kept",
    "info_from_resource",
    "kms_denied",
    "make_client",
    "media_url",
    "probe_object",
    "reason",
    "request",
    "same_key",
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

CREDENTIALS_VARIABLE = "GOOGLE_APPLICATION_CREDENTIALS"

T = TypeVar("T")
Failure = BaseException | requests.Response

def make_client() -> Client:
    """A storage client: the emulator's when STORAGE_EMULATOR_HOST is set, else Google's
    default credentials (a service account on a VM, or `gcloud auth application-default`)."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        # The client sends every request to the emulator itself; it wants no credentials.
        project = os.environ.get("GOOGLE_CLOUD_PROJECT") or "test"
        return Client(project=project, credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
    named = os.environ.get(CREDENTIALS_VARIABLE)
    if named:
        _check_credentials_file(named)
    try:
        return Client()
    except auth_exceptions.DefaultCredentialsError as exc:
        if named:
            # The file is JSON with a type, but the library cannot use it (a service
            # account key without its private key, an unknown type): its reason, redacted.
            raise ConfigError(f"{CREDENTIALS_VARIABLE} names {named}, which Google's library cannot use: "
                              f"{_library_reason(exc)}; point it at a working key file, or unset it") from exc
        raise DestinationError(
            "no Google credentials found: run on a VM with a service account, set "
            f"{CREDENTIALS_VARIABLE}, or run `gcloud auth application-default login`"
        ) from exc


def _library_reason(exc: BaseException) -> str:
    """google-auth's message on one line: its arguments (a message, the error under it)
    joined, never their repr."""
    text = ": ".join(str(a).rstrip(".") for a in exc.args) if exc.args else str(exc)
    return " ".join(text.split())[:300]


def _check_credentials_file(named: str) -> None:
    """ConfigError naming the file and what is wrong with it, when the credentials
    variable names one that is missing, unreadable, not JSON or not a credentials file:
    without this the library's error reads as no credentials at all. Its contents (a
    private key) are never quoted."""
    fix = f"point {CREDENTIALS_VARIABLE} at the service account key file, or unset it"
    path = Path(named)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{CREDENTIALS_VARIABLE} names {named}, which does not exist: {fix}") from None
    except IsADirectoryError:
        raise ConfigError(f"{CREDENTIALS_VARIABLE} names {named}, which is a directory: {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "it is not text"
        raise ConfigError(f"{CREDENTIALS_VARIABLE} names {named}, which cannot be read ({why}): {fix}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{CREDENTIALS_VARIABLE} names {named}, which is not JSON ({exc.msg} at line {exc.lineno}): "
                          f"{fix}") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ConfigError(f"{CREDENTIALS_VARIABLE} names {named}, which is not a Google credentials file (no "
                          f"\"type\" key, e.g. \"service_account\"): {fix}")


# What archiving into a bucket needs: write objects and compose them, read them back to
# check them, list them (resuming, volumes, stale forms) and delete temporaries.
ARCHIVE_PERMISSIONS = ("storage.objects.create", "storage.objects.get", "storage.objects.list",
                       "storage.objects.delete")


def check_bucket(bucket: str, setting: str) -> None:
    """ConfigError unless ``bucket`` exists and these credentials may archive into it:
    what a daemon checks at start, rather than finding a mistyped bucket run by run
    after backoffs. ``setting`` names where the bucket was given, for the message."""
    gcs = GcsBucket(bucket, make_client(), error=DestinationError)
    missing = f"bucket {bucket} does not exist ({setting}): correct the name, or create the bucket"
    try:
        lacking = gcs.lacking(ARCHIVE_PERMISSIONS, missing)
    except DestinationError as exc:
        if str(exc) == missing:
            raise ConfigError(missing) from None
        raise
    if lacking:
        raise ConfigError(f"bucket {bucket} ({setting}): these credentials lack {', '.join(lacking)}: grant them "
                          "(e.g. roles/storage.objectAdmin on the bucket) to the daemon's service account")


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


KMS_ROLE = "roles/cloudkms.cryptoKeyEncrypterDecrypter"


def kms_denied(key: str, doing: str, where: str, why: str) -> str:
    """The one line for a 403 from the Cloud KMS key: the key, the role, the command."""
    return (
        f"permission denied: {doing} {where}: GCS may not use Cloud KMS key {key} ({why}): the Cloud Storage "
        f"service agent of the bucket's project needs {KMS_ROLE} on that key; grant it with "
        f"`gcloud storage service-agent --project=BUCKET_PROJECT --authorize-cmek={key}`"
    )


def translate(
    failure: Failure, doing: str, where: str, error: type[DestinationError] = DestinationError,
    missing: str | None = None, kms_key: str | None = None,
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
    if status == 403 and kms_key and any(w in why.lower() for w in ("kms", "cryptokey", "encrypt")):
        return error(kms_denied(kms_key, doing, where, why))
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
    storage_class: str | None = None
    kms_key_name: str | None = None  # with GCS's /cryptoKeyVersions/N after the key
    retain_until: str | None = None  # RFC 3339, as GCS reports it
    retention_mode: str | None = None
    event_based_hold: bool = False
    temporary_hold: bool = False


def info_from_resource(resource: dict[str, Any]) -> ObjectInfo:
    """An object resource (GCS's JSON) as an ObjectInfo."""
    retention = resource.get("retention") or {}
    return ObjectInfo(
        str(resource.get("name", "")), int(resource.get("size") or 0), crc32c_from_b64(resource.get("crc32c")),
        int(resource.get("generation") or 0) or None, dict(resource.get("metadata") or {}),
        resource.get("storageClass"), resource.get("kmsKeyName"), retention.get("retainUntilTime"),
        retention.get("mode"), bool(resource.get("eventBasedHold")), bool(resource.get("temporaryHold")),
    )


def _info(blob: Any) -> ObjectInfo:
    return info_from_resource(blob._properties)


def same_key(reported: str | None, asked: str) -> bool:
    """Whether GCS's kmsKeyName (a key version) is of the key asked for."""
    return reported == asked or bool(reported and reported.startswith(asked + "/cryptoKeyVersions/"))


def check_kept(where: str, info: ObjectInfo, storage_class: str | None, kms_key: str | None) -> None:
    """The class and key GCS reports for a finished object must be the ones asked for,
    as its size and crc32c must be ours: an archive in another class costs another bill,
    one under another key fails a compliance audit."""
    if storage_class and info.storage_class != storage_class:
        raise IntegrityError(
            f"{where} was created in storage class {info.storage_class or '(none reported)'}, not {storage_class} "
            "as asked: check the bucket (an Autoclass bucket chooses classes itself)"
        )
    if kms_key and not same_key(info.kms_key_name, kms_key):
        raise IntegrityError(
            f"{where} is encrypted with {info.kms_key_name or 'a Google-managed key'}, not the Cloud KMS key "
            f"{kms_key} asked for"
        )


class GcsBucket:
    """One bucket's objects, every call through `translate` under one retry policy.

    ``error`` is the class a permanent failure raises (UploadError for the write side,
    DestinationError for the read side); ``sleep`` the backoff (the sink cuts it short
    when it is stopped)."""

    def __init__(
        self, bucket: str, client: Client, *, retry: RetryPolicy = RETRY,
        error: type[DestinationError] = UploadError, sleep: Callable[[float], None] = pause,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT, kms_key: str | None = None,
    ) -> None:
        self.name = bucket
        self.kms_key = kms_key  # every object this creates is encrypted with it (CMEK)
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
                raise translate(exc, doing, where, self.error, missing, self.kms_key) from exc

        try:
            return self.retry.call(once, Transient, sleep=self._sleep)
        except Transient as exc:
            raise exhausted(exc, self.retry.attempts, self.error) from None

    def lacking(self, permissions: Sequence[str], missing: str) -> list[str]:
        """Which of ``permissions`` these credentials do not have on the bucket (GCS's
        testIamPermissions); ``missing`` is the error's line when there is no bucket."""
        granted = self.call("checking permissions on", "", lambda: self.bucket.test_iam_permissions(
            list(permissions), timeout=self._timeout, retry=None), missing=missing)
        return [p for p in permissions if p not in granted]

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

    def _new(self, name: str, storage_class: str | None) -> Any:
        """A blob to create: in ``storage_class`` (None: the bucket's default), under the key."""
        blob = self.bucket.blob(name)
        if storage_class:
            blob.storage_class = storage_class
        if self.kms_key:
            blob.kms_key_name = self.kms_key
        return blob

    def upload(
        self, name: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None,
        storage_class: str | None = None,
    ) -> ObjectInfo:
        """A small object, written whole, checked by its crc32c."""
        blob = self._new(name, storage_class)
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
        return _info(blob)

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

    def compose(
        self, sources: Sequence[str], dest: str, content_type: str, storage_class: str | None = None
    ) -> ObjectInfo:
        """``dest`` as the concatenation of at most 32 ``sources`` (one request)."""
        blob = self._new(dest, storage_class)
        blob.content_type = content_type
        self.call(
            "composing", dest,
            lambda: blob.compose([self.bucket.blob(s) for s in sources], timeout=self._timeout, retry=None),
        )
        return _info(blob)

    def rewrite_class(self, name: str, storage_class: str, generation: int | None) -> ObjectInfo:
        """The object (of ``generation``) rewritten onto itself in ``storage_class`` (under the
        key): server-side, no byte through this machine. GCS may answer a large object in
        several calls, each returning a token to continue with; each call is retried on its own."""
        source = self.bucket.blob(name, generation=generation)
        dest = self._new(name, storage_class)
        def step(token: str | None) -> Callable[[], tuple[str | None, int, int]]:
            return lambda: dest.rewrite(source, token=token, if_generation_match=generation, timeout=self._timeout,
                                        retry=None)

        token: str | None = None
        while True:
            token, _, _ = self.call("changing the storage class of", name, step(token))
            if token is None:
                return _info(dest)

    def hold_and_retain(
        self, name: str, generation: int | None, *, retain_until: str | None, mode: str,
        event_based_hold: bool, temporary_hold: bool,
    ) -> ObjectInfo:
        """Object retention (until ``retain_until``, RFC 3339; ``mode`` Unlocked or Locked)
        and holds on a finished object: one PATCH, of that generation only."""
        blob = self.bucket.blob(name)
        if retain_until:
            blob.retention.mode = mode
            blob.retention.retain_until_time = datetime.datetime.fromisoformat(retain_until)
        if event_based_hold:
            blob.event_based_hold = True
        if temporary_hold:
            blob.temporary_hold = True
        self.call(
            "setting retention and holds on", name,
            lambda: blob.patch(if_generation_match=generation, timeout=self._timeout, retry=None),
        )
        return _info(blob)

    def create_session(
        self, name: str, content_type: str, metadata: dict[str, str], missing: str | None = None,
        storage_class: str | None = None,
    ) -> str:
        """A new resumable upload session's URI (a bearer credential: see `gcs.upload`)."""
        blob = self._new(name, storage_class)
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
