"""Firestore mirror and reader, against the real Cloud Firestore emulator.

The emulator comes from plugins/firestore_emulator.py (started once, reset per test). Faults are
real too: the emulator process is killed (Firestore down), then started again on the
same port (back), or SIGSTOPped (hung: connections open, nothing answers). The only
stand-in is a plain listening socket in the no-collection test, used as a tripwire to
prove nothing connects at all.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import socket
import time
from typing import cast, get_args

import pytest
from google.cloud import firestore as gfs
from plugins.firestore_emulator import FirestoreEmulator

from sruns_stream.config import Config
from sruns_stream.errors import ConfigError, SrunsError
from sruns_stream.state.firestore import (
    BATCH_SIZE,
    FirestoreMirror,
    NoMirror,
    RunFields,
    RunRecord,
    WorkflowStatus,
    fields_from_task,
    lookup,
    open_mirror,
)
from sruns_stream.state.journal import STATUSES, Journal

COLL = "sruns"
RUN = "240101_M00001_0001_000000000-ABCDE"
T0 = dt.datetime(2024, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)

FULL: RunFields = {
    "storage": f"bucket/runs/{RUN}/{RUN}.tar.gz",
    "workflow_status": "uploading_complete",
    "raw_bytes": 123_456_789_012,
    "archive_bytes": 45_678_901_234,
    "crc32c": "0a1b2c3d",
    "file_count": 4321,
    "host": "archiver-1",
    "created_at": T0,
    "updated_at": T0 + dt.timedelta(hours=2),
    "started_at": (T0 + dt.timedelta(minutes=1)).timestamp(),  # epoch seconds, as the journal holds them
    "finished_at": T0 + dt.timedelta(hours=2),
    "throughput_mb_s": 512.5,
    "attempts": 2,
    "last_error": None,
    "instrument_status": "RunErrored",
    "run_id": "240101_M00001_0001_000000000-ABCDF",
    "moved_to": f"/data/completed/{RUN}",
    "moved_at": T0 + dt.timedelta(hours=3),
}


def test_record_fields_match_the_update_fields_and_statuses() -> None:
    assert {f.name for f in dataclasses.fields(RunRecord)} - {"name"} == set(RunFields.__annotations__)
    # sruns-monitor's values in its order, spelled out: downstream tools match these strings.
    assert get_args(WorkflowStatus) == STATUSES == (
        "new", "starting", "tarring", "tarring_complete", "uploading", "uploading_complete", "complete",
        "not_running",
    )


@pytest.mark.timeout(60)
def test_publish_then_flush_writes_every_field_under_sruns_monitor_names(
    mirror: FirestoreMirror, journal: Journal, firestore: FirestoreEmulator
) -> None:
    mirror.publish(RUN, **FULL)
    assert firestore.document(COLL, RUN) is None  # publish alone never reaches Firestore
    result = mirror.flush(deadline_s=20)
    assert (result.delivered, result.drained, result.error) == (1, True, None)
    assert journal.outbox() == []

    doc = firestore.document(COLL, RUN)
    assert doc == {
        "name": RUN,
        "storage": f"bucket/runs/{RUN}/{RUN}.tar.gz",
        "workflow_status": "uploading_complete",
        "raw_bytes": 123_456_789_012,
        "archive_bytes": 45_678_901_234,
        "crc32c": "0a1b2c3d",
        "file_count": 4321,
        "host": "archiver-1",
        # Firestore timestamps (the REST reader turns timestampValue into datetimes).
        "created_at": T0,
        "updated_at": T0 + dt.timedelta(hours=2),
        "started_at": T0 + dt.timedelta(minutes=1),
        "finished_at": T0 + dt.timedelta(hours=2),
        "throughput_mb_s": 512.5,
        "attempts": 2,
        "last_error": None,
        "instrument_status": "RunErrored",
        "run_id": "240101_M00001_0001_000000000-ABCDF",
        "moved_to": f"/data/completed/{RUN}",
        "moved_at": T0 + dt.timedelta(hours=3),
    }

    rec = lookup(RUN, COLL)
    assert rec is not None
    assert rec.archived and rec.archive_uri == f"gs://bucket/runs/{RUN}/{RUN}.tar.gz"
    assert rec.started_at == T0 + dt.timedelta(minutes=1)
    assert rec == RunRecord(name=RUN, **{k: doc[k] for k in doc if k != "name"})
    assert lookup("no-such-run", COLL) is None


@pytest.mark.timeout(60)
def test_updates_arrive_in_order_across_batches_and_runs(
    mirror: FirestoreMirror, journal: Journal, firestore: FirestoreEmulator
) -> None:
    other = "240102_M00001_0002_000000000-FGHIJ"
    mirror.publish(RUN, workflow_status="new", host="archiver-1", last_error="disk hiccup")
    # More updates than one commit takes, interleaving two runs.
    for i in range(BATCH_SIZE + 30):
        mirror.publish(RUN, workflow_status=cast(WorkflowStatus, STATUSES[1 + i % 5]), attempts=i)
        mirror.publish(other, workflow_status="tarring", attempts=i)
    mirror.publish(RUN, workflow_status="complete", last_error=None, storage="bucket/x.tar.gz")

    result = mirror.flush(deadline_s=30)
    assert result.drained and result.error is None
    assert result.delivered == 2 * (BATCH_SIZE + 30) + 2
    doc = firestore.document(COLL, RUN)
    assert doc is not None
    assert doc["workflow_status"] == "complete"  # the last one wins, not any earlier
    assert doc["attempts"] == BATCH_SIZE + 29
    assert doc["host"] == "archiver-1"  # set once, kept by later partial updates
    assert doc["last_error"] is None  # an explicit None clears a field
    other_doc = firestore.document(COLL, other)
    assert other_doc is not None and other_doc["attempts"] == BATCH_SIZE + 29


@pytest.mark.timeout(60)
def test_merge_keeps_fields_written_by_downstream_tools(
    mirror: FirestoreMirror, firestore: FirestoreEmulator
) -> None:
    # sruns-monitor's downstream pipelines add their own fields to the run's document.
    client = gfs.Client(project=firestore.project)
    client.collection(COLL).document(RUN).set({"name": RUN, "samplesheet_pubsub_data": "{}"})
    client.close()  # type: ignore[no-untyped-call]  # the client leaves it unannotated
    mirror.publish(RUN, workflow_status="complete")
    assert mirror.flush(deadline_s=20).drained
    doc = firestore.document(COLL, RUN)
    assert doc is not None
    assert doc["samplesheet_pubsub_data"] == "{}" and doc["workflow_status"] == "complete"


@pytest.mark.timeout(120)
def test_firestore_down_then_back_the_document_catches_up(
    mirror: FirestoreMirror, journal: Journal, firestore: FirestoreEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    mirror.publish(RUN, workflow_status="starting")
    assert mirror.flush(deadline_s=20).drained

    firestore.stop(crash=True)  # kill -9: connections refused from now on
    for status in ("tarring", "tarring_complete", "uploading", "uploading_complete"):
        mirror.publish(RUN, workflow_status=status)  # returns: only the journal is written
    mirror.publish(RUN, workflow_status="complete", archive_bytes=42)
    caplog.set_level(logging.DEBUG, logger="sruns_stream.state.firestore")
    # Five cycles over about 8 s of outage: long enough for gRPC's reconnect backoff to
    # outlast the emulator's restart, which is what a rebuilt client must not inherit.
    results = []
    for cycle in range(5):
        if cycle:
            time.sleep(2)
        t = time.monotonic()
        results.append(mirror.flush(deadline_s=3))
        # Not a speed check: a call left to the client's defaults would block for 60 s and more.
        assert time.monotonic() - t < 10
    for result in results:
        assert result.delivered == 0 and not result.drained
        assert result.error is not None and "ServiceUnavailable" in result.error
    queued = journal.outbox()
    assert [item.payload["workflow_status"] for item in queued] == [
        "tarring", "tarring_complete", "uploading", "uploading_complete", "complete"
    ]
    assert queued[0].attempts == 5  # the head records each failed delivery
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "stay queued" in warnings[0].getMessage()  # logged once per outage

    firestore.start()  # back, on the same port
    # The first cycle after the restart delivers everything: the failed flushes closed
    # their gRPC channels, so no reconnect backoff is left over (CI once saw three cycles
    # refused while old channels lingered).
    result = mirror.flush(deadline_s=20)
    assert (result.delivered, result.drained, result.error) == (5, True, None)
    assert journal.outbox() == []
    doc = firestore.document(COLL, RUN)
    assert doc is not None and doc["workflow_status"] == "complete" and doc["archive_bytes"] == 42
    assert any("reachable again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


@pytest.mark.timeout(60)
def test_hung_firestore_cannot_hold_a_flush_past_its_deadline(
    journal: Journal, firestore: FirestoreEmulator
) -> None:
    mirror = FirestoreMirror(journal, COLL, call_timeout_s=1.0)
    try:
        mirror.publish(RUN, workflow_status="starting")
        assert mirror.flush(deadline_s=20).drained  # connected and warm
        firestore.pause()  # SIGSTOP: the socket accepts, nothing answers
        mirror.publish(RUN, workflow_status="tarring")
        t = time.monotonic()
        result = mirror.flush(deadline_s=2)
        # Not a speed check: without the deadline a hung Firestore holds the call for 60 s.
        assert time.monotonic() - t < 30
        assert result.delivered == 0 and result.error is not None and "DeadlineExceeded" in result.error
        assert len(journal.outbox()) == 1

        firestore.resume()
        assert mirror.flush(deadline_s=20).drained
        doc = firestore.document(COLL, RUN)
        assert doc is not None and doc["workflow_status"] == "tarring"
    finally:
        mirror.close()


@pytest.mark.timeout(30)
def test_without_a_collection_nothing_is_queued_or_sent(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tripwire: a listening socket that would see any connection attempt.
    with socket.socket() as tripwire:
        tripwire.bind(("127.0.0.1", 0))
        tripwire.listen()
        tripwire.setblocking(False)
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{tripwire.getsockname()[1]}")
        mirror = open_mirror(Config(), journal)
        assert isinstance(mirror, NoMirror)
        mirror.publish(RUN, workflow_status="complete")
        assert mirror.flush(deadline_s=1).drained
        mirror.close()
        with pytest.raises(BlockingIOError):
            tripwire.accept()
    assert journal.outbox() == []
    assert isinstance(open_mirror(Config(firestore_collection=COLL), journal), FirestoreMirror)
    with pytest.raises(ConfigError, match="'firestore_collection' must be a collection name"):
        open_mirror(Config(firestore_collection="a/b"), journal)


def test_publish_refuses_what_it_could_never_deliver(
    journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    mirror = FirestoreMirror(journal, COLL)  # no network: publish only writes the journal
    with pytest.raises(TypeError, match="unknown run field 'status'"):
        mirror.publish(RUN, status="complete")  # type: ignore[call-arg]  # the mistake under test
    with pytest.raises(ValueError, match="workflow_status must be one of"):
        mirror.publish(RUN, workflow_status="done")  # type: ignore[arg-type]  # the mistake under test
    with pytest.raises(TypeError, match="raw_bytes must be an integer"):
        mirror.publish(RUN, raw_bytes="12")  # type: ignore[arg-type]  # the mistake under test
    mirror.publish("a/b", workflow_status="new")
    assert "cannot be mirrored" in caplog.text
    assert journal.outbox() == []
    mirror.close()


@pytest.mark.timeout(60)
def test_a_journal_task_republished_brings_the_document_up_to_date(
    mirror: FirestoreMirror, journal: Journal, firestore: FirestoreEmulator
) -> None:
    journal.ensure(
        RUN, status="complete", gcp_tarfile=f"b/{RUN}/{RUN}.tar.gz", location=f"b/{RUN}/{RUN}.tar.gz",
        raw_bytes=1000, archive_bytes=600, file_count=7, crc32c="deadbeef", attempts=1,
        session_started_at=T0.timestamp(), finished_at=T0.timestamp() + 60,
    )
    task = journal.get(RUN)
    assert task is not None
    mirror.publish(RUN, **fields_from_task(task, host="archiver-1", instrument_status="RunCompleted"))
    assert mirror.flush(deadline_s=20).drained
    rec = lookup(RUN, COLL)
    assert rec is not None and rec.archived
    assert (rec.storage, rec.raw_bytes, rec.archive_bytes, rec.file_count, rec.crc32c) == (
        f"b/{RUN}/{RUN}.tar.gz", 1000, 600, 7, "deadbeef"
    )
    assert rec.started_at == T0 and rec.finished_at == T0 + dt.timedelta(seconds=60)
    assert rec.instrument_status == "RunCompleted" and rec.host == "archiver-1"


@pytest.mark.timeout(30)
def test_lookup_raises_a_clear_error_when_firestore_is_down(
    firestore: FirestoreEmulator,
) -> None:
    firestore.stop(crash=True)
    with pytest.raises(SrunsError, match=f"cannot read run {RUN} from Firestore collection 'sruns'"):
        lookup(RUN, COLL, timeout_s=2)
