"""notify.py against a real SMTP server (aiosmtpd) on loopback: headers, facts, TLS, login, outages."""

from __future__ import annotations

import email
import email.policy
import email.utils
import logging
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from plugins.smtp_server import PASSWORD, REFUSED, USER, free_port

from sruns_stream.config import MailConfig
from sruns_stream.daemon.notify import (
    EventKind,
    MailEvent,
    Notifier,
    NullNotifier,
    SmtpNotifier,
    make_notifier,
)

pytestmark = pytest.mark.timeout(60)

RUN = "240101_M00001_0001_000000000-ABCDE"
NOW = 1_700_000_000.0  # the injected clock: the Date header must say exactly this
PASSWORD_ENV = "SRUNS_TEST_SMTP_PASSWORD"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 made with openssl: (cert.pem, key.pem)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a self-signed certificate for the TLS tests")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(d / "key.pem"),
            "-out",
            str(d / "cert.pem"),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return d / "cert.pem", d / "key.pem"


@pytest.fixture
def server_tls(cert: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*cert)
    return ctx


@pytest.fixture
def client_tls(cert: tuple[Path, Path]) -> ssl.SSLContext:
    """Trusts only the test certificate, as a site with a private CA would."""
    return ssl.create_default_context(cafile=str(cert[0]))


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="sruns_stream.daemon.notify")
    return caplog


def mail_config(port: int, **kw: Any) -> MailConfig:
    kw.setdefault("to_addrs", ("ops@lab.example",))
    return MailConfig(host="127.0.0.1", port=port, from_addr="sruns@lab.example", **kw)


def notifier(config: MailConfig, **kw: Any) -> SmtpNotifier:
    kw.setdefault("timeout", 10)
    return SmtpNotifier(config, host_name="archiver.example", clock=lambda: NOW, **kw)


def archived_event() -> MailEvent:
    return MailEvent.archived(
        RUN,
        raw_bytes=4_194_304_000,
        archive_bytes=2_600_000_000,
        seconds=20.0,
        location=f"gs://seq-bucket/runs/{RUN}.tar.gz",
        crc32c="AAAAAA==",
        files=1234,
    )


def body_of(msg: Message) -> str:
    assert msg.get_content_type() == "text/plain"
    payload = msg.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode(msg.get_content_charset() or "ascii")


# -- delivery and headers --------------------------------------------------------------------------


def test_archived_mail_arrives_with_headers_and_facts(serve: Any, log: pytest.LogCaptureFixture) -> None:
    server, port = serve()
    to = ("ops@lab.example", "seq-core@lab.example", "pi@lab.example")

    assert notifier(mail_config(port, to_addrs=to)).send(archived_event()) is True

    [got] = server.received
    assert got.mail_from == "sruns@lab.example"
    assert got.rcpt_tos == list(to)  # every recipient is on the envelope, not just in the header
    msg = got.message
    assert msg["From"] == "sruns@lab.example"
    assert [addr for _, addr in email.utils.getaddresses([msg["To"]])] == list(to)
    assert msg["Subject"] == f"[sruns-stream] {RUN}: archived"
    assert email.utils.parsedate_to_datetime(msg["Date"]).timestamp() == NOW
    assert re.fullmatch(r"<[^<>@\s]+@archiver\.example>", msg["Message-ID"])
    body = body_of(msg)
    for fact in (
        "4.19 GB (4,194,304,000 bytes)",
        "2.6 GB (2,600,000,000 bytes)",
        "1.61 (raw / archive)",  # the summary line's convention (humanize.ratio)
        "209.7 MB/s",
        f"gs://seq-bucket/runs/{RUN}.tar.gz",
        "AAAAAA==",
        "1,234",
        "sruns-stream",
        "archiver.example",
    ):
        assert fact in body
    assert f"mailed '[sruns-stream] {RUN}: archived' to 3 recipient(s)" in log.text


def test_message_ids_are_unique(serve: Any) -> None:
    server, port = serve()
    n = notifier(mail_config(port))
    assert n.send(archived_event()) and n.send(archived_event())
    assert len({r.message["Message-ID"] for r in server.received}) == 2


EVENTS = [
    (
        MailEvent.started(RUN, host="seq-archiver-1", destination="gs://seq-bucket/runs"),
        f"[sruns-stream] {RUN}: started",
        ["seq-archiver-1", "gs://seq-bucket/runs"],
    ),
    (
        MailEvent.started(RUN, host="seq-archiver-1", destination="gs://b", resumed=True),
        f"[sruns-stream] {RUN}: resumed",
        ["resumed from its checkpoint"],
    ),
    (
        MailEvent.failed(
            RUN,
            error="UploadError: 403 Forbidden: bucket seq-bucket\nTraceback (most recent...",
            attempt=2,
            max_attempts=5,
            will_retry=True,
            retry_in_sec=240,
        ),
        f"[sruns-stream] {RUN}: failed (attempt 2 of 5)",
        ["UploadError: 403 Forbidden: bucket seq-bucket", "2 of 5", "it will be retried in 4 min from its checkpoint"],
    ),
    (
        MailEvent.failed(RUN, error="DiskFull: no space", attempt=5, max_attempts=5, will_retry=False),
        f"[sruns-stream] {RUN}: failed (attempt 5 of 5)",
        ["DiskFull: no space", "will retry: no"],
    ),
    (
        MailEvent.killed(RUN, pid=4242, runtime_sec=172_900, limit_sec=172_800),
        f"[sruns-stream] {RUN}: killed (runtime limit exceeded)",
        ["4242", "48:01:40", "48:00:00", "task_runtime_limit_sec"],
    ),
    (
        MailEvent.gave_up(RUN, error="UploadError: 403 Forbidden", attempts=5),
        f"[sruns-stream] {RUN}: gave up after 5 attempts",
        ["UploadError: 403 Forbidden", "will not be retried automatically", "only mail about it"],
    ),
    (
        MailEvent.stopping(sig=15, interrupted=[RUN, "240102_A00001_0002_BHXXXXDSX2"]),
        "[sruns-stream] daemon stopping (SIGTERM)",
        [RUN, "240102_A00001_0002_BHXXXXDSX2", "resume"],
    ),
    (MailEvent.stopping(sig="SIGINT"), "[sruns-stream] daemon stopping (SIGINT)", ["runs interrupted: none"]),
    (
        MailEvent.daemon_error("sqlite3.OperationalError: database is locked"),
        "[sruns-stream] daemon error",
        ["database is locked"],
    ),
]


@pytest.mark.parametrize(("event", "subject", "facts"), EVENTS, ids=lambda v: getattr(v, "headline", None))
def test_every_event_arrives_with_its_facts(
    serve: Any, event: MailEvent, subject: str, facts: list[str]
) -> None:
    server, port = serve()
    assert notifier(mail_config(port)).send(event)
    [got] = server.received
    assert got.message["Subject"] == subject
    body = body_of(got.message)
    for fact in facts:
        assert fact in body
    assert "Traceback" not in body  # the error's first line only; tracebacks go to the log


def test_archived_reports_instrument_status_and_survives_zero_sizes() -> None:
    event = MailEvent.archived(
        RUN,
        raw_bytes=0,
        archive_bytes=0,
        seconds=0,
        location="/archive/x.tar.gz",
        instrument_status="RunErrored",
    )
    assert event.kind is EventKind.ARCHIVED
    body = event.body()
    assert "instrument status: RunErrored" in body
    assert "ratio:             n/a" in body and "rate:              n/a" in body


def test_subject_prefix_replaces_sruns_stream(serve: Any) -> None:
    # sruns-monitor put its `name` in every subject; deployments with several monitors rely on it.
    server, port = serve()
    assert notifier(mail_config(port), subject_prefix="novaseq-lab2").send(archived_event())
    assert server.received[0].message["Subject"] == f"[novaseq-lab2] {RUN}: archived"


def test_odd_run_names_cannot_break_the_headers() -> None:
    # A folder name is not trusted: a line break must not inject a header, and undecodable
    # bytes (surrogate escapes from os.fsdecode) must not make the message unencodable.
    n = SmtpNotifier(mail_config(25), host_name="h", clock=lambda: NOW)
    msg = n.build_message(MailEvent.started("bad\nBcc: x@evil.example\udcff", host="h", destination="d"))
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert parsed["Bcc"] is None
    assert parsed["Subject"] == "[sruns-stream] bad Bcc: x@evil.example?: started"
    assert "  run:         bad Bcc: x@evil.example?\n" in body_of(parsed)


# -- TLS and login -----------------------------------------------------------------------------------


def test_starttls_with_login_from_environment(
    serve: Any,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # require_starttls: the server refuses MAIL before STARTTLS, and only offers AUTH after it.
    server, port = serve(tls_context=server_tls, require_starttls=True, auth_required=True)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    config = mail_config(port, tls="starttls", user=USER, password_env=PASSWORD_ENV)

    assert notifier(config, ssl_context=client_tls).send(archived_event())

    [got] = server.received
    assert got.tls and got.authenticated
    assert [(login, pw) for _, login, pw in server.logins] == [(USER.encode(), PASSWORD.encode())]
    assert got.message["Subject"] == f"[sruns-stream] {RUN}: archived"


# aiosmtpd warns about auth_require_tls=False; here the whole connection is TLS (see below).
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_implicit_ssl_with_login(serve: Any, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    # aiosmtpd only counts STARTTLS as TLS for AUTH, not a TLS listening socket, hence
    # auth_require_tls=False; the connection is TLS all the same (SMTP_SSL speaks nothing else).
    server, port = serve(ssl_context=server_tls, auth_required=True, auth_require_tls=False)
    config = mail_config(port, tls="ssl", user=USER, password_env=PASSWORD_ENV)

    assert notifier(config, ssl_context=client_tls, environ={PASSWORD_ENV: PASSWORD}).send(archived_event())

    [got] = server.received
    assert got.authenticated
    assert [(login, pw) for _, login, pw in server.logins] == [(USER.encode(), PASSWORD.encode())]


def test_untrusted_certificate_is_logged_not_raised(
    serve: Any,
    server_tls: ssl.SSLContext,
    log: pytest.LogCaptureFixture,
) -> None:
    server, port = serve(tls_context=server_tls, require_starttls=True)
    # No ssl_context: the system trust store does not know the self-signed test certificate.
    assert notifier(mail_config(port, tls="starttls")).send(archived_event()) is False
    assert server.received == []
    assert "TLS error" in log.text and "CERTIFICATE_VERIFY_FAILED" in log.text


def test_wrong_password_is_logged_not_raised(
    serve: Any,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    log: pytest.LogCaptureFixture,
) -> None:
    server, port = serve(tls_context=server_tls, require_starttls=True, auth_required=True)
    config = mail_config(port, tls="starttls", user=USER, password_env=PASSWORD_ENV)
    n = notifier(config, ssl_context=client_tls, environ={PASSWORD_ENV: "wrong"})
    assert n.send(archived_event()) is False
    assert server.received == []
    assert "SMTPAuthenticationError: 535" in log.text


def test_non_ascii_password_is_logged_not_raised(
    serve: Any,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    log: pytest.LogCaptureFixture,
) -> None:
    # smtplib encodes AUTH as ASCII and raises UnicodeEncodeError, which is no SMTPException.
    _, port = serve(tls_context=server_tls, require_starttls=True)
    config = mail_config(port, tls="starttls", user=USER, password_env=PASSWORD_ENV)
    n = notifier(config, ssl_context=client_tls, environ={PASSWORD_ENV: "pässwört"})
    assert n.send(archived_event()) is False
    assert "not ASCII" in log.text


def test_missing_password_variable_is_a_clear_error(serve: Any, log: pytest.LogCaptureFixture) -> None:
    server, port = serve()
    config = mail_config(port, user=USER, password_env="SRUNS_TEST_UNSET_PASSWORD")

    n = notifier(config, environ={})  # reported once at start, where the operator looks
    assert (
        "environment variable SRUNS_TEST_UNSET_PASSWORD (the password for mail user 'archiver') "
        "is not set" in log.text
    )
    log.clear()

    assert n.send(archived_event()) is False  # ... and again with each mail it costs
    assert server.received == []
    [record] = log.records
    assert record.levelno == logging.ERROR and "SRUNS_TEST_UNSET_PASSWORD" in record.getMessage()


def test_user_without_password_env_is_a_clear_error(log: pytest.LogCaptureFixture) -> None:
    n = notifier(mail_config(1, user=USER), environ={})
    assert n.send(archived_event()) is False
    assert "mail.password_env is not" in log.text


def test_password_env_without_user_sends_without_login(serve: Any, log: pytest.LogCaptureFixture) -> None:
    server, port = serve()
    n = notifier(mail_config(port, password_env=PASSWORD_ENV), environ={PASSWORD_ENV: PASSWORD})
    assert "mail.user is not" in log.text
    assert n.send(archived_event())
    assert server.logins == [] and not server.received[0].authenticated


def test_unwritable_header_from_config_is_logged_not_raised(log: pytest.LogCaptureFixture) -> None:
    n = notifier(
        MailConfig(host="127.0.0.1", from_addr="sruns@lab.example\nBcc: x@evil.example", to_addrs=("a@b",))
    )
    assert n.send(archived_event()) is False
    assert "cannot build the message" in log.text


# -- recipients refused --------------------------------------------------------------------------------


def test_some_recipients_refused_still_delivers_to_the_rest(
    serve: Any, log: pytest.LogCaptureFixture
) -> None:
    server, port = serve()
    assert notifier(mail_config(port, to_addrs=("ops@lab.example", REFUSED))).send(archived_event())
    assert server.received[0].rcpt_tos == ["ops@lab.example"]
    assert f"refused recipients {REFUSED} (550 5.1.1 no such user)" in log.text


def test_all_recipients_refused_is_logged_not_raised(serve: Any, log: pytest.LogCaptureFixture) -> None:
    server, port = serve()
    assert notifier(mail_config(port, to_addrs=(REFUSED,))).send(archived_event()) is False
    assert server.received == []
    assert "every recipient was refused" in log.text


# -- outages: the daemon must never crash or hang on mail ------------------------------------------------


def test_server_down_is_logged_not_raised(log: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there any more: connection refused
    assert notifier(mail_config(port)).send(archived_event()) is False
    [record] = [r for r in log.records if r.levelno == logging.ERROR]
    assert f"127.0.0.1:{port}" in record.getMessage()
    assert "ConnectionRefusedError" in record.getMessage()


@pytest.mark.timeout(10)  # a hang fails here; the log shows the client's own timeout fired
@pytest.mark.parametrize("tls", ["none", "ssl"])
def test_server_that_never_answers_costs_only_the_timeout(tls: str, log: pytest.LogCaptureFixture) -> None:
    # A listening socket that never accepts: the kernel completes the TCP handshake, then
    # nothing ever comes back (no banner, no TLS handshake), like a wedged or tarpitting server.
    with socket.socket() as tarpit:
        tarpit.bind(("127.0.0.1", 0))
        tarpit.listen(4)
        port = tarpit.getsockname()[1]
        assert notifier(mail_config(port, tls=tls), timeout=0.3).send(archived_event()) is False
    assert "timed out" in log.text


def test_server_stalling_after_data_costs_one_timeout(
    serve: Any,
    log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server greets, takes the envelope, then never answers the end of DATA. The client
    # must give up after one timeout and not say QUIT (which would wait a second timeout).
    server, port = serve()
    server.stall_data = True
    sent: list[str] = []
    real_putcmd = smtplib.SMTP.putcmd

    def spy_putcmd(self: smtplib.SMTP, cmd: str, args: str = "") -> None:
        sent.append(cmd.lower())  # observe only; the real command still goes out
        real_putcmd(self, cmd, args)

    monkeypatch.setattr(smtplib.SMTP, "putcmd", spy_putcmd)
    assert notifier(mail_config(port), timeout=0.3).send(archived_event()) is False
    assert "data" in sent and "quit" not in sent
    assert "timed out waiting for the server" in log.text


# -- choosing a notifier ---------------------------------------------------------------------------------


def test_make_notifier_without_mail_config_sends_nothing() -> None:
    n = make_notifier(None)
    assert isinstance(n, NullNotifier) and isinstance(n, Notifier)
    assert n.send(archived_event()) is False


def test_make_notifier_with_mail_config(serve: Any) -> None:
    server, port = serve()
    n = make_notifier(mail_config(port), host_name="archiver.example", clock=lambda: NOW)
    assert isinstance(n, SmtpNotifier) and isinstance(n, Notifier)
    assert n.send(MailEvent.stopping(sig=2))
    assert server.received[0].message["Subject"] == "[sruns-stream] daemon stopping (SIGINT)"
