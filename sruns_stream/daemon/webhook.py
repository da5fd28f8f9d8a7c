"""Chat notifications: a JSON POST to an incoming webhook when a run is archived, an
attempt fails (or is killed), or the daemon gives up on a run.

The body's ``text`` is what Slack's incoming webhooks and Microsoft Teams' Incoming
Webhook connector show (the same headline and facts as the mail); ``run``, ``event``,
``headline`` and ``facts`` are there for anything else that reads the JSON (a Teams
Workflows flow, a script). Like mail it is a courtesy: a short timeout per step, a
deadline on the whole exchange that a server trickling its answer cannot extend
(:class:`~sruns_stream.daemon.notify.ExchangeDeadline`), and every failure (refused, timed out,
an HTTP error, a redirect) is logged on ``sruns_stream.daemon.webhook`` and reported as
``False``; ``send`` never raises. A redirect is not followed: the payload would go to
wherever the answer points. The URL is a credential (Slack's path is its secret), so
logs name only its scheme and host.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import ssl
import urllib.request
from http.client import HTTPConnection, HTTPSConnection
from urllib.parse import unquote, urlsplit

from .. import __version__
from .notify import DEFAULT_SUBJECT_PREFIX, EventKind, ExchangeDeadline, MailEvent

__all__ = ["EVENTS", "WebhookNotifier"]

logger = logging.getLogger(__name__)

#: What is posted: the outcomes people act on. "started" and the daemon's own events go
#: to mail only.
EVENTS = frozenset({EventKind.ARCHIVED, EventKind.FAILED, EventKind.KILLED, EventKind.GAVE_UP})
DEFAULT_TIMEOUT = 10.0  # each step (connect, send, each read)
DEFAULT_DEADLINE = 30.0  # the whole exchange
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class WebhookNotifier:
    """POST events to ``url`` (the config's ``webhook_url``)."""

    def __init__(
        self, url: str, *, timeout: float = DEFAULT_TIMEOUT, deadline: float = DEFAULT_DEADLINE,
        host_name: str | None = None, subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
    ) -> None:
        self.url = url
        parts = urlsplit(url)
        self.shown = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/…"
        self.timeout = timeout
        self.deadline = deadline
        self.host_name = host_name or socket.gethostname()
        self.subject_prefix = subject_prefix

    def payload(self, event: MailEvent) -> dict[str, object]:
        facts = {label: " ".join(value.split()) for label, value in event.facts}
        lines = [event.subject(self.subject_prefix), event.summary, *(f"{k}: {v}" for k, v in facts.items())]
        return {
            "text": "\n".join(lines),
            "run": event.run,
            "event": event.kind.name.lower(),
            "headline": event.headline,
            "facts": facts,
            "host": self.host_name,
            "tool": f"sruns-stream {__version__}",
        }

    def takes(self, event: MailEvent) -> bool:
        return event.kind in EVENTS

    def send(self, event: MailEvent) -> bool:
        """Post ``event`` if it is one of `EVENTS`; True if the server answered 2xx."""
        if not self.takes(event):
            return False
        subject = event.subject(self.subject_prefix)
        body = json.dumps(self.payload(event)).encode()
        deadline = ExchangeDeadline(self.deadline)
        try:
            status, reason, location = self._post(body, deadline)
        except (OSError, http.client.HTTPException, ValueError) as exc:  # timeouts and TLS errors are OSErrors
            why = f"no complete answer within the {self.deadline:g} s deadline" if deadline.expired else exc
            logger.error("webhook %r not sent to %s: %s", subject, self.shown, why)
            return False
        if status in _REDIRECTS:
            # Not followed: the payload would go to wherever the answer points.
            logger.error("webhook %r not delivered to %s: HTTP %d redirect to %s, not followed (set webhook_url "
                         "to the address it should post to)", subject, self.shown, status,
                         urlsplit(location or "").hostname or "(no Location)")
            return False
        if not 200 <= status < 300:
            logger.error("webhook %r not sent to %s: HTTP %d %s", subject, self.shown, status, reason)
            return False
        logger.info("posted %r to the webhook at %s", subject, self.shown)
        return True

    def _post(self, body: bytes, deadline: ExchangeDeadline) -> tuple[int, str, str | None]:
        """POST ``body`` (through the environment's proxy, as urllib would); the status,
        reason and Location of the answer, whose body is read (at most 64 KiB) and dropped."""
        conn, target, headers = self._connection()
        # Every socket of the exchange (the proxy's too) is watched from before the first byte.
        conn._create_connection = (  # type: ignore[attr-defined]
            lambda *a, **kw: deadline.watch(socket.create_connection(*a, **kw))
        )
        headers.update({"Content-Type": "application/json", "User-Agent": f"sruns-stream/{__version__}",
                        "Connection": "close"})
        try:
            with deadline:
                conn.request("POST", target, body=body, headers=headers)
                response = conn.getresponse()
                response.read(65536)
                return response.status, response.reason, response.getheader("Location")
        finally:
            conn.close()

    def _connection(self) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
        """The connection, the request target and the proxy's headers for the URL."""
        parts = urlsplit(self.url)
        host, port = parts.hostname or "", parts.port
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        proxy = urllib.request.getproxies().get(parts.scheme)
        if not proxy or urllib.request.proxy_bypass(host):
            if parts.scheme == "https":
                return HTTPSConnection(host, port, timeout=self.timeout, context=ssl.create_default_context()), path, {}
            return HTTPConnection(host, port, timeout=self.timeout), path, {}
        via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        auth: dict[str, str] = {}
        if via.username is not None:
            token = base64.b64encode(f"{unquote(via.username)}:{unquote(via.password or '')}".encode()).decode()
            auth["Proxy-Authorization"] = f"Basic {token}"
        if parts.scheme == "http":  # the proxy is sent the whole URL
            return HTTPConnection(via.hostname or "", via.port or 80, timeout=self.timeout), self.url, auth
        # https: a CONNECT tunnel; the proxy's credentials go with CONNECT, never to the webhook.
        conn = HTTPSConnection(via.hostname or "", via.port or 80, timeout=self.timeout,
                               context=ssl.create_default_context())
        conn.set_tunnel(host, port, headers=auth)
        return conn, path, {}
