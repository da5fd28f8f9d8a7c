"""What the daemon says, in real processes: a start-up line naming what it watches and
where it archives, a shutdown line, and with -v one line per run it is not archiving
and why; `--log-format json` for Cloud Logging and journald; a watch directory that is
not there stops it at start with one line (exit 2)."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
from helpers import journal_row, run_cli, start_cli, wait_until

from sruns_stream import __version__

pytestmark = pytest.mark.slow


def _setup(tmp_path: Path, **extra) -> tuple[Path, dict[str, Path]]:
    import make_fake_run

    watch = tmp_path / "watch"
    runs = {
        "done": watch / "240101_M00001_0001_000000000-DONE1",  # finished long ago: archived
        "sequencing": watch / "240101_M00001_0002_000000000-SEQNG",  # no marker yet
        "copying": watch / "240101_M00001_0003_000000000-COPYN",  # CopyComplete.txt just written
    }
    make_fake_run.make_run(runs["done"], "miseq", 1 << 20, seed=1)
    make_fake_run.make_run(runs["sequencing"], "miseq", 1 << 20, seed=2, markers=False)
    make_fake_run.make_run(runs["copying"], "miseq", 1 << 20, seed=3, markers=False)
    (runs["copying"] / "CopyComplete.txt").write_text("")
    conf = {
        "watchdir": str(watch), "sqlite_db": str(tmp_path / "state" / "sruns.db"),
        "local_dest": str(tmp_path / "archives"), "cycle_pause_sec": 1, "sentinal_file_age_minutes": 60,
        "threads": 2,
    }
    (tmp_path / "state").mkdir()
    conf.update(extra)
    path = tmp_path / "conf.json"
    path.write_text(json.dumps(conf))
    return path, runs


def _started_line(conf: Path, tmp_path: Path, mode: str) -> re.Pattern[str]:
    return re.compile(
        rf"sruns-stream {re.escape(__version__)} monitor started \(pid \d+, host \S+\): config {re.escape(str(conf))}; "
        rf"watching {re.escape(str(tmp_path / 'watch'))}; destination {re.escape(str(tmp_path / 'archives'))}; "
        rf"journal {re.escape(str(tmp_path / 'state' / 'sruns.db'))}; {re.escape(mode)}, at most 1 run\(s\) at a time"
    )


@pytest.mark.timeout(180)
def test_start_up_shutdown_and_verbose_waiting_lines(tmp_path: Path) -> None:
    conf, runs = _setup(tmp_path)
    proc = run_cli("monitor", "--config", str(conf), "--once", "-v", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert _started_line(conf, tmp_path, "one pass (--once)").search(lines[0]), lines[0]
    assert lines[-1].endswith("sruns-stream monitor stopped (--once finished): no archive was running"), lines[-1]
    assert journal_row(tmp_path / "state" / "sruns.db", runs["done"].name)["status"] == "complete"
    # One line says it is archived, where, how big (SI, as everywhere), its crc32c and how long.
    archive = tmp_path / "archives" / runs["done"].name / f"{runs['done'].name}.tar.gz"
    archived = [line for line in lines if " archived to " in line]
    assert len(archived) == 1 and re.search(
        rf" INFO sruns_stream\.daemon\.monitor: {runs['done'].name}: archived to {re.escape(str(archive))}: "
        r"[\d.]+ [kM]B \(raw [\d.]+ [kM]B, ratio \d+\.\d\d\), crc32c [0-9a-f]{8}, [\d,]+ files, in \d:\d\d:\d\d$",
        archived[0]), archived

    waiting = {name: [line.split(": waiting: ", 1)[1] for line in lines if f" {name}: waiting: " in line]
               for name in (runs["sequencing"].name, runs["copying"].name)}
    # While the finished run is archived the others wait for the slot; then for their markers,
    # said once however many cycles they wait.
    slot = "not considered yet: 1 archive(s) running (max_concurrent_runs 1)"
    no_marker = ("not finished: no completion marker yet (none of RunCompletionStatus.xml, CopyComplete.txt, "
                 "RTAComplete.txt, RTAComplete.xml, SequenceComplete.txt, SequencingComplete.txt)")
    assert waiting[runs["sequencing"].name] == [slot, no_marker], waiting
    assert waiting[runs["copying"].name][0] == slot and len(waiting[runs["copying"].name]) == 2, waiting
    assert re.fullmatch(r"not finished: CopyComplete.txt is \d+ s old; waiting until it is 3600 s old "
                        r"\(sentinal_file_age_minutes\)", waiting[runs["copying"].name][1]), waiting
    assert not any("waiting" in line and runs["done"].name in line for line in lines)

    quiet = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
    assert quiet.returncode == 0
    assert _started_line(conf, tmp_path, "one pass (--once)").search(quiet.stderr.splitlines()[0])
    assert "waiting" not in quiet.stderr  # only with -v


@pytest.mark.timeout(180)
def test_json_log_lines_and_a_shutdown_line_on_sigterm(tmp_path: Path) -> None:
    conf, runs = _setup(tmp_path)
    daemon = start_cli("monitor", "--config", str(conf), "--log-format", "json", "-v", cwd=tmp_path)
    wait_until(lambda: journal_row(tmp_path / "state" / "sruns.db", runs["done"].name).get("status") == "complete",
               "the finished run archived", proc=daemon)
    daemon.send_signal(signal.SIGTERM)
    _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    entries = [json.loads(line) for line in err.splitlines()]  # every line is one JSON object
    assert all(set(e) >= {"time", "severity", "message", "logger"} for e in entries)
    assert _started_line(conf, tmp_path, "every 1 s").fullmatch(entries[0]["message"]), entries[0]
    assert entries[0]["severity"] == "INFO" and entries[0]["time"].endswith("+00:00")
    assert entries[-1]["message"] == "sruns-stream monitor stopped (stop requested): no archive was running"
    assert any(e["severity"] == "DEBUG" and e["message"].startswith(f"{runs['sequencing'].name}: waiting: ")
               for e in entries)


@pytest.mark.timeout(60)
def test_a_missing_watch_directory_is_a_configuration_error(tmp_path: Path) -> None:
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"watchdirs": [str(tmp_path / "nowhere")], "sqlite_db": str(tmp_path / "sruns.db"),
                                "local_dest": str(tmp_path / "archives")}))
    proc = run_cli("monitor", "--config", str(conf), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (f"sruns-stream: error: watch directory {tmp_path / 'nowhere'} does not exist or is not "
                           f"a directory: create (or mount) it, or fix 'watchdirs' in {conf}\n")
    assert sorted(os.listdir(tmp_path)) == ["conf.json"]  # no journal made


def _archived_event_matches_the_file(entry: dict, run: Path, archive: Path) -> None:
    """The archived line's facts against the archive file itself (size, and crc32c by
    google-crc32c, not our code)."""
    import google_crc32c

    data = archive.read_bytes()
    assert entry["severity"] == "INFO" and entry["run"] == run.name
    assert entry["location"] == str(archive) and entry["archive_bytes"] == len(data)
    assert entry["crc32c"] == f"{google_crc32c.value(data):08x}"
    raw = sum(p.lstat().st_size for p in run.rglob("*") if p.is_file() and not p.is_symlink())
    assert entry["raw_bytes"] >= raw and entry["files"] > 0 and entry["seconds"] >= 0
    assert entry["message"].startswith(f"{run.name}: archived to {archive}: ")
    assert f"crc32c {entry['crc32c']}" in entry["message"] and " in 0:" in entry["message"]


@pytest.mark.timeout(180)
def test_one_line_per_archived_moved_and_swept_run_with_its_facts_as_json_fields(tmp_path: Path) -> None:
    conf, runs = _setup(tmp_path, completed_runs_dir=str(tmp_path / "completed"), sweep_age_sec=1)
    run = runs["done"]
    original = {p.relative_to(run): p.lstat().st_size for p in run.rglob("*")}
    db = tmp_path / "state" / "sruns.db"
    daemon = start_cli("monitor", "--config", str(conf), "--log-format", "json", cwd=tmp_path)
    wait_until(lambda: journal_row(db, run.name).get("swept_at"), "the finished run archived, moved and swept",
               proc=daemon, timeout=120)
    daemon.send_signal(signal.SIGTERM)
    _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    entries = [json.loads(line) for line in err.splitlines()]
    events = [e for e in entries if "event" in e]
    assert [e["event"] for e in events] == ["started", "archived", "moved", "swept"], events
    assert all(e["run"] == run.name for e in events)
    archive = tmp_path / "archives" / run.name / f"{run.name}.tar.gz"
    moved = tmp_path / "completed" / run.name
    _archived_event_matches_the_file(events[1], _extracted(archive, tmp_path, original), archive)
    assert events[2]["moved_to"] == str(moved) and events[2]["message"] == f"{run.name}: moved to {moved}"
    assert events[3]["folder"] == str(moved) and events[3]["message"] == f"{run.name}: swept {moved}"
    assert all(e["severity"] == "INFO" for e in events) and not moved.exists()


def _extracted(archive: Path, tmp_path: Path, original: dict) -> Path:
    """The run as GNU tar extracts it from the archive (the run folder itself is swept by now)."""
    from helpers import gnu_untar

    gnu_untar(archive, tmp_path / "out")
    run = next((tmp_path / "out").iterdir())
    assert {p.relative_to(run): p.lstat().st_size for p in run.rglob("*")} == original
    return run


@pytest.mark.timeout(180)
def test_a_failed_attempt_and_giving_up_are_one_line_each_with_fields(tmp_path: Path) -> None:
    conf, runs = _setup(tmp_path, max_attempts=2)
    (tmp_path / "archives").write_text("not a directory")  # every attempt fails with a clear error
    name = runs["done"].name
    first = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)  # the text log
    assert first.returncode == 0, first.stderr
    failed = [line for line in first.stderr.splitlines() if " failed (" in line]
    assert len(failed) == 1 and re.search(rf" WARNING sruns_stream\.daemon\.monitor: {name}: attempt 1 failed \(.*"
                                          r"cannot write.*\); retrying in 60 s$", failed[0]), first.stderr
    import sqlite3

    db = sqlite3.connect(tmp_path / "state" / "sruns.db")
    db.execute("UPDATE tasks SET next_attempt_at = 0")
    db.commit()
    db.close()
    second = run_cli("monitor", "--config", str(conf), "--once", "--log-format", "json", cwd=tmp_path)
    events = [e for e in map(json.loads, second.stderr.splitlines()) if e.get("event") not in (None, "started")]
    assert len(events) == 1, events
    gave_up = events[0]
    assert gave_up["event"] == "gave_up" and gave_up["severity"] == "ERROR" and gave_up["run"] == name
    assert gave_up["attempts"] == 2 and "cannot write" in gave_up["error"]
    assert gave_up["message"] == f"{name}: giving up after 2 failed attempts: {gave_up['error']}"
