"""A fault-injecting HTTP proxy on loopback, between the GCS client and the emulator.

This is a fake, used only for faults the real emulator cannot produce: a connection
reset in the middle of a chunk, 503/429 answers, a response lost after the server
stored the chunk, a response that never comes, a server that keeps only part of a
chunk, a flipped byte. Everything else passes through to the emulator unchanged
(the Host header too, so the session URIs the emulator hands out point back here).

It also logs every request it sees, with the bytes of body it actually received
from the client and answered to it: the tests use that to count what was sent again
after a crash, and what a ranged read downloaded.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; only the type checker needs it

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade", "content-length"}
# send_response() writes its own; the upstream's would come twice.
_OWN = {"server", "date"}

# What a fault does to the request it matches:
#   reset        read half the body, then reset the connection (nothing reaches the server)
#   status       read the body, answer ``status`` (nothing reaches the server)
#   lost         forward, let the server store it, then reset instead of answering
#   silent       forward, then never answer (the client's read timeout must fire)
#   partial      forward only the first half of the body (the server keeps part of it)
#   corrupt      flip one byte in the middle of the body, then forward
#   hold         read half the body and wait until released (a test kills the client meanwhile)
#   hold_stored  forward, then wait until released before answering (likewise)
#   slow         forward, then wait until released and answer what the server said (a slow GCS)
KINDS = ("reset", "status", "lost", "silent", "partial", "corrupt", "hold", "hold_stored", "slow")


@dataclass
class Fault:
    kind: str
    # Which request: "chunk" (a PUT with data, not the last), "final" (the PUT that
    # carries the total), "query" (a status query), "create" (the session-creating POST),
    # "compose" (a compose POST), "delete" (an object DELETE), "metadata" (a GET of an
    # object's metadata, not of its bytes), "rewrite" (a rewrite POST), "patch" (a PATCH),
    # "permissions" (a bucket's testIamPermissions).
    target: str = "chunk"
    nth: int = 1  # the nth such request from now on (1 = the next one)
    status: int = 503
    body: bytes = b""
    times: int = 1  # consecutive matching requests it applies to
    seen: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault {self.kind!r}")


@dataclass
class Exchange:
    """One request as the proxy saw it."""

    epoch: int
    method: str
    target: str  # chunk, final, query, create, other
    start: int | None  # first byte offset of a chunk
    received: int  # body bytes received from the client
    status: int | None  # what the client was answered (None: nothing)
    fault: str | None = None
    session: str | None = None  # the resumable session's upload_id (chunk, final, query)
    sources: int | None = None  # a compose request's number of source objects
    path: str = ""  # the request's path and query
    sent: int = 0  # body bytes answered to the client (what a download costs)
    # The body of a request that is no session PUT, its first 64 KiB (what a create, compose,
    # rewrite or patch asked for: class, key, holds; a multipart upload's metadata part,
    # which comes first), as the client sent it.
    body: bytes = b""
    at: float = field(default_factory=time.time)  # when the request came in (wall clock, as the journal's)

    def json(self) -> Any:
        """The JSON the request carried (a multipart upload's metadata part), or None."""
        text = self.body.decode("utf-8", "replace")
        start = text.find("{")
        if start < 0:
            return None
        try:
            return json.JSONDecoder().raw_decode(text[start:])[0]
        except ValueError:
            return None

    def query(self, key: str) -> str | None:
        return parse_qs(urlsplit(self.path).query).get(key, [None])[0]


@dataclass
class _Holds:
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


def _classify(method: str, path: str, headers: Any) -> tuple[str, int | None]:
    content_range = headers.get("Content-Range", "")
    if method == "POST" and "uploadType=resumable" in path and "upload_id=" not in path:
        return "create", None
    if method == "POST" and path.split("?", 1)[0].endswith("/compose"):
        return "compose", None
    if method == "POST" and "/rewriteTo/" in path:
        return "rewrite", None
    if method == "PATCH":
        return "patch", None
    if method == "DELETE":
        return "delete", None
    if method == "GET" and path.split("?", 1)[0].endswith("/iam/testPermissions"):
        return "permissions", None
    if method == "GET" and "/o/" in path and "alt=media" not in path and not path.startswith("/download/"):
        return "metadata", None
    if method == "PUT" and "upload_id=" in path and content_range.startswith("bytes "):
        spec = content_range[6:]
        span, _, total = spec.partition("/")
        if span == "*":
            return ("query" if total == "*" else "final"), None
        start = int(span.split("-")[0])
        return ("chunk" if total == "*" else "final"), start
    return "other", None


class FaultProxy:
    """``with FaultProxy(upstream_url) as proxy:`` ... ``proxy.url``, ``proxy.add(Fault(...))``."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._stopping = threading.Event()
        self.log: list[Exchange] = []
        self.holds = _Holds()
        self.epoch = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def release(self) -> None:
        """Let a held request go (it ends in a reset) and arm fresh events for the next hold."""
        holds, self.holds = self.holds, _Holds()
        holds.release.set()

    def clear(self) -> None:
        """Remove every fault not yet applied; the log stays."""
        with self._lock:
            self._faults.clear()

    def exchanges(self, target: str | None = None, epoch: int | None = None) -> list[Exchange]:
        with self._lock:
            return [
                e for e in self.log
                if (target is None or e.target == target) and (epoch is None or e.epoch == epoch)
            ]

    def _match(self, target: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.target != target:
                    continue
                fault.seen += 1
                if fault.nth <= fault.seen < fault.nth + fault.times:
                    return fault
        return None

    def _record(self, exchange: Exchange) -> None:
        with self._lock:
            self.log.append(exchange)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like GCS: a reset hits a live connection

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._proxy()

            do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

            def _reset(self) -> None:
                # SO_LINGER 0: close() sends RST, which the client sees as "connection reset".
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True

            def _proxy(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                assert "chunked" not in (self.headers.get("Transfer-Encoding") or ""), "chunked bodies unsupported"
                target, start = _classify(self.command, self.path, self.headers)
                fault = proxy._match(target)
                kind = fault.kind if fault else None
                session = parse_qs(urlsplit(self.path).query).get("upload_id", [None])[0]
                exchange = Exchange(proxy.epoch, self.command, target, start, 0, None, kind, session, path=self.path)
                proxy._record(exchange)

                if kind in ("reset", "hold"):
                    exchange.received = len(self.rfile.read(length // 2))
                    if kind == "hold":
                        holds = proxy.holds
                        holds.held.set()
                        holds.release.wait()
                    self._reset()
                    return
                body = self.rfile.read(length)
                exchange.received = len(body)
                if "upload_id=" not in self.path:
                    exchange.body = body[: 64 << 10]
                if target == "compose":
                    exchange.sources = len(json.loads(body).get("sourceObjects") or [])
                if fault is not None and kind == "status":
                    self._answer(exchange, fault.status, {"Content-Type": "application/json"}, fault.body)
                    return
                if kind == "corrupt" and body:
                    mid = len(body) // 2
                    body = body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1 :]
                if kind == "partial":
                    body = body[: len(body) // 2]
                status, headers, payload = self._forward(body)
                if kind == "lost":
                    self._reset()
                    return
                if kind == "hold_stored":
                    holds = proxy.holds
                    holds.held.set()
                    holds.release.wait()
                    self._reset()
                    return
                if kind == "silent":
                    self._wait_for_client_to_give_up()
                    self._reset()
                    return
                if kind == "slow":
                    holds = proxy.holds
                    holds.held.set()
                    holds.release.wait()
                self._answer(exchange, status, headers, payload)

            def _forward(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
                conn = http.client.HTTPConnection(*proxy._upstream, timeout=120)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for key, value in self.headers.items():
                        if key.lower() not in _HOP_BY_HOP:
                            conn.putheader(key, value)
                    conn.putheader("Content-Length", str(len(body)))
                    conn.endheaders(body)
                    resp = conn.getresponse()
                    payload = resp.read()
                    headers = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP | _OWN}
                    return resp.status, headers, payload
                finally:
                    conn.close()

            def _answer(self, exchange: Exchange, status: int, headers: dict[str, str], payload: bytes) -> None:
                # Logged before the bytes leave: a client that has read them may look at the
                # log at once (in the test's own process, before this thread runs again).
                exchange.status = status
                exchange.sent = len(payload)
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    exchange.sent = 0  # the client went away: nothing reached it
                    raise

            def _wait_for_client_to_give_up(self) -> None:
                while not proxy._stopping.is_set():
                    readable, _, _ = select.select([self.connection], [], [], 0.05)
                    if readable:
                        try:
                            if not self.connection.recv(1 << 16, socket.MSG_PEEK):
                                return  # the client closed its end
                        except OSError:
                            return
                        # Another pipelined request cannot arrive before our answer.
                        return

        return Handler


def resent(log: list[Exchange], epoch: int) -> int:
    """Chunk bytes the client sent in ``epoch`` at offsets of a session it had already
    sent before: counted from what the proxy received on the wire, not from what the
    client says. Sessions are told apart by upload_id (an archive uploaded in segments
    has one per segment)."""
    earlier: dict[str | None, list[tuple[int, int]]] = {}
    for e in log:
        if e.epoch < epoch and e.start is not None and e.received:
            earlier.setdefault(e.session, []).append((e.start, e.start + e.received))
    total = 0
    for e in log:
        if e.epoch != epoch or e.start is None:
            continue
        covered: list[tuple[int, int]] = []
        for a, b in earlier.get(e.session, []):
            lo, hi = max(a, e.start), min(b, e.start + e.received)
            if lo < hi:
                covered.append((lo, hi))
        covered.sort()
        end = -1
        for lo, hi in covered:  # union of the overlaps
            lo = max(lo, end)
            if lo < hi:
                total += hi - lo
                end = hi
    return total
