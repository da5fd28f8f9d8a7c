"""A real HTTP server on loopback that takes webhook POSTs, as Slack's incoming webhooks
do (answering ``ok``), for the tests of ``webhook_url``.

``webhook`` is ``(Inbox, url)``; the inbox keeps every POST's path, headers and parsed
JSON body, and answers ``status`` (200 unless a test sets another).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Inbox:
    posts: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200


@pytest.fixture
def webhook() -> Iterator[tuple[Inbox, str]]:
    inbox = Inbox()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            inbox.posts.append({"path": self.path, "content_type": self.headers.get("Content-Type"),
                                "json": json.loads(body)})
            self.send_response(inbox.status)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"ok" if inbox.status == 200 else b"invalid_payload")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # shutdown() waits for the loop's next poll: 0.5 s by default, in every test's teardown.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield inbox, f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/secret-token"
    finally:
        server.shutdown()
        server.server_close()
