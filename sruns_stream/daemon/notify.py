"""Email operators about runs: typed events, an SMTP notifier that never raises, a null one.

The daemon builds a :class:`MailEvent` with one of its constructors
(``MailEvent.archived(run, raw_bytes=..., ...)``) and hands it to a :class:`Notifier`.
:class:`SmtpNotifier` turns it into a plain-text message with proper headers and
delivers it over SMTP (plain, STARTTLS or implicit TLS, optional login).

A mail is a courtesy, never a reason to stop archiving: sruns-monitor crashed when its
SMTP server was down. So every network step has a short timeout, the whole exchange a
deadline (:class:`ExchangeDeadline`: a server answering one byte at a time cannot
stretch it), and every delivery failure (refused connection, timeout, TLS or SMTP error,
missing password) is logged on the ``sruns_stream.daemon.notify`` logger and reported as
``False``; ``send`` never raises. The daemon sends through a :class:`DeliveryQueue`, on a
thread of its own, so that no server can hold up its loop or its stop.
"""

from __future__ import annotations

import contextlib
import email.policy
import enum
import logging
import os
import queue
import signal
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Protocol, runtime_checkable

from .. import __version__
from ..config import MailConfig
from ..humanize import ago, exact_bytes, hms, human_rate, ratio
from ..state.status import retry_command

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_SUBJECT_PREFIX",
    "DEFAULT_TIMEOUT",
    "DeliveryQueue",
    "EventKind",
    "ExchangeDeadline",
    "MailEvent",
    "Notifier",
    "Notifiers",
    "NullNotifier",
    "SmtpNotifier",
    "make_notifier",
    "takes",
]

logger = logging.getLogger(__name__)

#: Seconds any single SMTP step (connect, TLS handshake, each command) may take. Short,
#: because the daemon sends mail from its scheduling loop: a dead or tarpitting server
#: must cost it seconds, not hours.
DEFAULT_TIMEOUT = 20.0

#: Seconds a whole SMTP exchange (connect, TLS, login, the message, QUIT) may take. The
#: per-step timeout alone bounds nothing: a server sending a byte every few seconds
#: resets it with every byte.
DEFAULT_DEADLINE = 60.0

# RFC 5322's hard line limit is 998; its 78 is a SHOULD. With 78, CPython folds a header whose
# value holds a long unbreakable word (a run name, a Message-ID) by moving the whole value to
# a continuation line, which some readers then show with a leading space.
_POLICY = email.policy.default.clone(max_line_length=998)

#: Goes into ``[...]`` at the start of every subject; sruns-monitor's ``name`` key can replace it.
DEFAULT_SUBJECT_PREFIX = "sruns-stream"

# Everything a delivery attempt can raise that is about the mail, not about a bug here.
# ssl.SSLError is a subclass of OSError; it is named so the intent is plain to readers.
# UnicodeError: smtplib encodes AUTH credentials as ASCII, so a non-ASCII password fails there.
_DELIVERY_ERRORS = (OSError, ssl.SSLError, smtplib.SMTPException, UnicodeError)


class EventKind(str, enum.Enum):
    """What happened; the value is what the subject says after the run name."""

    STARTED = "started"
    ARCHIVED = "archived"
    FAILED = "failed"
    KILLED = "killed"
    GAVE_UP = "gave up"
    STOPPING = "daemon stopping"
    DAEMON_ERROR = "daemon error"


@dataclass(frozen=True)
class MailEvent:
    """One thing operators are told about. Build it with a constructor, not by hand.

    ``facts`` are ``(label, value)`` pairs shown as an aligned table in the body, in order;
    ``headline`` is what the subject says after the run name (``archived``,
    ``failed (attempt 2 of 5)``); ``summary`` is the body's first paragraph.
    """

    kind: EventKind
    run: str | None
    headline: str
    summary: str
    facts: tuple[tuple[str, str], ...] = ()

    # -- constructors: one per event the daemon mails -------------------------------------

    @classmethod
    def started(cls, run: str, *, host: str, destination: str, resumed: bool = False) -> MailEvent:
        """The daemon began (or, after a restart, resumed) archiving ``run``."""
        verb = "resumed from its checkpoint" if resumed else "started"
        return cls(
            EventKind.STARTED,
            run,
            "resumed" if resumed else EventKind.STARTED.value,
            f"Archiving of run {run} {verb} on {host}.",
            (("run", run), ("host", host), ("destination", destination)),
        )

    @classmethod
    def archived(
        cls,
        run: str,
        *,
        raw_bytes: int,
        archive_bytes: int,
        seconds: float,
        location: str,
        crc32c: str | None = None,
        files: int | None = None,
        instrument_status: str | None = None,
    ) -> MailEvent:
        """``run`` is stored and verified at ``location`` (the gcp_tarfile / storage path).

        The rate is run data read per second (MB = 10^6 bytes), which is what operators
        compare with their disk and network; ``seconds`` is the wall time of the archive.
        """
        facts: list[tuple[str, str]] = [
            ("run", run),
            ("location", location),
            ("raw size", exact_bytes(raw_bytes)),
            ("archive size", exact_bytes(archive_bytes)),
            ("ratio", f"{ratio(raw_bytes, archive_bytes)} (raw / archive)"),
            ("rate", human_rate(raw_bytes / seconds) if seconds > 0 else "n/a"),
            ("elapsed", hms(seconds)),
        ]
        if files is not None:
            facts.append(("files", f"{files:,}"))
        if crc32c is not None:
            facts.append(("crc32c", crc32c))
        if instrument_status is not None:
            # An errored or ended-early run is still archived; say so where it is noticed.
            facts.append(("instrument status", instrument_status))
        return cls(
            EventKind.ARCHIVED,
            run,
            EventKind.ARCHIVED.value,
            f"Run {run} is archived and verified at {location}.",
            tuple(facts),
        )

    @classmethod
    def failed(
        cls,
        run: str,
        *,
        error: str,
        attempt: int,
        max_attempts: int,
        will_retry: bool,
        retry_in_sec: float | None = None,
    ) -> MailEvent:
        """Attempt ``attempt`` of ``max_attempts`` at archiving ``run`` failed with ``error``."""
        if will_retry:
            when = f" {ago(-retry_in_sec)}" if retry_in_sec is not None else ""
            next_step = f"yes, it will be retried{when} from its checkpoint"
        else:
            next_step = "no"
        return cls(
            EventKind.FAILED,
            run,
            f"failed (attempt {attempt} of {max_attempts})",
            f"Archiving run {run} failed on attempt {attempt} of {max_attempts}.",
            (
                ("run", run),
                ("error", _one_line(error)),
                ("attempt", f"{attempt} of {max_attempts}"),
                ("will retry", next_step),
            ),
        )

    @classmethod
    def killed(cls, run: str, *, pid: int, runtime_sec: float, limit_sec: float) -> MailEvent:
        """The workflow for ``run`` (process ``pid``) overran ``task_runtime_limit_sec``."""
        return cls(
            EventKind.KILLED,
            run,
            "killed (runtime limit exceeded)",
            f"The workflow archiving run {run} ran longer than task_runtime_limit_sec and was killed.",
            (
                ("run", run),
                ("pid", str(pid)),
                ("runtime", hms(runtime_sec)),
                ("limit", hms(limit_sec)),
            ),
        )

    @classmethod
    def gave_up(cls, run: str, *, error: str, attempts: int, retry: str | None = None) -> MailEvent:
        """Retries for ``run`` are exhausted; the daemon mails this once and stops trying.
        ``retry`` is the command that makes it eligible again (`status.retry_command`)."""
        return cls(
            EventKind.GAVE_UP,
            run,
            f"gave up after {attempts} attempts",
            f"Archiving run {run} failed {attempts} times. It will not be retried automatically, "
            f"and this is the only mail about it. Once the cause is fixed, `{retry or retry_command(run)}` "
            "makes it eligible again.",
            (("run", run), ("last error", _one_line(error)), ("attempts", str(attempts))),
        )

    @classmethod
    def stopping(cls, *, sig: int | str, interrupted: Sequence[str] = ()) -> MailEvent:
        """The daemon is stopping on signal ``sig``; ``interrupted`` runs resume at the next start."""
        name = _signal_name(sig)
        runs = ", ".join(interrupted) if interrupted else "none"
        return cls(
            EventKind.STOPPING,
            None,
            f"daemon stopping ({name})",
            f"The sruns-stream daemon received {name} and is stopping. Interrupted runs stop at a "
            "checkpoint and resume from it when the daemon starts again.",
            (("signal", name), ("runs interrupted", runs)),
        )

    @classmethod
    def daemon_error(cls, error: str) -> MailEvent:
        """The daemon itself hit an unexpected error (sruns-monitor mailed these too)."""
        return cls(
            EventKind.DAEMON_ERROR,
            None,
            EventKind.DAEMON_ERROR.value,
            "The sruns-stream daemon hit an unexpected error.",
            (("error", _one_line(error)),),
        )

    # -- rendering --------------------------------------------------------------------------

    def subject(self, prefix: str = DEFAULT_SUBJECT_PREFIX) -> str:
        """``[prefix] <run>: <headline>``, or ``[prefix] <headline>`` for daemon events."""
        text = f"[{prefix}] {self.run}: {self.headline}" if self.run else f"[{prefix}] {self.headline}"
        # A header may not hold a line break, and a run name is only a folder name.
        return _clean(" ".join(text.split()))

    def body(self) -> str:
        """The plain-text body: the summary, then the facts as an aligned table."""
        width = max((len(label) for label, _ in self.facts), default=0) + 1
        # One line per fact: a value holding a line break (a folder name can) would break the table.
        table = "\n".join(
            f"  {label + ':':<{width}} {' '.join(value.split())}" for label, value in self.facts
        )
        return _clean(f"{self.summary}\n\n{table}\n" if table else f"{self.summary}\n")


@runtime_checkable
class Notifier(Protocol):
    """Where the daemon sends events. ``send`` never raises; True means the server took it."""

    def send(self, event: MailEvent) -> bool: ...


def takes(notifier: Notifier, event: MailEvent) -> bool:
    """Whether ``notifier`` would send ``event`` anywhere: a notifier that sends only some
    kinds (the webhook) or none (`NullNotifier`) says so with a ``takes`` method."""
    method = getattr(notifier, "takes", None)
    return True if method is None else bool(method(event))


class NullNotifier:
    """Used when no ``mail`` block is configured: logs the event at debug level, sends nothing."""

    def takes(self, event: MailEvent) -> bool:
        return False

    def send(self, event: MailEvent) -> bool:
        logger.debug("mail not configured; not sending %r", event.subject())
        return False


class Notifiers:
    """Several notifiers as one (mail and a webhook): each is sent every event; True if
    any took it. None raises, so neither keeps the other from sending."""

    def __init__(self, *notifiers: Notifier) -> None:
        self.notifiers = notifiers

    def takes(self, event: MailEvent) -> bool:
        return any(takes(notifier, event) for notifier in self.notifiers)

    def send(self, event: MailEvent) -> bool:
        sent = [notifier.send(event) for notifier in self.notifiers]  # all of them, not up to the first True
        return any(sent)


class ExchangeDeadline:
    """A time limit on a whole network exchange, which a server cannot extend.

    A socket timeout bounds each operation, and a server that sends one byte every few
    seconds satisfies every one of them for ever. So each socket of the exchange is
    registered with :meth:`watch`; when ``seconds`` have passed, a timer thread shuts
    them down (``shutdown(2)``, which wakes a ``recv`` or ``send`` blocked in another
    thread), and the exchange fails at once; a block that ends normally after that raises
    TimeoutError. Use it as a context manager around the exchange.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._copies: list[socket.socket] = []
        self._done = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> ExchangeDeadline:  # noqa: PYI034 - typing.Self needs Python 3.11; we support 3.10
        self._timer.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        with self._lock:
            self._done = True
            for copy in self._copies:
                copy.close()
        self._timer.cancel()
        if self.expired and exc_type is None:
            # A socket shut down mid-answer reads as an early end, which can parse as a
            # complete (short) answer: an exchange cut off at the deadline never succeeded.
            raise TimeoutError(f"no complete exchange within the {self.seconds:g} s deadline")

    def watch(self, sock: socket.socket) -> socket.socket:
        """Shut ``sock`` down at the deadline (now, if it has passed); returns it."""
        # A descriptor of our own for the same connection: it stays open (never reused for
        # something else) until the exchange ends, however the exchange closes its own, and
        # it survives the socket being wrapped in TLS (a new object on the same descriptor).
        copy = socket.socket(fileno=os.dup(sock.fileno()))
        with self._lock:
            self._copies.append(copy)
            if self.expired:
                _shut_down(copy)
        return sock

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            for copy in self._copies:
                _shut_down(copy)


def _shut_down(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # not connected (any more): nothing is waiting on it
        sock.shutdown(socket.SHUT_RDWR)


_STOP = object()  # tells the delivery thread to finish


class DeliveryQueue:
    """Sends events through ``notifier`` on one thread of its own, so that a slow or
    hung server (a webhook trickling its answer, an SMTP server that stopped reading)
    never holds up the caller: `send` only queues, and returns at once.

    At most ``size`` events wait; another one is dropped with an error line naming it.
    `close` gives those waiting ``grace`` seconds, then logs each one not delivered and
    returns; the thread is a daemon thread, so one stuck in an exchange (which its
    notifier's deadline ends anyway) never keeps the process from exiting.
    """

    def __init__(self, notifier: Notifier, *, size: int = 100, subject_prefix: str = DEFAULT_SUBJECT_PREFIX) -> None:
        self.notifier = notifier
        self.size = size
        self.subject_prefix = subject_prefix
        self._queue: queue.Queue[object] = queue.Queue()  # bounded by send, the only producer besides close
        self._lock = threading.Lock()
        self._current: MailEvent | None = None
        self._closed = False
        self._abandoned = False
        self._thread: threading.Thread | None = None

    def send(self, event: MailEvent) -> bool:
        """Queue ``event`` for delivery; False if it was dropped (full, or closed)."""
        if not takes(self.notifier, event):
            return self.notifier.send(event)  # goes nowhere (no mail, a webhook kind): at once, no network
        if self._closed:
            self._not_delivered(event, "the daemon is stopping")
            return False
        if self._queue.qsize() >= self.size:
            self._not_delivered(event, f"the delivery queue is full ({self.size} waiting: the mail server "
                                       "or webhook is slow or not answering)")
            return False
        if self._thread is None:  # started on first use: a daemon that never sends needs no thread
            self._thread = threading.Thread(target=self._deliver, name="sruns-notify", daemon=True)
            self._thread.start()
        self._queue.put(event)
        return True

    def close(self, grace: float) -> None:
        """Take no more events; wait up to ``grace`` s for the queued ones, then log each
        one left (and the one being sent) as not delivered. Can be called twice."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(grace)
        with self._lock:
            self._abandoned = True
            left = [self._current] if self._current is not None else []
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, MailEvent):
                    left.append(item)
        for event in left:
            self._not_delivered(event, f"the daemon stopped before it was delivered (waited {grace:g} s)")

    def _deliver(self) -> None:
        while True:
            item = self._queue.get()
            with self._lock:
                if item is _STOP or self._abandoned:
                    # After close gave up, close logged what it found; this one it did not.
                    if isinstance(item, MailEvent):
                        self._not_delivered(item, "the daemon stopped before it was delivered")
                    return
                assert isinstance(item, MailEvent)
                self._current = item
            try:
                self.notifier.send(item)
            except Exception:  # send never raises; a bug in one must not end every later delivery
                logger.exception("notification %r: sending it failed", item.subject(self.subject_prefix))
            finally:
                with self._lock:
                    self._current = None

    def _not_delivered(self, event: MailEvent, why: str) -> None:
        logger.error("notification %r not delivered: %s", event.subject(self.subject_prefix), why)


class SmtpNotifier:
    """Deliver events over SMTP as configured in :class:`MailConfig`.

    ``host_name`` names this machine in the footer and the Message-ID (default: the
    host name). ``clock`` gives the Date header's time. ``ssl_context`` replaces the system
    trust store for STARTTLS/SSL, for a private CA (and tests). ``environ`` is where the
    password is looked up, read once here. ``subject_prefix`` replaces ``sruns-stream`` in
    ``[...]``, as sruns-monitor's ``name`` did. ``timeout`` bounds each network step,
    ``deadline`` the whole exchange.
    """

    def __init__(
        self,
        config: MailConfig,
        *,
        host_name: str | None = None,
        clock: Callable[[], float] = time.time,
        timeout: float = DEFAULT_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
        ssl_context: ssl.SSLContext | None = None,
        environ: Mapping[str, str] | None = None,
        subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
    ) -> None:
        if config.tls not in ("none", "starttls", "ssl"):
            # config.py refuses this already; checked again because a MailConfig can be built by hand.
            raise ValueError(f"MailConfig.tls must be none, starttls or ssl, not {config.tls!r}")
        self.config = config
        self.host_name = host_name or socket.gethostname()
        self.clock = clock
        self.timeout = timeout
        self.deadline = deadline
        self.subject_prefix = subject_prefix
        self._ssl_context = ssl_context
        self._password: str | None = None
        # Why a login cannot happen, if it cannot; reported at start and again with each unsent mail.
        self._login_problem: str | None = None
        if config.user:
            env = os.environ if environ is None else environ
            if not config.password_env:
                self._login_problem = (
                    f"mail user {config.user!r} is set but mail.password_env is not: "
                    "name the environment variable holding the password"
                )
            elif config.password_env not in env:
                self._login_problem = (
                    f"environment variable {config.password_env} (the password for mail user "
                    f"{config.user!r}) is not set"
                )
            else:
                self._password = env[config.password_env]
            if self._login_problem:
                logger.error("mail cannot be sent: %s", self._login_problem)
        elif config.password_env:
            logger.warning("mail.password_env is set but mail.user is not: sending without login")

    def build_message(self, event: MailEvent) -> EmailMessage:
        """The message ``send`` delivers: headers plus a plain-text body with a footer."""
        msg = EmailMessage(policy=_POLICY)
        msg["From"] = self.config.from_addr
        msg["To"] = ", ".join(self.config.to_addrs)
        msg["Subject"] = event.subject(self.subject_prefix)
        msg["Date"] = formatdate(self.clock(), localtime=True)
        msg["Message-ID"] = make_msgid(idstring="sruns-stream", domain=self.host_name)
        msg.set_content(f"{event.body()}\n-- \nsruns-stream {__version__} on {self.host_name}\n")
        return msg

    def send(self, event: MailEvent) -> bool:
        """Deliver ``event``. Returns True if the server accepted it; never raises for mail trouble."""
        where = f"{self.config.host}:{self.config.port}"
        try:
            msg = self.build_message(event)
        except ValueError as exc:
            # The email package refuses header values it cannot write, e.g. an address from the
            # config holding a line break: a config problem, reported rather than raised.
            logger.error("mail %r not sent: cannot build the message: %s", event.subject(), exc)
            return False
        subject = msg["Subject"]
        if self._login_problem:
            logger.error("mail %r not sent: %s", subject, self._login_problem)
            return False
        deadline = ExchangeDeadline(self.deadline)
        try:
            refused = self._deliver(msg, deadline)
        except _DELIVERY_ERRORS as exc:
            # One line for the operator; the traceback only when debugging the daemon.
            logger.error(
                "mail %r not sent via %s (tls %s): %s",
                subject,
                where,
                self.config.tls,
                f"no complete exchange within the {self.deadline:g} s deadline" if deadline.expired
                else _describe(exc),
                exc_info=logger.isEnabledFor(logging.DEBUG),
            )
            return False
        if refused:
            logger.warning(
                "mail %r: server %s refused recipients %s",
                subject,
                where,
                ", ".join(
                    f"{addr} ({code} {_text(reply)})" for addr, (code, reply) in sorted(refused.items())
                ),
            )
        logger.info(
            "mailed %r to %d recipient(s) via %s", subject, len(self.config.to_addrs) - len(refused), where
        )
        return True

    def _deliver(self, msg: EmailMessage, deadline: ExchangeDeadline) -> dict[str, tuple[int, bytes]]:
        """Connect, secure, log in, send; returns the recipients the server refused."""
        cfg = self.config
        smtp: smtplib.SMTP
        # Not connected by the constructor, so that the socket is watched from before the
        # greeting; the constructor would also have set _host (TLS checks the name against it).
        if cfg.tls == "ssl":
            smtp = smtplib.SMTP_SSL(timeout=self.timeout, context=self._context())
        else:
            smtp = smtplib.SMTP(timeout=self.timeout)
        smtp._host = cfg.host  # type: ignore[attr-defined]
        # _get_socket is where smtplib opens (and for SMTP_SSL, wraps) its socket; not in typeshed.
        get_socket = smtp._get_socket  # type: ignore[attr-defined]
        smtp._get_socket = (  # type: ignore[attr-defined]
            lambda host, port, timeout: deadline.watch(get_socket(host, port, timeout))
        )
        refused: dict[str, tuple[int, bytes]] | None = None
        try:
            with deadline:
                refused = self._exchange(smtp, msg)
        except TimeoutError:
            if refused is None:
                raise
            # The message was accepted; only the goodbye ran into the deadline.
        finally:
            # Not `with smtp:` — its __exit__ sends QUIT even after a timeout, which would
            # wait a second full timeout on a server that has stopped answering.
            smtp.close()
        return refused

    def _exchange(self, smtp: smtplib.SMTP, msg: EmailMessage) -> dict[str, tuple[int, bytes]]:
        cfg = self.config
        code, reply = smtp.connect(cfg.host, cfg.port)
        if code != 220:  # as the constructor checks when it connects
            raise smtplib.SMTPConnectError(code, reply)
        if cfg.tls == "starttls":
            smtp.starttls(context=self._context())
        if cfg.user and self._password is not None:
            smtp.login(cfg.user, self._password)
        refused = smtp.send_message(msg, from_addr=cfg.from_addr, to_addrs=list(cfg.to_addrs))
        try:
            smtp.quit()
        except _DELIVERY_ERRORS as exc:
            # The message was already accepted; a rude goodbye changes nothing.
            logger.debug("SMTP QUIT failed after delivery: %s", exc)
        return refused

    def _context(self) -> ssl.SSLContext:
        return self._ssl_context if self._ssl_context is not None else ssl.create_default_context()


def make_notifier(
    config: MailConfig | None,
    *,
    host_name: str | None = None,
    clock: Callable[[], float] = time.time,
    timeout: float = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
    ssl_context: ssl.SSLContext | None = None,
    environ: Mapping[str, str] | None = None,
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
) -> Notifier:
    """An :class:`SmtpNotifier` for a ``mail`` block, a :class:`NullNotifier` without one."""
    if config is None:
        return NullNotifier()
    return SmtpNotifier(
        config,
        host_name=host_name,
        clock=clock,
        timeout=timeout,
        deadline=deadline,
        ssl_context=ssl_context,
        environ=environ,
        subject_prefix=subject_prefix,
    )


# -- helpers ------------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    """A one-line reason an operator can act on, naming the kind of failure."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "every recipient was refused: " + ", ".join(
            f"{addr} ({code} {_text(reply)})" for addr, (code, reply) in sorted(exc.recipients.items())
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{type(exc).__name__}: {exc.smtp_code} {_text(exc.smtp_error)}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc}"
    if isinstance(exc, TimeoutError) or (
        # smtplib turns a read timeout into "Connection unexpectedly closed: timed out".
        isinstance(exc, smtplib.SMTPServerDisconnected) and isinstance(exc.__context__, TimeoutError)
    ):
        return "timed out waiting for the server"
    if isinstance(exc, UnicodeError):
        return f"credentials or addresses are not ASCII: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def _one_line(text: str) -> str:
    """Errors go in a table row; keep their first line (a traceback belongs in the log)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


def _signal_name(sig: int | str) -> str:
    if isinstance(sig, str):
        return sig
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _clean(text: str) -> str:
    # Run names come from folder names, which may hold undecodable bytes (surrogate escapes);
    # those cannot be encoded into a message, so they become '?' instead of failing.
    return text.encode("utf-8", "replace").decode("utf-8")
