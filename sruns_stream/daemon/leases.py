"""Leases: which daemon owns a run, when several share one watch directory.

The lease lives in the run's Firestore document (field ``lease``), beside the status
that `firestore` mirrors; see `Leases`.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from ..state.firestore import DEFAULT_CALL_TIMEOUT_S, FIRESTORE_ERRORS, Connection, describe_error

__all__ = ["Leases"]

log = logging.getLogger(__name__)


class Leases:
    """Which daemon owns a run, when several share one watch directory.

    The lease is the run document's ``lease`` field, ``{host, expires_at}``. A daemon
    `claim`s a run before starting it, `renew`s while working (well within
    ``lease_s``) and `release`s when done; a run whose lease expired (its owner died)
    can be claimed by another host.

    Every change is a compare-and-set: read the document, decide, write with the
    precondition "unchanged since that read" (its ``update_time``); if another writer
    came first, read again and decide again. This is what a Firestore transaction does,
    done by hand because the Python client's transaction begin/commit calls take no
    timeout (60 s and retried internally), and a hung Firestore must not hold the
    daemon. (Real transactions contending on one document are also very slow on the
    emulator.) Expiry is judged with the server's read time, never a host's clock, so
    hosts with skewed clocks agree.

    ``host`` is the owner's identity: a daemon that restarts on the same host gets its
    own leases back at once. Run one daemon per host, or give each a distinct id.

    Firestore unreachable: `claim` returns False (no new claims rather than double
    work); `renew` returns True only while the last successful claim or renewal still
    guarantees the lease (measured on this host's monotonic clock from before that
    call), so a short outage does not stop a long upload, and a long one does.
    """

    _ATTEMPTS = 4  # compare-and-set rounds lost to concurrent writers before giving up

    def __init__(
        self,
        collection: str,
        *,
        project: str | None = None,
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.collection = collection
        self._conn = Connection(project)
        self._call_timeout_s = call_timeout_s
        self._clock = clock
        # (run, host) -> monotonic time until which the lease is surely ours.
        self._held_until: dict[tuple[str, str], float] = {}

    def claim(self, name: str, host: str, lease_s: float) -> bool:
        """Take run ``name`` for ``lease_s`` seconds if nobody else holds a live lease.

        True when ``host`` holds it now (a new claim, an expired lease taken over, or
        its own lease extended); False when another host holds it or Firestore could
        not be asked.
        """
        return self._change(name, host, lease_s, take_free=True)

    def renew(self, name: str, host: str, lease_s: float) -> bool:
        """Extend ``host``'s lease on ``name`` by ``lease_s`` from now.

        False means stop working on the run: another host holds it, nobody does (it
        was released or taken and released), or Firestore has been unreachable for
        longer than the lease is guaranteed.
        """
        return self._change(name, host, lease_s, take_free=False)

    def release(self, name: str, host: str) -> bool:
        """Drop ``host``'s lease on ``name``; False if it was not held or Firestore could
        not be asked (the lease then expires by itself)."""
        self._held_until.pop((name, host), None)

        def decide(lease: dict[str, Any] | None, now: dt.datetime, data: dict[str, Any]) -> tuple[bool, object]:
            if lease is None or lease.get("host") != host:
                return False, _NO_WRITE
            return True, firestore.DELETE_FIELD

        try:
            return bool(self._compare_and_set(name, decide))
        except FIRESTORE_ERRORS as exc:
            self._conn.reset()
            log.warning("Firestore: cannot release lease on %s: %s", name, describe_error(exc))
            return False

    def close(self) -> None:
        self._conn.close()

    def _change(self, name: str, host: str, lease_s: float, take_free: bool) -> bool:
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, not {lease_s!r}")
        started = self._clock()

        def decide(lease: dict[str, Any] | None, now: dt.datetime, data: dict[str, Any]) -> tuple[bool, object]:
            if take_free and data.get("workflow_status") == "complete":
                return False, _NO_WRITE  # archived already, by whichever host
            owner = lease.get("host") if lease else None
            expires = lease.get("expires_at") if lease else None
            live = isinstance(expires, dt.datetime) and expires > now
            ours = owner == host
            if ours or (take_free and (owner is None or not live)):
                return True, {"host": host, "expires_at": now + dt.timedelta(seconds=lease_s)}
            return False, _NO_WRITE

        key = (name, host)
        try:
            ok = self._compare_and_set(name, decide)
            problem = "other writers kept changing the document" if ok is None else None
        except FIRESTORE_ERRORS as exc:
            self._conn.reset()
            ok, problem = None, describe_error(exc)
        if ok is None:
            if take_free:
                log.warning("Firestore: cannot claim %s, not starting it: %s", name, problem)
                return False
            held = self._clock() < self._held_until.get(key, float("-inf"))
            log.warning("Firestore: cannot renew the lease on %s (%s); %s", name, problem,
                        "still held" if held else "no longer guaranteed")
            return held
        if ok:
            # The server read happened after `started`, so its expiry is at least this.
            self._held_until[key] = started + lease_s
        else:
            self._held_until.pop(key, None)
        return ok

    def _compare_and_set(
        self,
        name: str,
        decide: Callable[[dict[str, Any] | None, dt.datetime, dict[str, Any]], tuple[bool, object]],
    ) -> bool | None:
        """Apply ``decide(lease, server_now, document) -> (result, new lease | _NO_WRITE)`` atomically;
        its result, or None when other writers won every round."""
        client = self._conn.get()
        ref = client.collection(self.collection).document(name)
        for _ in range(self._ATTEMPTS):
            snap = ref.get(retry=None, timeout=self._call_timeout_s)
            data = (snap.to_dict() or {}) if snap.exists else {}
            lease = data.get("lease") if isinstance(data.get("lease"), dict) else None
            ok, value = decide(lease, snap.read_time, data)
            if value is _NO_WRITE:
                return ok
            try:
                if snap.exists:
                    ref.update({"lease": value}, option=client.write_option(last_update_time=snap.update_time),
                               retry=None, timeout=self._call_timeout_s)
                else:
                    ref.create({"name": name, "lease": value}, retry=None, timeout=self._call_timeout_s)
            except (gexc.FailedPrecondition, gexc.Conflict, gexc.NotFound):
                # Another writer came between our read and write (changed, created or
                # deleted the document): read again and decide again.
                continue
            return ok
        return None  # every round lost to other writers


_NO_WRITE = object()
