"""The loopback GCS server (loopback/gcs.py) speaks what a segmented upload
uses, the way GCS does: compose with its limits and combined crc32c, preconditions,
listings, bucket settings, and a per-connection upload cap that really limits.

Real parts only: the server runs on a loopback port, the client is google-cloud-storage
(through sruns-stream's own `Parts`), and the end-to-end test runs the CLI in a process.
The cap test asserts only a lower bound on time, with a wide margin.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import google_crc32c
import pytest
import requests
from google.api_core import exceptions as api_exceptions

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # loopback/ is not an installed package: import it from the checkout
    sys.path.insert(0, str(REPO))

# Imports after code, so noqa: E402 on each: they need the sys.path entry made just above.
from helpers import run_in_process  # noqa: E402

from loopback.gcs import LoopbackGcsServer  # noqa: E402
from sruns_stream.storage.gcs.client import crc32c_from_b64, make_client  # noqa: E402
from sruns_stream.storage.gcs.parts import Parts  # noqa: E402

BUCKET = "loop-bucket"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackGcsServer]:
    with LoopbackGcsServer(md5=False) as srv:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", srv.url)
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "loopback")
        yield srv


@pytest.fixture
def parts(server: LoopbackGcsServer) -> Iterator[Parts]:
    p = Parts(BUCKET)
    yield p
    p.close()


def _upload_many(parts: Parts, count: int) -> tuple[list[str], bytes]:
    names, blobs = [], []
    for i in range(count):
        data = bytes([i % 251]) * (1000 + 37 * i) + f"part {i}".encode()
        names.append(f"p/.parts/{i:03d}")
        blobs.append(data)
        info = parts.upload(names[-1], data, "application/octet-stream")
        assert (info.size, info.crc32c) == (len(data), google_crc32c.value(data))
    return names, b"".join(blobs)


def test_compose_combines_size_and_crc32c_nested_beyond_32(server: LoopbackGcsServer, parts: Parts) -> None:
    names, whole = _upload_many(parts, 40)
    # 40 sources: Parts composes two intermediates (32 + 8), then the result.
    got = parts.compose(names, "p/run.tar.gz", "application/gzip", "p/.parts/x-")
    assert (got.size, got.crc32c) == (len(whole), google_crc32c.value(whole))
    obj = server.get_object(BUCKET, "p/run.tar.gz")
    assert obj is not None
    assert obj["componentCount"] == 40 and "md5Hash" not in obj and obj["contentType"] == "application/gzip"
    assert server.composes == 3
    assert server.list_objects(BUCKET, "p/.parts/x-") == ["p/.parts/x-compose-0-0000", "p/.parts/x-compose-0-0001"]
    # Every source was small and kept: the composite's bytes are there too.
    blob = make_client().bucket(BUCKET).blob("p/run.tar.gz")
    assert blob.download_as_bytes(checksum="crc32c") == whole


def test_compose_refuses_33_sources_and_1025_components(server: LoopbackGcsServer, parts: Parts) -> None:
    names, data = _upload_many(parts, 1)
    bucket = make_client().bucket(BUCKET)
    one = bucket.blob(names[0])
    with pytest.raises(api_exceptions.BadRequest, match="exceeds the maximum"):
        bucket.blob("too-many").compose([one] * 33)
    c32 = bucket.blob("c32")
    c32.compose([one] * 32)
    assert c32.component_count == 32
    c1024 = bucket.blob("c1024")
    c1024.compose([c32] * 32)  # exactly GCS's limit
    assert c1024.component_count == 1024 and c1024.size == 1024 * len(data)
    with pytest.raises(api_exceptions.BadRequest, match="components"):
        bucket.blob("c1025").compose([c1024, one])
    with pytest.raises(api_exceptions.NotFound):
        bucket.blob("gone").compose([bucket.blob("no-such-object")])
    assert server.get_object(BUCKET, "c1025") is None and server.get_object(BUCKET, "too-many") is None


def test_preconditions_on_patch_delete_and_compose(server: LoopbackGcsServer, parts: Parts) -> None:
    first = parts.upload("obj", b"one", "text/plain")
    second = parts.upload("obj", b"two", "text/plain")  # a new generation replaces it
    assert first.generation != second.generation
    # Metadata only on the generation the caller means: the old one is refused.
    with pytest.raises(Exception, match="412|Precondition"):
        parts.patch_metadata("obj", {"k": "v"}, first.generation)
    info = parts.patch_metadata("obj", {"k": "v"}, second.generation)
    assert info.metadata == {"k": "v"} and info.generation == second.generation
    blob = make_client().bucket(BUCKET).get_blob("obj")
    assert blob.metageneration == 2
    with pytest.raises(api_exceptions.PreconditionFailed):
        blob.patch(if_metageneration_match=1)
    with pytest.raises(api_exceptions.PreconditionFailed):
        blob.delete(if_generation_match=first.generation)
    with pytest.raises(api_exceptions.PreconditionFailed):  # ifGenerationMatch=0: only if absent
        make_client().bucket(BUCKET).blob("obj").compose([blob], if_generation_match=0)
    blob.delete(if_generation_match=second.generation)
    assert parts.stat("obj") is None
    parts.delete(["obj"])  # already gone: not an error


def test_listing_with_prefix_delimiter_and_pages(server: LoopbackGcsServer, parts: Parts) -> None:
    for name in ("a/1", "a/2", "a/sub/3", "b/4"):
        parts.upload(name, b"x", "text/plain")
    assert parts.names("a/") == ["a/1", "a/2", "a/sub/3"]
    client = make_client()
    pages = client.list_blobs(BUCKET, prefix="a/", max_results=None, page_size=1)
    assert [b.name for b in pages] == ["a/1", "a/2", "a/sub/3"]
    shallow = client.list_blobs(BUCKET, prefix="a/", delimiter="/")
    assert [b.name for b in shallow] == ["a/1", "a/2"] and shallow.prefixes == {"a/sub/"}


def test_bucket_settings_are_what_parts_checks(server: LoopbackGcsServer, parts: Parts) -> None:
    assert parts.constraints().first is None
    server.set_bucket(BUCKET, retentionPolicy={"retentionPeriod": "86400"}, storageClass="NEARLINE")
    limits = parts.constraints()
    assert "retention" in (limits.undeletable or "") and "NEARLINE" in (limits.billed or "")
    server.set_bucket("held", defaultEventBasedHold=True)
    held = Parts("held")
    try:
        assert "event-based hold" in (held.constraints().undeletable or "")
    finally:
        held.close()


def test_file_objects_are_served_whole_and_by_range_and_counted(server: LoopbackGcsServer, tmp_path: Path) -> None:
    """add_file serves a local file with its size and crc32c; Range answers 206 with
    exactly those bytes; bytes_sent counts the bodies (the random-access benchmark's
    "bytes on the wire")."""
    data = bytes(range(256)) * 5000
    path = tmp_path / "archive.bin"
    path.write_bytes(data)
    obj = server.add_file(BUCKET, "r/run.tar.gz", path, "application/gzip")
    assert (int(obj["size"]), crc32c_from_b64(obj["crc32c"])) == (len(data), google_crc32c.value(data))
    url = f"{server.url}/download/storage/v1/b/{BUCKET}/o/r%2Frun.tar.gz?alt=media"
    with requests.Session() as http:
        whole = http.get(url, timeout=10)
        assert (whole.status_code, whole.content) == (200, data)
        part = http.get(url, headers={"Range": "bytes=1000-1999"}, timeout=10)
        assert (part.status_code, part.content) == (206, data[1000:2000])
        assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
        tail = http.get(url, headers={"Range": f"bytes={len(data) - 10}-"}, timeout=10)
        assert (tail.status_code, tail.content) == (206, data[-10:])
        beyond = http.get(url, headers={"Range": f"bytes={len(data)}-"}, timeout=10)
        assert beyond.status_code == 416
    assert server.bytes_sent == len(data) + 1000 + 10


class _VirtualClock:
    """Time that passes only when the server sleeps: what the cap asks for, counted
    exactly, however fast or loaded the machine is."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_cap_limits_one_connection() -> None:
    """3 MB through one connection capped at 4 MB/s: the server waits 0.75 s of its
    clock, less the one piece an idle connection may send at once."""
    size, cap = 3_000_000, 4_000_000
    virtual = _VirtualClock()
    with LoopbackGcsServer(md5=False, cap_bytes_per_s=cap, clock=virtual.clock, sleep=virtual.sleep) as server, \
            requests.Session() as http:
        start = http.post(f"{server.url}/upload/storage/v1/b/{BUCKET}/o?uploadType=resumable&name=capped",
                          json={}, timeout=10)
        assert start.status_code == 200
        data = bytes(size)
        done = http.put(start.headers["Location"], data=data,
                        headers={"Content-Range": f"bytes 0-{size - 1}/{size}"}, timeout=30)
        assert done.status_code == 200
        assert done.json()["size"] == str(size)
        assert crc32c_from_b64(done.json()["crc32c"]) == google_crc32c.value(data)
        assert server.bytes_received == size
    piece = max(16 << 10, cap / 20)  # what the server reads at a time under this cap
    assert size / cap - piece / cap <= virtual.now <= size / cap + 1e-6, (
        f"paced {virtual.now:.3f} s: the cap did not hold"
    )


def test_segmented_archive_end_to_end(server: LoopbackGcsServer, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`archive --streams 3` over the loopback: parts, compose, checks, clean-up."""
    run = make_run("novaseq", 6 << 20, seed=3)
    # Segments are at least 8 upload chunks long: 256 KiB chunks make this 6 MiB run three.
    proc = run_in_process("archive", str(run), "--dest", f"gs://{BUCKET}/pre", "--streams", "3", "--chunk-size", "256K",
                          "--journal", str(tmp_path / "j.db"), "--json",
                          env={"STORAGE_EMULATOR_HOST": server.url, "GOOGLE_CLOUD_PROJECT": "loopback"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["streams"] == 3
    obj = server.get_object(BUCKET, f"pre/{run.name}/{run.name}.tar.gz")
    assert obj is not None
    assert int(obj["size"]) == result["archive_bytes"] and f"{crc32c_from_b64(obj['crc32c']):08x}" == result["crc32c"]
    assert obj["componentCount"] >= 3 and obj["metadata"]["archive_crc32c"] == result["crc32c"]
    assert server.composes >= 1
    # The segments came through resumable uploads, each byte once; the trailer (the last
    # deflate block and gzip's CRC and length) is a small object of its own.
    assert 0 < result["archive_bytes"] - server.bytes_received <= 64
    assert server.list_objects(BUCKET, "pre/.sruns-parts/") == []
    assert server.get_object(BUCKET, f"pre/{run.name}/{run.name}.manifest.tsv") is not None
