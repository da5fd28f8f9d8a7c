"""Google Cloud Storage access shared by both directions: the upload (`sinks.gcs`) and
the read-back (`readback`).

One home for what talking to GCS needs: the client (the emulator's when
``STORAGE_EMULATOR_HOST`` is set, else Google's default credentials), the timeouts,
which answers are worth another try, how library errors become ours, how a stored
crc32c is decoded. The retry policy all of them use is `retry`.
"""

from __future__ import annotations

import base64
import os

import requests
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud.storage import Client  # type: ignore[import-untyped]  # the library ships no type information

from ...errors import DestinationError

__all__ = [
    "API_ERRORS",
    "DEFAULT_TIMEOUT",
    "TRANSIENT_ERRORS",
    "TRANSIENT_STATUS",
    "Client",
    "b64_crc32c",
    "crc32c_from_b64",
    "is_transient",
    "make_client",
    "probe_object",
    "reason",
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
# Everything a google-cloud-storage call raises that is about GCS, not about us.
API_ERRORS: tuple[type[BaseException], ...] = (api_exceptions.GoogleAPICallError, *TRANSIENT_ERRORS)

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


def is_transient(exc: BaseException) -> bool:
    """Whether a library error is worth another try."""
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return (exc.code or 0) in TRANSIENT_STATUS
    return isinstance(exc, TRANSIENT_ERRORS)


def reason(exc: BaseException) -> str:
    """A library error as a short line (status and the server's own message)."""
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        message = " ".join(str(getattr(exc, "message", "") or exc).split())[:200]
        return f"HTTP {exc.code} {message}".strip()
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def b64_crc32c(value: int) -> str:
    return base64.b64encode(value.to_bytes(4, "big")).decode("ascii")


def crc32c_from_b64(text: str | None) -> int | None:
    """GCS's crc32c field (base64 of 4 big-endian bytes) as an int; None if absent."""
    if not text:
        return None
    raw = base64.b64decode(text)
    return int.from_bytes(raw, "big") if len(raw) == 4 else None




def probe_object(bucket: str, name: str, client: Client | None = None) -> tuple[int, int | None] | None:
    """(size, crc32c) of ``gs://bucket/name`` from its metadata (no download), or None
    when the object (or the bucket) does not exist."""
    own = client is None
    client = client or make_client()
    where = f"gs://{bucket}/{name}"
    try:
        blob = client.bucket(bucket).get_blob(name, timeout=DEFAULT_TIMEOUT)
    except api_exceptions.NotFound:
        return None
    except API_ERRORS as exc:
        raise DestinationError(f"cannot look at {where}: {reason(exc)}") from exc
    finally:
        if own:
            client.close()
    if blob is None:
        return None
    return int(blob.size or 0), crc32c_from_b64(blob.crc32c)
