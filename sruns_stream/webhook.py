"""Chat notifications: a JSON POST to an incoming webhook when a run is archived, an
attempt fails (or is killed), or the daemon gives up on a run.

The body's ``text`` is what Slack's incoming webhooks and Microsoft Teams' Incoming
Webhook connector show (the same headline and facts as the mail); ``run``, ``event``,
``headline`` and ``facts`` are there for anything else that reads the JSON (a Teams
Workflows flow, a script). Like mail it is a courtesy: a short timeout, and every
failure (refused, timed out, an HTTP error) is logged on ``sruns_stream.webhook`` and
reported as ``False``; ``send`` never raises. The URL is a credential (Slack's path is
its secret), so logs name only its scheme and host.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from . import __version__
from .notify import DEFAULT_SUBJECT_PREFIX, EventKind, MailEvent

__all__ = ["EVENTS", "WebhookNotifier"]

logger = logging.getLogger(__name__)

#: What is posted: the outcomes people act on. "started" and the daemon's own events go
#: to mail only.
EVENTS = frozenset({EventKind.ARCHIVED, EventKind.FAILED, EventKind.KILLED, EventKind.GAVE_UP})
DEFAULT_TIMEOUT = 10.0


class WebhookNotifier:
    """POST events to ``url`` (the config's ``webhook_url``)."""

    def __init__(
        self, url: str, *, timeout: float = DEFAULT_TIMEOUT, host_name: str | None = None,
        subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
    ) -> None:
        self.url = url
        parts = urlsplit(url)
        self.shown = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/…"
        self.timeout = timeout
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

    def send(self, event: MailEvent) -> bool:
        """Post ``event`` if it is one of `EVENTS`; True if the server answered 2xx."""
        if event.kind not in EVENTS:
            return False
        request = urllib.request.Request(
            self.url, data=json.dumps(self.payload(event)).encode(), method="POST",
            headers={"Content-Type": "application/json", "User-Agent": f"sruns-stream/{__version__}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read(65536)
        except urllib.error.HTTPError as exc:
            logger.error("webhook %r not sent to %s: HTTP %d %s", event.subject(self.subject_prefix), self.shown,
                         exc.code, exc.reason)
            return False
        except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError and timeouts are OSErrors
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            logger.error("webhook %r not sent to %s: %s", event.subject(self.subject_prefix), self.shown, reason)
            return False
        logger.info("posted %r to the webhook at %s", event.subject(self.subject_prefix), self.shown)
        return True
