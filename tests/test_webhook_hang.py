"""Notifications never hold up the daemon: a webhook (or SMTP server) that trickles its
answer one byte at a time, forever, is cut off at a deadline on the whole exchange; the
daemon delivers on a thread of its own, so it keeps archiving while one hangs and stops
within seconds on SIGTERM; a redirect is reported, never followed nor called "posted".

The servers are real sockets on loopback. The trickle is what a socket timeout cannot
catch: every byte arrives well inside it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers import journal_row, run_cli, start_cli, wait_until
from test_webhook import _config

from sruns_stream.config import MailConfig
from sruns_stream.daemon.notify import DeliveryQueue, MailEvent, SmtpNotifier
from sruns_stream.daemon.webhook import WebhookNotifier

RUN = "240101_M00001_0001_000000000-ABCDE"


class Trickle:
    """Accepts every connection, sends ``head``, then one more byte every 0.5 s until
    the test ends: an answer that never completes, yet never lets a socket timeout fire."""

    def __init__(self, head: bytes) -> None:
        self.head = head
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = threading.Event()
        self.hung_up = threading.Event()  # a client closed its end while being trickled to
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # the listener was shut down: the test is over
                return
            self.accepted.set()
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(self.head)
                while not self._stop.wait(0.5):  # the pace of the trickle, not a wait for a race
                    conn.sendall(b"a")
            except OSError:  # EPIPE or ECONNRESET: the client gave up
                self.hung_up.set()

    def close(self) -> None:
        self._stop.set()
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (closing alone does not, on Linux)
        self.listener.close()


@pytest.fixture
def trickle() -> Iterator[Any]:
    started: list[Trickle] = []

    def start(head: bytes) -> Trickle:
        started.append(Trickle(head))
        return started[-1]

    yield start
    for server in started:
        server.close()


# An HTTP answer whose status line came, and whose first header never ends.
HTTP_TRICKLE = b"HTTP/1.1 200 OK\r\nX-Trickle: "


@pytest.fixture
def redirecting() -> Iterator[tuple[dict[str, Any], str]]:
    """An HTTP server answering every POST to /hook with ``state["status"]`` and a Location
    on the same server, where anything is answered 200: a client that follows the
    redirect reaches a 2xx (and ``state["followed"]`` counts it)."""
    state: dict[str, Any] = {"status": 302, "followed": 0}

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path == "/hook":
                self.send_response(state["status"])
                self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/elsewhere")
            else:
                state["followed"] += 1
                self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_POST = do_GET = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # shutdown() waits for the loop's next poll: 0.5 s by default, in every test's teardown.
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def archived(run: str = RUN) -> MailEvent:
    return MailEvent.archived(run, raw_bytes=1 << 20, archive_bytes=1 << 19, seconds=1.0, location="/a/b.tar.gz")


# -- the exchange's deadline ----------------------------------------------------------------------


@pytest.mark.slow  # waits out a real 1 s deadline
@pytest.mark.timeout(20)  # the old code hangs here for as long as the server trickles
def test_a_trickling_webhook_is_cut_off_at_the_deadline(trickle: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sruns_stream.daemon.webhook")
    server = trickle(HTTP_TRICKLE)
    notifier = WebhookNotifier(f"http://127.0.0.1:{server.port}/hook", timeout=10, deadline=1.0)
    started = time.monotonic()
    assert notifier.send(archived()) is False
    # The deadline, not the 10 s per-step timeout (which every byte of the trickle resets).
    assert time.monotonic() - started < 5
    [line] = [r.getMessage() for r in caplog.records if r.name == "sruns_stream.daemon.webhook"]
    assert line == (f"webhook '[sruns-stream] {RUN}: archived' not sent to http://127.0.0.1:{server.port}/…: "
                    "no complete answer within the 1 s deadline"), line
    assert server.hung_up.wait(10)  # and the connection was really given up


@pytest.mark.slow  # waits out a real 1 s deadline
@pytest.mark.timeout(20)
def test_a_trickling_smtp_server_is_cut_off_at_the_deadline(trickle: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sruns_stream.daemon.notify")
    server = trickle(b"220")  # a greeting that never ends
    config = MailConfig(host="127.0.0.1", port=server.port, from_addr="sruns@lab.example",
                        to_addrs=("ops@lab.example",))
    started = time.monotonic()
    assert SmtpNotifier(config, timeout=10, deadline=1.0).send(archived()) is False
    assert time.monotonic() - started < 5
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage().endswith(": no complete exchange within the 1 s deadline"), record.getMessage()
    assert server.hung_up.wait(10)


# -- redirects ------------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_reported_and_not_followed(
    redirecting: tuple[dict[str, Any], str], status: int, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sruns_stream.daemon.webhook")
    state, url = redirecting
    state["status"] = status
    assert WebhookNotifier(url).send(archived()) is False
    [line] = [r.getMessage() for r in caplog.records if r.name == "sruns_stream.daemon.webhook"]
    assert f"not delivered to http://127.0.0.1:{url.split(':')[2].split('/')[0]}/…: HTTP {status} redirect to " \
           "127.0.0.1, not followed" in line, line
    assert state["followed"] == 0  # the payload went nowhere else


@pytest.mark.timeout(20)
def test_the_environments_http_proxy_is_still_used(webhook: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib took the proxy from the environment; the post, now made without it, still does."""
    inbox, url = webhook
    monkeypatch.setenv("http_proxy", url.split("/services/")[0])
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    hook = "http://hooks.example.invalid/services/T000/B000/secret-token"  # resolvable only by the "proxy"
    assert WebhookNotifier(hook).send(archived()) is True
    [post] = inbox.posts
    assert post["path"] == hook and post["json"]["run"] == RUN  # the proxy was asked for the whole URL


# -- the delivery queue ---------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_the_delivery_queue_never_blocks_drops_beyond_its_bound_and_logs_what_a_close_left(
    trickle: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sruns_stream.daemon.notify")
    server = trickle(HTTP_TRICKLE)
    queue = DeliveryQueue(WebhookNotifier(f"http://127.0.0.1:{server.port}/hook"), size=1)
    names = [f"240101_M00001_000{i}_000000000-QUEUE" for i in (1, 2, 3)]
    assert queue.send(archived(names[0])) is True
    assert server.accepted.wait(10)  # the first is being posted, and hangs
    assert queue.send(archived(names[1])) is True  # waits behind it
    assert queue.send(archived(names[2])) is False  # one too many: dropped, and said so
    started = time.monotonic()
    queue.close(0.2)
    assert time.monotonic() - started < 2  # the hung post does not hold up the close
    assert queue.send(archived(names[0])) is False  # closed: nothing more is taken
    lines = [r.getMessage() for r in caplog.records if r.name == "sruns_stream.daemon.notify"]
    full = "the delivery queue is full (1 waiting: the mail server or webhook is slow or not answering)"
    left = "the daemon stopped before it was delivered (waited 0.2 s)"
    assert lines == [f"notification '[sruns-stream] {name}: archived' not delivered: {why}" for name, why in (
        (names[2], full), (names[0], left), (names[1], left), (names[0], "the daemon is stopping"))], lines


# -- the daemon ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_trickling_webhook_neither_stalls_the_daemon_nor_delays_its_stop(trickle: Any, tmp_path: Path) -> None:
    """The first run's "archived" post hangs (the server trickles); a second run appears
    only then, and must still be archived; SIGTERM must then end the daemon in seconds,
    saying what was not delivered. The old daemon posted from its loop: it archived
    nothing more, and did not stop, for as long as the server trickled."""
    import make_fake_run

    server = trickle(HTTP_TRICKLE)
    first = tmp_path / "watch" / "240101_M00001_0001_000000000-HANG1"
    make_fake_run.make_run(first, "miseq", 1 << 20, seed=1)
    conf = _config(tmp_path, f"http://127.0.0.1:{server.port}/services/T000/B000/secret-token")
    daemon = start_cli("monitor", "--config", str(conf), cwd=tmp_path)
    wait_until(server.accepted.is_set, "the first run's post, hanging", proc=daemon)

    # Made aside and moved in whole, so the daemon never sees it half written.
    second = tmp_path / "staging" / "240101_M00001_0002_000000000-HANG2"
    make_fake_run.make_run(second, "miseq", 1 << 20, seed=2)
    os.rename(second, tmp_path / "watch" / second.name)
    db = tmp_path / "sruns.db"
    wait_until(lambda: journal_row(db, second.name).get("status") == "complete", "the second run archived",
               proc=daemon)

    daemon.send_signal(signal.SIGTERM)
    _, err = daemon.communicate(timeout=5)  # the old daemon is still stuck in the first post here
    assert daemon.returncode == 0, err
    assert f"notification '[sruns-stream] {second.name}: archived' not delivered: the daemon stopped before it " \
           "was delivered" in err, err
    assert "posted" not in err and "secret-token" not in err, err


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_daemon_reports_a_redirect_as_not_delivered(redirecting: tuple[dict[str, Any], str],
                                                        tmp_path: Path) -> None:
    import make_fake_run

    state, url = redirecting
    run = tmp_path / "watch" / "240101_M00001_0003_000000000-REDIR"
    make_fake_run.make_run(run, "miseq", 1 << 20, seed=3)
    proc = run_cli("monitor", "--config", str(_config(tmp_path, url)), "--once", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert journal_row(tmp_path / "sruns.db", run.name)["status"] == "complete"
    [line] = [line for line in proc.stderr.splitlines() if "sruns_stream.daemon.webhook" in line]
    assert f"webhook '[sruns-stream] {run.name}: archived' not delivered to http://127.0.0.1:" in line, line
    assert "HTTP 302 redirect to 127.0.0.1, not followed" in line, line
    assert "posted" not in proc.stderr and state["followed"] == 0
