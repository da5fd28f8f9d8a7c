"""GCS emulator fixtures: the real `gcp-storage-emulator`, in-process, on a free loopback port.

``gcs`` starts one emulator for the test (its storage is in memory, so every test
starts empty), points STORAGE_EMULATOR_HOST at it and stops it afterwards. Keep the
objects under ~64 MiB: the emulator rewrites the whole object on every chunk.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

BUCKET = "sruns-test"
PROJECT = "test"


@dataclass
class Emulator:
    """A running emulator: its URL, its bucket, and plain-HTTP helpers for assertions.

    The helpers use urllib rather than google-cloud-storage so that what a test checks
    does not go through the code under test.
    """

    url: str
    bucket: str
    server: Any

    def download(self, name: str, bucket: str | None = None) -> bytes:
        quoted = urllib.parse.quote(name, safe="")
        with urllib.request.urlopen(
            f"{self.url}/download/storage/v1/b/{bucket or self.bucket}/o/{quoted}?alt=media", timeout=60
        ) as resp:
            data: bytes = resp.read()
        return data

    def resource(self, name: str, bucket: str | None = None) -> dict[str, Any] | None:
        """The object's JSON resource, or None when there is no such object."""
        quoted = urllib.parse.quote(name, safe="")
        try:
            with urllib.request.urlopen(
                f"{self.url}/storage/v1/b/{bucket or self.bucket}/o/{quoted}", timeout=60
            ) as resp:
                obj: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        return obj

    def names(self) -> list[str]:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.bucket}/o", timeout=60) as resp:
            listing = json.loads(resp.read())
        return sorted(item["name"] for item in listing.get("items") or [])

    def forget_sessions(self) -> None:
        """Drop every object and upload session, keeping the buckets: as if GCS had
        expired the sessions."""
        self.server.wipe(keep_buckets=True)


@pytest.fixture
def gcs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    try:
        from gcp_storage_emulator.server import create_server
    except ImportError:  # pragma: no cover - the test extra installs it; CI must not skip
        pytest.fail("gcp-storage-emulator is not installed: pip install -e '.[test]'")
    # It logs every request at INFO and a warning per string response: noise in failures.
    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    logging.getLogger("api.object").setLevel(logging.ERROR)
    logging.getLogger("api.bucket").setLevel(logging.ERROR)
    # Port 0: the kernel picks a free port, with no window for another process to take it.
    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket=BUCKET)
    server.start()
    try:
        port = server._api._httpd.server_address[1]  # the emulator has no public accessor
        url = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
        yield Emulator(url=url, bucket=BUCKET, server=server)
    finally:
        server.stop()


# Fields gcp-storage-emulator drops and GCS keeps: the Cloud KMS key an object is created
# under, object retention and holds. Its rewrite also copies the source's resource whole,
# ignoring the destination's storageClass and key, and always finishes in one call.
_GCS_FIELDS = ("kmsKeyName", "retention", "eventBasedHold", "temporaryHold")


@dataclass
class RewriteLog:
    calls: int = 0  # rewrite requests answered (each token continues one)


@pytest.fixture
def gcs_fields(gcs: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[RewriteLog]:
    """`gcs`, with the emulator taught what GCS documents and it ignores: it keeps
    ``kmsKeyName`` (as sent: GCS would add ``/cryptoKeyVersions/N``), ``retention``,
    ``eventBasedHold`` and ``temporaryHold`` when an object is created or patched, and a
    rewrite applies the destination's ``storageClass`` and ``destinationKmsKeyName``, in
    two calls (the first answers a ``rewriteToken``, as GCS does for a large object that
    changes class). A test using it says so; what the client sent is read from a
    recording proxy (tests/faultproxy.py), never from here."""
    from gcp_storage_emulator import server as emulator_server
    from gcp_storage_emulator.handlers import objects

    monkeypatch.setattr(objects, "_WRITABLE_FIELDS", (*objects._WRITABLE_FIELDS, *_GCS_FIELDS))
    log = RewriteLog()
    original = objects.rewrite

    def rewrite(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> None:
        log.calls += 1
        if not request.query.get("rewriteToken"):
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response.json({"kind": "storage#rewriteResponse", "totalBytesRewritten": "0",
                           "objectSize": str(obj["size"]), "done": False, "rewriteToken": "sruns-test-token"})
            return
        original(request, response, storage, *args, **kwargs)
        bucket, name = request.params["dest_bucket_name"], request.params["dest_object_id"]
        obj = storage.get_file_obj(bucket, name)
        asked = request.data or {}
        if asked.get("storageClass"):
            obj["storageClass"] = asked["storageClass"]
        key = (request.query.get("destinationKmsKeyName") or [None])[0]
        if key:
            obj["kmsKeyName"] = key
        else:
            obj.pop("kmsKeyName", None)
        storage.patch_object(bucket, name, obj)
        size = str(obj["size"])
        response.json({"kind": "storage#rewriteResponse", "totalBytesRewritten": size, "objectSize": size,
                       "done": True, "resource": obj})

    original_insert = objects.insert

    def insert(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> None:
        # The library sends the key of an upload as a query parameter, not in the metadata.
        key = (request.query.get("kmsKeyName") or [None])[0]
        data = request.data
        if key and isinstance(data, dict):
            meta = data.get("meta")
            (meta if isinstance(meta, dict) else data)["kmsKeyName"] = key
        original_insert(request, response, storage, *args, **kwargs)

    for _, handlers in emulator_server.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler is original:
                monkeypatch.setitem(handlers, method, rewrite)
            elif handler is original_insert:
                monkeypatch.setitem(handlers, method, insert)
    yield log
