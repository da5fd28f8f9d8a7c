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
