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
