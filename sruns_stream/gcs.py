"""Google Cloud Storage access shared by both directions: the upload (`sinks.gcs`) and
the read-back (`readback`).

One home for what talking to GCS needs: the client (the emulator's when
``STORAGE_EMULATOR_HOST`` is set, else Google's default credentials), the timeouts,
which answers are worth another try, how library errors become ours, how a stored
crc32c is decoded, and the one retry policy (jittered exponential backoff, bounded,
every wait cut short by a stop request or the caller's own cancel event).
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import requests
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud.storage import Client  # type: ignore[import-untyped]  # the library ships no type information
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from .errors import DestinationError
from .stopping import STOP

__all__ = [
    "API_ERRORS",
    "DEFAULT_TIMEOUT",
    "RETRY",
    "TRANSIENT_ERRORS",
    "TRANSIENT_STATUS",
    "Client",
    "RetryPolicy",
    "b64_crc32c",
    "crc32c_from_b64",
    "is_transient",
    "make_client",
    "pause",
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
# How long a waiting thread sleeps between looks at the stop flag.
_SLICE = 0.1

T = TypeVar("T")


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


def pause(seconds: float, cancel: threading.Event | None = None) -> None:
    """Sleep, in short slices, until ``seconds`` pass or ``cancel`` is set; raise
    Interrupted as soon as a stop is requested. A backoff can be half a minute, and a
    signal must not wait that long (the handler only sets a flag)."""
    deadline = time.monotonic() + seconds
    while True:
        STOP.check()
        left = deadline - time.monotonic()
        if left <= 0 or (cancel is not None and cancel.is_set()):
            return
        if cancel is not None:
            cancel.wait(min(left, _SLICE))
        else:
            time.sleep(min(left, _SLICE))


@dataclass(frozen=True)
class RetryPolicy:
    """Full-jitter exponential backoff: each wait is random below 1, 2, 4 … 32 s. Nine
    attempts wait two minutes at most in all, about what a GCS front-end hiccup or a
    VM's network blip lasts; then the command fails and can be run again to resume."""

    attempts: int = 9
    multiplier: float = 1.0
    max_wait: float = 32.0

    def call(
        self,
        fn: Callable[[int], T],
        retry_on: type[BaseException] | tuple[type[BaseException], ...],
        sleep: Callable[[float], None] = pause,
    ) -> T:
        """``fn(attempt_number)``, retried on ``retry_on``; the last error is re-raised."""
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=self.multiplier, max=self.max_wait),
            retry=retry_if_exception_type(retry_on),
            sleep=sleep,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                return fn(attempt.retry_state.attempt_number)
        raise AssertionError("unreachable: tenacity re-raises the last error")


RETRY = RetryPolicy()


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
