"""Leases for several daemons on one share, against the real Cloud Firestore emulator
(plugins/firestore_emulator.py): concurrent claims, takeover after expiry, outages."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from google.cloud import firestore as gfs
from plugins.firestore_emulator import FirestoreEmulator

from sruns_stream.daemon.leases import Leases
from sruns_stream.state.firestore import FirestoreMirror

COLL = "sruns"
RUN = "240101_M00001_0001_000000000-ABCDE"


@pytest.mark.timeout(60)
def test_two_claimers_only_one_wins(firestore: FirestoreEmulator) -> None:
    hosts = ["host-a", "host-b"]
    leases = [Leases(COLL, call_timeout_s=5) for _ in hosts]
    barrier = threading.Barrier(len(hosts))
    won: dict[str, bool] = {}

    def claim(i: int) -> None:
        barrier.wait()
        won[hosts[i]] = leases[i].claim(RUN, hosts[i], lease_s=60)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(hosts))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    try:
        assert sorted(won.values()) == [False, True]
        winner = next(h for h, ok in won.items() if ok)
        loser = next(h for h, ok in won.items() if not ok)
        w, lo = leases[hosts.index(winner)], leases[hosts.index(loser)]
        doc = firestore.document(COLL, RUN)
        assert doc is not None and doc["lease"]["host"] == winner

        assert lo.claim(RUN, loser, 60) is False  # still live
        assert lo.renew(RUN, loser, 60) is False  # not its lease
        assert lo.release(RUN, loser) is False
        assert w.renew(RUN, winner, 60) is True
        assert w.claim(RUN, winner, 60) is True  # its own lease: a restarted daemon gets it back
        assert w.release(RUN, winner) is True
        assert "lease" not in (firestore.document(COLL, RUN) or {})
        assert lo.claim(RUN, loser, 60) is True  # free now
    finally:
        for lease in leases:
            lease.close()


@pytest.mark.timeout(60)
def test_an_expired_lease_is_taken_over_and_its_owner_told(
    mirror: FirestoreMirror, firestore: FirestoreEmulator
) -> None:
    # The run document exists with status fields, and a lease its owner stopped renewing.
    mirror.publish(RUN, workflow_status="tarring", host="dead-host")
    assert mirror.flush(deadline_s=20).drained
    client = gfs.Client(project=firestore.project)
    client.collection(COLL).document(RUN).update(
        {"lease": {"host": "dead-host", "expires_at": dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)}}
    )
    client.close()  # type: ignore[no-untyped-call]  # the client leaves it unannotated

    leases = Leases(COLL)
    try:
        assert leases.claim(RUN, "live-host", lease_s=60) is True
        doc = firestore.document(COLL, RUN)
        assert doc is not None
        assert doc["lease"]["host"] == "live-host" and doc["workflow_status"] == "tarring"
        assert doc["lease"]["expires_at"] > dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=30)
        assert leases.renew(RUN, "dead-host", 60) is False  # the old owner must stop

        # Status updates after the claim do not disturb the lease.
        mirror.publish(RUN, workflow_status="complete", host="live-host")
        assert mirror.flush(deadline_s=20).drained
        doc = firestore.document(COLL, RUN)
        assert doc is not None and doc["lease"]["host"] == "live-host"
    finally:
        leases.close()


@pytest.mark.timeout(60)
def test_leases_while_firestore_is_down(firestore: FirestoreEmulator) -> None:
    now = [0.0]
    leases = Leases(COLL, call_timeout_s=1, clock=lambda: now[0])
    try:
        assert leases.claim(RUN, "host-a", lease_s=60)
        firestore.stop(crash=True)
        assert leases.claim("another-run", "host-a", 60) is False  # no new claims
        now[0] = 59.0
        assert leases.renew(RUN, "host-a", 60) is True  # still guaranteed by the last claim
        now[0] = 61.0
        assert leases.renew(RUN, "host-a", 60) is False  # not any more: stop working
        assert leases.release(RUN, "host-a") is False
    finally:
        leases.close()
