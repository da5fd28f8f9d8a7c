"""A fast loopback server speaking enough of GCS's JSON API to benchmark uploads.

gcp-storage-emulator rewrites the whole object on every chunk, so it cannot be
benchmarked against. This server keeps no object data from resumable uploads: it
reads each body in large pieces, computes its crc32c (so a client's integrity check
is real) and discards it. What it speaks, as GCS does:

- ``POST /upload/storage/v1/b/{bucket}/o?uploadType=resumable`` → 200 + ``Location``
- ``PUT <session>`` with ``Content-Range: bytes a-b/*`` → 308 + ``Range: bytes=0-N``;
  ``bytes a-b/TOTAL`` or ``bytes */TOTAL`` → 200 + the object resource (with its
  crc32c); ``bytes */*`` → the status (308, or 200 once committed); a chunk that does
  not start at the server's offset → 400; an ``X-Goog-Hash: crc32c=`` on the last
  request that does not match → 400, like GCS
- ``POST ...?uploadType=multipart`` and ``uploadType=media``: simple uploads (small
  objects are kept, so they can be read back)
- ``GET``/``PATCH``/``DELETE /storage/v1/b/{bucket}/o/{object}``, with GCS's
  preconditions (``ifGenerationMatch``, ``ifMetagenerationMatch`` and their ``NotMatch``
  forms: 412, or 304 for a GET), also on uploads and compose
- ``GET /storage/v1/b/{bucket}/o`` with ``prefix``, ``delimiter``, ``maxResults`` and
  ``pageToken``
- ``POST /storage/v1/b/{bucket}/o/{object}/compose``: the object as the concatenation of
  its sources, as GCS does it: 1 to 32 sources per request (else 400), at most 1,024
  components in all (a composite counts its sources' components), sources named by
  generation must have it (else 404), ``deleteSourceObjects``; the result's size is the
  sum and its crc32c is combined from the sources' (`sruns_stream.storage.crc`), with a
  ``componentCount`` and no MD5, as GCS reports a composite. Since resumable bodies are
  discarded, nothing but that metadata is composed (and the bytes, when every source
  was a small object kept whole)
- ``GET /storage/v1/b/{bucket}``: every bucket exists, STANDARD, no retention policy,
  unless ``set_bucket`` gave it other settings (``retentionPolicy``,
  ``defaultEventBasedHold``, ``storageClass``)

Per-connection upload cap (``cap_bytes_per_s``, ``--cap MBPS``): every request body is
read at most that fast on each connection (a token bucket per connection that sleeps,
so it costs no CPU), a scaled-down stand-in for GCS's ceiling of about 200 MiB/s per
upload stream. Connections are served in parallel, each on its own thread, so N
streams get N times the cap.

Point a client at it with ``STORAGE_EMULATOR_HOST=<url>``.

    with LoopbackGcsServer() as server:          # in a program
        ...  server.url, server.bytes_received

    python -m loopback.gcs --port 8123 [--cap 20]  # standalone
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import itertools
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import google_crc32c

from sruns_stream.storage.crc import crc32c_combine

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; only the type checker needs it

__all__ = ["COMPONENT_LIMIT", "COMPOSE_LIMIT", "LoopbackGcsServer", "main"]

# Bodies are read in pieces this big: few system calls, and about what a socket
# delivers per read on loopback anyway.
_READ = 1 << 20
# Simple uploads up to this size are kept so that they can be downloaded again.
_KEEP = 8 << 20
# GCS's compose limits: sources per request, components in one composite object.
COMPOSE_LIMIT = 32
COMPONENT_LIMIT = 1024
# A listing page holds at most this many objects (GCS's maximum and default).
_PAGE = 1000
_CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)$")
_OBJECT = re.compile(r"^/(?:storage/v1/)?b/([^/]+)/o/(.+)$")
_BUCKET = re.compile(r"^/(?:storage/v1/)?b/([^/]+)$")
_LIST = re.compile(r"^/(?:storage/v1/)?b/([^/]+)/o$")
# Object names are percent-encoded whole (a "/" in a name is %2F), so a path segment
# after the name is an action.
_COMPOSE = re.compile(r"^/(?:storage/v1/)?b/([^/]+)/o/([^/]+)/compose$")
# gcloud (apitools) posts to /resumable/upload/...: the same endpoint.
_UPLOAD = re.compile(r"^(?:/resumable)?/upload/storage/v1/b/([^/]+)/o$")
_DOWNLOAD = re.compile(r"^/download/storage/v1/b/([^/]+)/o/(.+)$")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


def _b64_crc32c(value: int) -> str:
    return base64.b64encode(value.to_bytes(4, "big")).decode("ascii")


def _crc_of(resource: dict[str, Any]) -> int:
    return int.from_bytes(base64.b64decode(resource["crc32c"]), "big")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_preconditions(query: dict[str, str], obj: dict[str, Any] | None, read: bool = False) -> None:
    """GCS's generation and metageneration preconditions on ``obj`` (None: no such object).

    A failed ``…Match`` is 412; a failed ``…NotMatch`` is 304 on a read, 412 otherwise.
    ``ifGenerationMatch=0`` means "only if there is no live object".
    """
    generation = int(obj["generation"]) if obj is not None else 0
    metageneration = int(obj["metageneration"]) if obj is not None else None
    if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != generation:
        raise _Reply(412, f"Precondition Failed: ifGenerationMatch={query['ifGenerationMatch']}, "
                          f"the live generation is {generation}")
    if "ifGenerationNotMatch" in query and int(query["ifGenerationNotMatch"]) == generation:
        raise _Reply(304 if read else 412, "Precondition Failed: ifGenerationNotMatch")
    if "ifMetagenerationMatch" in query:
        if metageneration is None:
            raise _Reply(404, "No such object")
        if int(query["ifMetagenerationMatch"]) != metageneration:
            raise _Reply(412, f"Precondition Failed: ifMetagenerationMatch={query['ifMetagenerationMatch']}, "
                              f"the live metageneration is {metageneration}")
    if "ifMetagenerationNotMatch" in query and metageneration is not None \
            and int(query["ifMetagenerationNotMatch"]) == metageneration:
        raise _Reply(304 if read else 412, "Precondition Failed: ifMetagenerationNotMatch")


@dataclass
class _Upload:
    """One resumable session."""

    bucket: str
    name: str
    meta: dict[str, Any]
    preconditions: dict[str, str] = field(default_factory=dict)  # checked when it commits
    received: int = 0
    crc: int = 0
    md5: Any = None  # hashlib object, when the server computes MD5s
    done: dict[str, Any] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.uploads: dict[str, _Upload] = {}
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.data: dict[tuple[str, str], bytes] = {}
        self.files: dict[tuple[str, str], Path] = {}  # objects served from a local file (add_file)
        self.buckets: dict[str, dict[str, Any]] = {}  # settings other than the defaults
        self.bytes_received = 0
        self.bytes_sent = 0  # download bodies
        self.composes = 0
        self.requests = 0
        self._ids = itertools.count(1)
        self._generation = itertools.count(time.time_ns())

    def new_id(self) -> str:
        return f"loopback{next(self._ids):08d}"

    def bucket(self, name: str) -> dict[str, Any]:
        with self.lock:
            settings = dict(self.buckets.get(name, {}))
        return {"kind": "storage#bucket", "id": name, "name": name, "location": "US",
                "storageClass": "STANDARD", "metageneration": "1", **settings}

    def commit(self, bucket: str, name: str, meta: dict[str, Any], size: int, crc: int,
               data: bytes | None = None, md5: bytes | None = None, components: int | None = None,
               preconditions: dict[str, str] | None = None) -> dict[str, Any]:
        """Store the object (replacing the live one), after ``preconditions`` on it."""
        now = _now()
        generation = str(next(self._generation))
        resource = {
            "kind": "storage#object",
            "id": f"{bucket}/{name}/{generation}",
            "name": name,
            "bucket": bucket,
            "generation": generation,
            "metageneration": "1",
            "contentType": meta.get("contentType") or "application/octet-stream",
            "size": str(size),
            "crc32c": _b64_crc32c(crc),
            "etag": f"CL{generation}=",
            "storageClass": self.bucket(bucket)["storageClass"],
            "timeCreated": now,
            "updated": now,
            "selfLink": f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}",
            "mediaLink": f"/download/storage/v1/b/{bucket}/o/{quote(name, safe='')}?alt=media",
        }
        if md5 is not None:
            resource["md5Hash"] = base64.b64encode(md5).decode("ascii")
        if components is not None:
            resource["componentCount"] = components
        if meta.get("metadata"):
            resource["metadata"] = {k: v for k, v in meta["metadata"].items() if v is not None}
        for key in ("cacheControl", "contentDisposition", "contentEncoding", "contentLanguage"):
            if meta.get(key):
                resource[key] = meta[key]
        with self.lock:
            _check_preconditions(preconditions or {}, self.objects.get((bucket, name)))
            self.objects[(bucket, name)] = resource
            if data is not None and len(data) <= _KEEP:
                self.data[(bucket, name)] = data
            else:
                self.data.pop((bucket, name), None)
            self.files.pop((bucket, name), None)  # a new generation: not the file any more
        return resource


class _Reply(Exception):
    """Answer now with this status and JSON error message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse one connection per session
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Small answers must not wait for a delayed ACK (40 ms per chunk otherwise).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The upload cap: a token bucket per connection (this handler serves one
        # connection). _clock is when the bytes read so far may all have arrived.
        cap = self.server.cap_bytes_per_s
        self._clock = 0.0
        self._piece = _READ if not cap else int(min(_READ, max(16 << 10, cap / 20)))
        self._burst = self._piece / cap if cap else 0.0  # seconds' worth of bytes saved up, at most

    def _throttle(self, n: int) -> None:
        """Sleep until ``n`` more bytes fit under the connection's cap."""
        cap = self.server.cap_bytes_per_s
        if not cap:
            return
        now = self.server.clock()
        # An idle connection saves up at most one piece: no burst beyond that.
        self._clock = max(self._clock, now - self._burst) + n / cap
        if self._clock > now:
            self.server.sleep(self._clock - now)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch()

    do_PUT = do_POST = do_PATCH = do_DELETE = do_GET

    # -- plumbing --------------------------------------------------------------------

    def _dispatch(self) -> None:
        state = self.server.state
        with state.lock:
            state.requests += 1
        self._consumed = False
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            self._route(url.path, query)
        except _Reply as reply:
            self._drain()
            # After an error the body may be half read: start the next request afresh.
            self.close_connection = True
            self._send_json(reply.status, {"error": {"code": reply.status, "message": str(reply)}},
                            {"Connection": "close"})

    def _route(self, path: str, query: dict[str, str]) -> None:
        method = self.command
        if path == "/" and method == "GET":
            return self._send(200, b"OK", "text/plain")
        if m := _UPLOAD.match(path):
            bucket = unquote(m.group(1))
            if "upload_id" in query and method in ("PUT", "POST"):
                return self._resumable_put(query["upload_id"])
            kind = query.get("uploadType")
            if method == "POST" and kind == "resumable":
                return self._initiate(bucket, query)
            if method == "POST" and kind == "multipart":
                return self._multipart(bucket, query)
            if method == "POST" and kind == "media":
                return self._media(bucket, query)
        if (m := _DOWNLOAD.match(path)) and method == "GET":
            return self._download(unquote(m.group(1)), unquote(m.group(2)), query)
        if (m := _COMPOSE.match(path)) and method == "POST":
            return self._compose(unquote(m.group(1)), unquote(m.group(2)), query)
        if m := _OBJECT.match(path):
            bucket, name = unquote(m.group(1)), unquote(m.group(2))
            if method == "GET" and query.get("alt") == "media":
                return self._download(bucket, name, query)
            if method == "GET":
                self._drain()
                obj = self._object(bucket, name)
                _check_preconditions(query, obj, read=True)
                return self._send_json(200, obj)
            if method == "PATCH":
                return self._patch(bucket, name, query)
            if method == "DELETE":
                self._drain()
                with self.server.state.lock:
                    live = self.server.state.objects.get((bucket, name))
                    if live is None:
                        raise _Reply(404, f"No such object: {bucket}/{name}")
                    _check_preconditions(query, live)
                    del self.server.state.objects[(bucket, name)]
                    self.server.state.data.pop((bucket, name), None)
                    self.server.state.files.pop((bucket, name), None)
                return self._send(204, b"", "application/json")
        if (m := _LIST.match(path)) and method == "GET":
            return self._list(unquote(m.group(1)), query)
        if (m := _BUCKET.match(path)) and method == "GET":
            self._drain()
            return self._send_json(200, self.server.state.bucket(unquote(m.group(1))))
        raise _Reply(501, f"the loopback server does not implement {method} {path}")

    def _body_length(self) -> int | None:
        """Content-Length, or None for a chunked body."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return None
        return int(self.headers.get("Content-Length") or 0)

    def _pieces(self) -> Iterator[bytes]:
        """The request body in large pieces (once: a second call yields nothing).

        bytes, not views of a reused buffer: google_crc32c accepts nothing else, and
        ``read(n)`` of a large n fills a new bytes object straight from the socket.
        """
        if self._consumed:
            return
        self._consumed = True
        length = self._body_length()
        if length is not None:
            remaining = length
            while remaining:
                want = min(remaining, self._piece)
                self._throttle(want)
                piece = self.rfile.read(want)
                if not piece:
                    raise ConnectionError("client closed the connection mid-body")
                remaining -= len(piece)
                yield piece
            return
        while True:  # chunked transfer encoding
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return
            while size:
                want = min(size, self._piece)
                self._throttle(want)
                piece = self.rfile.read(want)
                if not piece:
                    raise ConnectionError("client closed the connection mid-body")
                size -= len(piece)
                yield piece
            self.rfile.readline()

    def _read_body(self) -> bytes:
        return b"".join(self._pieces())

    def _drain(self) -> None:
        # Whatever is left of the body must be consumed to keep the connection usable.
        for _ in self._pieces():
            pass

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}"]
        if status == 304:
            body = b""  # a 304 has no body
        for key, value in {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}.items():
            lines.append(f"{key}: {value}")
        # One write: headers and body in the same segment.
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        self.log_request(status, len(body))

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json; charset=UTF-8", headers)

    def _base_url(self) -> str:
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        return f"http://{host}"

    # -- objects ------------------------------------------------------------------------

    def _object(self, bucket: str, name: str) -> dict[str, Any]:
        """A copy of the live object's resource (a concurrent PATCH never shows half done)."""
        with self.server.state.lock:
            obj = self.server.state.objects.get((bucket, name))
            if obj is None:
                raise _Reply(404, f"No such object: {bucket}/{name}")
            return dict(obj)

    def _list(self, bucket: str, query: dict[str, str]) -> None:
        """Objects by name from ``pageToken`` on; with ``delimiter``, what lies deeper is
        one entry of ``prefixes``. The page token is the last name returned."""
        self._drain()
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        after = query.get("pageToken", "")
        limit = min(_PAGE, int(query.get("maxResults") or _PAGE))
        with self.server.state.lock:
            names = sorted(name for b, name in self.server.state.objects if b == bucket)
            items: list[dict[str, Any]] = []
            prefixes: list[str] = []
            last = ""
            more = False
            for name in names:
                if not name.startswith(prefix) or name <= after:
                    continue
                if delimiter and delimiter in name[len(prefix):]:
                    cut = name[: name.index(delimiter, len(prefix)) + len(delimiter)]
                    if (prefixes and prefixes[-1] == cut) or cut <= after:
                        continue
                    entry = cut
                else:
                    entry = name
                if len(items) + len(prefixes) == limit:
                    more = True
                    break
                if entry == name:
                    items.append(dict(self.server.state.objects[(bucket, name)]))
                else:
                    prefixes.append(entry)
                last = entry
        page: dict[str, Any] = {"kind": "storage#objects", "items": items}
        if prefixes:
            page["prefixes"] = prefixes
        if more:
            page["nextPageToken"] = last
        self._send_json(200, page)

    def _compose(self, bucket: str, dest: str, query: dict[str, str]) -> None:
        request = json.loads(self._read_body() or b"{}")
        sources = request.get("sourceObjects") or []
        if not sources:
            raise _Reply(400, "At least one source object must be specified.")
        if len(sources) > COMPOSE_LIMIT:
            raise _Reply(400, f"The number of source components provided ({len(sources)}) exceeds the maximum "
                              f"({COMPOSE_LIMIT})")
        state = self.server.state
        size = crc = components = 0
        pieces: list[bytes] | None = []
        with state.lock:
            found = []
            for source in sources:
                name = source.get("name")
                obj = state.objects.get((bucket, name))
                wanted = source.get("generation")
                if obj is None or (wanted is not None and str(wanted) != obj["generation"]):
                    raise _Reply(404, f"Object {bucket}/{name} (generation: {wanted or 'live'}) not found")
                if_match = (source.get("objectPreconditions") or {}).get("ifGenerationMatch")
                if if_match is not None and str(if_match) != obj["generation"]:
                    raise _Reply(412, f"Precondition Failed: source {name} is not generation {if_match}")
                found.append(obj)
                data = state.data.get((bucket, name))
                if pieces is not None and data is not None:
                    pieces.append(data)
                else:
                    pieces = None
        for obj in found:
            n = int(obj["size"])
            crc = crc32c_combine(crc, _crc_of(obj), n)
            size += n
            components += int(obj.get("componentCount", 1))
        if components > COMPONENT_LIMIT:
            raise _Reply(400, f"The number of components in the composed object ({components}) would exceed the "
                              f"maximum ({COMPONENT_LIMIT})")
        meta = dict(request.get("destination") or {})
        data = b"".join(pieces) if pieces is not None else None
        resource = state.commit(bucket, dest, meta, size, crc, data, components=components, preconditions=query)
        with state.lock:
            state.composes += 1
            if request.get("deleteSourceObjects"):
                for obj in found:
                    if obj["name"] != dest:
                        state.objects.pop((bucket, obj["name"]), None)
                        state.data.pop((bucket, obj["name"]), None)
        self._send_json(200, resource)

    def _patch(self, bucket: str, name: str, query: dict[str, str]) -> None:
        changes = json.loads(self._read_body() or b"{}")
        with self.server.state.lock:
            obj = self.server.state.objects.get((bucket, name))
            if obj is None:
                raise _Reply(404, f"No such object: {bucket}/{name}")
            _check_preconditions(query, obj)
            # A new resource: a reader holding the old one (GET, a listing) keeps it whole.
            obj = dict(obj)
            self.server.state.objects[(bucket, name)] = obj
            if "metadata" in changes:
                merged = dict(obj.get("metadata") or {})
                for key, value in (changes["metadata"] or {}).items():
                    if value is None:
                        merged.pop(key, None)
                    else:
                        merged[key] = value
                obj["metadata"] = merged
            for key in ("contentType", "cacheControl", "contentDisposition", "contentEncoding"):
                if key in changes:
                    obj[key] = changes[key]
            obj["metageneration"] = str(int(obj["metageneration"]) + 1)
            obj["updated"] = _now()
            answer = dict(obj)
        self._send_json(200, answer)

    def _download(self, bucket: str, name: str, query: dict[str, str]) -> None:
        self._drain()
        with self.server.state.lock:
            data = self.server.state.data.get((bucket, name))
            path = self.server.state.files.get((bucket, name))
            obj = self.server.state.objects.get((bucket, name))
        if obj is None:
            raise _Reply(404, f"No such object: {bucket}/{name}")
        _check_preconditions(query, obj, read=True)
        if data is None and path is None:
            raise _Reply(501, f"the loopback server discarded the bytes of {bucket}/{name}")
        size = int(obj["size"])
        first, last, status = 0, size - 1, 200
        spec = (self.headers.get("Range") or "").strip()
        if spec:
            m = _RANGE.match(spec)
            if not m:
                raise _Reply(400, f"unsupported Range {spec!r}")
            first = int(m.group(1))
            last = min(size - 1, int(m.group(2))) if m.group(2) else size - 1
            if first >= size or first > last:
                raise _Reply(416, f"Range {spec!r} is not satisfiable for {size} bytes")
            status = 206
        headers = {"X-Goog-Hash": f"crc32c={obj['crc32c']}", "X-Goog-Generation": obj["generation"],
                   "Accept-Ranges": "bytes"}
        if status == 206:
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        if data is not None:
            body = data[first : last + 1]
            self._send(status, body, obj["contentType"], headers)
            self._count_sent(len(body))
            return
        assert path is not None
        self._send_file(status, path, first, last + 1 - first, obj["contentType"], headers)

    def _send_file(self, status: int, path: Path, start: int, length: int, content_type: str,
                   headers: dict[str, str]) -> None:
        """Stream ``length`` bytes of ``path`` from ``start``, counting what reaches the socket:
        a client that stops reading (it found its member) has received only that much."""
        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}"]
        for key, value in {"Content-Type": content_type, "Content-Length": str(length), **headers}.items():
            lines.append(f"{key}: {value}")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        with open(path, "rb") as f:
            f.seek(start)
            left = length
            try:
                while left:
                    piece = f.read(min(left, _READ))
                    if not piece:
                        raise ConnectionError(f"{path} is shorter than its object's size")
                    self.wfile.write(piece)
                    self._count_sent(len(piece))
                    left -= len(piece)
            except (ConnectionError, OSError):
                self.close_connection = True  # the client hung up: stop sending
        self.log_request(status, length)

    def _count_sent(self, n: int) -> None:
        with self.server.state.lock:
            self.server.state.bytes_sent += n

    # -- uploads ----------------------------------------------------------------------------

    def _initiate(self, bucket: str, query: dict[str, str]) -> None:
        body = self._read_body()
        meta: dict[str, Any] = json.loads(body) if body.strip() else {}
        name = query.get("name") or meta.get("name")
        if not name:
            raise _Reply(400, "the object has no name")
        if "X-Upload-Content-Type" in self.headers and "contentType" not in meta:
            meta["contentType"] = self.headers["X-Upload-Content-Type"]
        state = self.server.state
        upload_id = state.new_id()
        preconditions = {k: v for k, v in query.items() if k.startswith(("ifGeneration", "ifMetageneration"))}
        with state.lock:
            state.uploads[upload_id] = _Upload(bucket, name, meta, preconditions,
                                               md5=hashlib.md5() if self.server.md5 else None)
        location = (f"{self._base_url()}/upload/storage/v1/b/{quote(bucket, safe='')}/o"
                    f"?uploadType=resumable&upload_id={upload_id}")
        self._send(200, b"", "application/json", {"Location": location, "X-GUploader-UploadID": upload_id})

    def _resumable_put(self, upload_id: str) -> None:
        state = self.server.state
        with state.lock:
            upload = state.uploads.get(upload_id)
        if upload is None:
            raise _Reply(404, "No such upload session")
        spec = (self.headers.get("Content-Range") or "bytes */*").strip()
        m = _CONTENT_RANGE.match(spec)
        if not m:
            raise _Reply(400, f"bad Content-Range {spec!r}")
        first = None if m.group(1) is None else int(m.group(1))
        last = None if m.group(2) is None else int(m.group(2))
        total = None if m.group(3) == "*" else int(m.group(3))
        with upload.lock:  # one request at a time per session, as GCS serialises them
            if upload.done is not None:
                self._drain()
                return self._send_json(200, upload.done)
            if first is not None and last is not None:
                if first != upload.received:
                    raise _Reply(400, f"the chunk starts at {first}, but the server holds {upload.received} bytes")
                got = 0
                crc = upload.crc
                md5 = upload.md5.copy() if upload.md5 is not None else None
                for piece in self._pieces():
                    crc = google_crc32c.extend(crc, piece)
                    if md5 is not None:
                        md5.update(piece)
                    got += len(piece)
                if got != last - first + 1:
                    raise _Reply(400, f"Content-Range names {last - first + 1} bytes, the body has {got}")
                upload.crc, upload.md5 = crc, md5
                upload.received += got
                with state.lock:
                    state.bytes_received += got
            else:
                self._drain()
            if total is not None and upload.received == total:
                sent = self.headers.get("X-Goog-Hash") or ""
                for part in sent.split(","):
                    key, _, value = part.strip().partition("=")
                    if key == "crc32c" and value != _b64_crc32c(upload.crc):
                        raise _Reply(400, f'Provided CRC32C "{value}" doesn\'t match calculated CRC32C '
                                          f'"{_b64_crc32c(upload.crc)}".')
                upload.done = state.commit(upload.bucket, upload.name, upload.meta, upload.received, upload.crc,
                                           md5=upload.md5.digest() if upload.md5 is not None else None,
                                           preconditions=upload.preconditions)
                return self._send_json(200, upload.done)
            if total is not None and upload.received > total:
                raise _Reply(400, f"the server holds {upload.received} bytes, more than the total {total}")
            headers = {"Range": f"bytes=0-{upload.received - 1}"} if upload.received else {}
            self._send(308, b"", "text/plain", headers)

    def _multipart(self, bucket: str, query: dict[str, str]) -> None:
        content_type = self.headers.get("Content-Type") or ""
        m = re.search(r'boundary="?([^";]+)"?', content_type)
        if not m:
            raise _Reply(400, "multipart upload without a boundary")
        body = self._read_body()
        delimiter = b"--" + m.group(1).encode()
        parts = [p for p in body.split(delimiter)[1:] if not p.startswith(b"--")]
        if len(parts) != 2:
            raise _Reply(400, f"a multipart upload has 2 parts, not {len(parts)}")
        meta_part, media_part = (p.split(b"\r\n\r\n", 1) for p in parts)
        meta: dict[str, Any] = json.loads(meta_part[1].strip() or b"{}")
        data = media_part[1]
        data = data[:-2] if data.endswith(b"\r\n") else data
        name = query.get("name") or meta.get("name")
        if not name:
            raise _Reply(400, "the object has no name")
        for line in media_part[0].decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-type" and "contentType" not in meta:
                meta["contentType"] = value.strip()
        crc = google_crc32c.value(data)
        if meta.get("crc32c") and meta["crc32c"] != _b64_crc32c(crc):
            raise _Reply(
                400, f'Provided CRC32C "{meta["crc32c"]}" doesn\'t match calculated CRC32C "{_b64_crc32c(crc)}".'
            )
        self._send_json(200, self.server.state.commit(bucket, name, meta, len(data), crc, data,
                                                      hashlib.md5(data).digest(), preconditions=query))

    def _media(self, bucket: str, query: dict[str, str]) -> None:
        name = query.get("name")
        data = self._read_body()
        if not name:
            raise _Reply(400, "the object has no name")
        meta = {"contentType": self.headers.get("Content-Type") or "application/octet-stream"}
        self._send_json(200, self.server.state.commit(bucket, name, meta, len(data), google_crc32c.value(data), data,
                                                      hashlib.md5(data).digest(), preconditions=query))


class _Server(ThreadingHTTPServer):
    # One thread per connection, so connections are served in parallel; daemon threads
    # do not hold up shutdown behind a client that keeps its connection open.
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog: many streams connect at once

    def __init__(
        self, address: tuple[str, int], verbose: bool, md5: bool, cap_bytes_per_s: float | None,
        clock: Callable[[], float], sleep: Callable[[float], None],
    ) -> None:
        super().__init__(address, _Handler)
        self.state = _State()
        self.verbose = verbose
        self.md5 = md5
        self.cap_bytes_per_s = cap_bytes_per_s or None
        self.clock = clock  # what the cap paces by: the tests give a virtual clock
        self.sleep = sleep

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that dies mid-request (a benchmark kill, a resume test) is not news.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class LoopbackGcsServer:
    """The server in a background thread: ``start()``/``stop()`` or a ``with`` block."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, verbose: bool = False, md5: bool = True,
                 cap_bytes_per_s: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        # md5: GCS reports an MD5 for every object uploaded in one piece or resumably, and
        # gcloud insists on it for a stream; it costs this server about a core-second per
        # 600 MB, which the benchmark states.
        # cap_bytes_per_s: each connection's request bodies are read at most this fast
        # (None or 0: as fast as they come).
        if cap_bytes_per_s is not None and cap_bytes_per_s < 0:
            raise ValueError(f"cap_bytes_per_s must be positive, not {cap_bytes_per_s}")
        self._server = _Server((host, port), verbose, md5, cap_bytes_per_s, clock, sleep)
        self._thread: threading.Thread | None = None
        bound_host, bound_port = self._server.server_address[:2]
        self.url = f"http://{bound_host!s}:{bound_port}"

    @property
    def bytes_received(self) -> int:
        """Bytes of resumable-upload chunk bodies received so far."""
        with self._server.state.lock:
            return self._server.state.bytes_received

    @property
    def bytes_sent(self) -> int:
        """Bytes of download bodies written to clients so far (what crossed the wire; the
        socket's buffers aside, which a client that hangs up early never reads)."""
        with self._server.state.lock:
            return self._server.state.bytes_sent

    @property
    def requests(self) -> int:
        with self._server.state.lock:
            return self._server.state.requests

    @property
    def cap_bytes_per_s(self) -> float | None:
        return self._server.cap_bytes_per_s

    @property
    def composes(self) -> int:
        """Compose requests that succeeded so far."""
        with self._server.state.lock:
            return self._server.state.composes

    def get_object(self, bucket: str, name: str) -> dict[str, Any] | None:
        """A committed object's resource, as a client would read it back."""
        with self._server.state.lock:
            obj = self._server.state.objects.get((bucket, name))
            return dict(obj) if obj is not None else None

    def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
        """Names of the bucket's objects under ``prefix``, sorted."""
        with self._server.state.lock:
            return sorted(n for b, n in self._server.state.objects if b == bucket and n.startswith(prefix))

    def add_file(self, bucket: str, name: str, path: Path, content_type: str = "application/octet-stream",
                 metadata: dict[str, str] | None = None) -> dict[str, Any]:
        """Serve the local file ``path`` as the object ``bucket/name`` (read on each download,
        never held in memory), with its real size and crc32c."""
        crc = 0
        with open(path, "rb") as f:
            while piece := f.read(_READ * 8):
                crc = google_crc32c.extend(crc, piece)
        meta: dict[str, Any] = {"contentType": content_type, "metadata": metadata or {}}
        resource = self._server.state.commit(bucket, name, meta, path.stat().st_size, crc)
        with self._server.state.lock:
            self._server.state.files[(bucket, name)] = path
        return resource

    def set_bucket(self, bucket: str, **settings: Any) -> None:
        """Give ``bucket`` settings as its resource spells them, e.g.
        ``retentionPolicy={"retentionPeriod": "86400"}``, ``defaultEventBasedHold=True``,
        ``storageClass="NEARLINE"``."""
        with self._server.state.lock:
            self._server.state.buckets.setdefault(bucket, {}).update(settings)

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="gcs-loopback", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loopback.gcs", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (default)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    p.add_argument("--no-md5", action="store_true", help="compute only crc32c, not MD5, of resumable uploads")
    p.add_argument("--cap", type=float, metavar="MBPS",
                   help="read each connection's request bodies at most this many MB/s (10^6 bytes)")
    args = p.parse_args(argv)
    if args.cap is not None and args.cap <= 0:
        p.error("--cap must be positive")
    server = LoopbackGcsServer(args.host, args.port, args.verbose, md5=not args.no_md5,
                               cap_bytes_per_s=args.cap * 1e6 if args.cap else None)
    server.start()
    cap = f", {args.cap:g} MB/s per connection" if args.cap else ""
    print(f"loopback GCS server at {server.url}{cap}; use STORAGE_EMULATOR_HOST={server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        print(f"received {server.bytes_received} bytes of chunks in {server.requests} requests", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
