"""A real SMTP server (aiosmtpd) on loopback, for the tests that send mail.

``serve(**controller_kwargs) -> (Collector, port)`` starts one (every one started is
stopped at the end of the test); ``smtp`` is one plain server. The collector keeps every
message it accepts, with whether it came over TLS and after a login; it refuses
``REFUSED`` as a recipient and accepts the login ``USER``/``PASSWORD``.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

USER, PASSWORD = "archiver", "s3cret-pw"
REFUSED = "nobody@lab.example"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: Message
    tls: bool
    authenticated: bool


@dataclass
class Collector:
    """aiosmtpd handler: keeps every message it is given, refuses REFUSED as a recipient."""

    received: list[Received] = field(default_factory=list)
    logins: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    stall_data: bool = False  # never answer the end of DATA, like a wedged server

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address == REFUSED:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.stall_data:
            await asyncio.Event().wait()  # cancelled when the controller stops
        self.received.append(
            Received(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                email.message_from_bytes(envelope.content, policy=email.policy.default),
                bool(session.ssl),
                bool(session.authenticated),
            )
        )
        return "250 Message accepted"

    def authenticator(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.logins.append((mechanism, auth_data.login, auth_data.password))
        ok = auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
        return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535 itself


def free_port() -> int:
    # aiosmtpd's Controller cannot listen on port 0 (its readiness probe connects to self.port).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def serve() -> Iterator[Any]:
    """serve(**smtp_kwargs) -> (Collector, port); every server started is stopped at the end."""
    controllers: list[Controller] = []

    def _serve(**kwargs: Any) -> tuple[Collector, int]:
        collector = Collector()
        port = free_port()
        controller = Controller(
            collector, hostname="127.0.0.1", port=port, authenticator=collector.authenticator, **kwargs
        )
        controller.start()
        controllers.append(controller)
        return collector, port

    yield _serve
    for controller in controllers:
        controller.stop()


@pytest.fixture
def smtp(serve: Any) -> tuple[Collector, int]:
    """One plain SMTP server: (collector, port)."""
    collector, port = serve()
    return collector, port
