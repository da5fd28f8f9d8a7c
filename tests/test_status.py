"""`sruns-stream status` and `retry` in real processes: status reads a journal and never
makes one; a running archive shows how far it is, how fast and how long it has left; a
clean stop is a stop, not an error; a run the daemon gave up on is retried by
`sruns-stream retry` once the cause is fixed."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import INTERRUPTED_LINE, journal_row, journal_rows, run_cli, run_in_process, start_cli, wait_until

BLOCK_FLAGS = ("--block-size", "64K", "--sync-interval", "1M", "--threads", "1")


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.timeout(60)
def test_status_never_creates_a_journal(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_in_process("status", cwd=empty)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert f"no journal at {empty / 'sruns.db'}" in proc.stderr
    assert "--journal" in proc.stderr and "--config" in proc.stderr
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"sqlite_db": str(tmp_path / "state" / "sruns.db")}))
    for args in (("status", "--config", str(conf)), ("status", "--journal", str(empty / "x.db"), "--json"),
                 ("status", "--watch", "--journal", str(empty / "x.db")), ("retry", "RUN", "--config", str(conf))):
        proc = run_in_process(*args, cwd=empty)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, (args, proc.stderr)
        assert "no journal at " in proc.stderr and "Traceback" not in proc.stderr
    assert _listing(tmp_path) == ["conf.json", "empty"]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_running_archive_shows_percent_rate_and_eta_and_a_clean_stop_is_no_error(
    make_run, tmp_path: Path
) -> None:
    run = make_run("miseq", 40 << 20)
    db = tmp_path / "sruns.db"
    proc = start_cli("archive", str(run), "--dest", str(tmp_path / "dest"), *BLOCK_FLAGS, cwd=tmp_path)
    wait_until(lambda: (journal_row(db, run.name).get("ck_raw") or 0) > 0
               and (journal_row(db, run.name).get("raw_total") or 0) > 0, "a first checkpoint", proc=proc)
    os.kill(proc.pid, signal.SIGSTOP)  # it stays where it is while we look: no race with its end
    try:
        row = journal_row(db, run.name)
        view = json.loads(run_in_process("status", run.name, "--json", cwd=tmp_path).stdout)[0]
        text = run_in_process("status", "--journal", str(db), "--long", cwd=tmp_path).stdout
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == INTERRUPTED_LINE, err

    assert view["running"] is True and view["status"] == "tarring" and view["pid"] == proc.pid
    total = row["raw_total"]
    assert view["raw_total"] == total and view["raw_done"] == row["ck_raw"]
    assert view["percent"] == round(100.0 * row["ck_raw"] / total, 1) and 0 < view["percent"] < 100
    assert view["rate_mb_s"] > 0 and view["eta_seconds"] >= 0
    assert view["attempts"] == 1 and view["last_error"] is None
    started = dt.datetime.fromisoformat(view["started_at"])
    assert started.tzinfo is not None and abs(started.timestamp() - row["session_started_at"]) < 1
    assert re.search(rf"^{re.escape(run.name)}  tarring$", text, re.MULTILINE), text
    assert re.search(r"^  progress +\d+\.\d% \(\S+ [kMG]?B of \S+ [kMG]?B\), \d+\.\d MB/s, ETA \d+:\d\d:\d\d "
                     rf"\(pid {proc.pid}\)$", text, re.MULTILINE), text

    # Stopped on purpose: no error recorded, the stop dated, and status says so.
    row = journal_row(db, run.name)
    assert row["status"] == "not_running" and row["last_error"] is None and row["interrupted_at"]
    view = json.loads(run_in_process("status", run.name, "--journal", str(db), "--json", cwd=tmp_path).stdout)[0]
    assert view["interrupted"] is True and view["running"] is False and view["last_error"] is None
    assert 0 < view["percent"] < 100
    text = run_in_process("status", run.name, "--journal", str(db), cwd=tmp_path).stdout
    assert f"{run.name}  not_running: stopped (resumes at the next attempt)" in text
    assert "error" not in text and "  stopped    " in text


@pytest.mark.slow  # signals a real process
@pytest.mark.timeout(60)
def test_watch_refreshes_until_ctrl_c_and_exits_0(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 1 << 20)
    assert run_in_process("archive", str(run), "--dest", str(tmp_path / "dest"), cwd=tmp_path).returncode == 0
    proc = start_cli("status", "--watch", "--json", "--interval", "0.1", cwd=tmp_path)
    assert proc.stdout is not None
    frames = [json.loads(proc.stdout.readline()) for _ in range(3)]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and err == ""
    assert all(frame[0]["name"] == run.name and frame[0]["status"] == "complete" for frame in frames)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_run_the_daemon_gave_up_on_is_retried_after_the_fix_and_completes(make_run, tmp_path: Path) -> None:
    import make_fake_run

    watch = tmp_path / "watch"
    run = watch / "240101_M00001_0009_000000000-RETRY"
    make_fake_run.make_run(run, "miseq", 1 << 20, seed=9)
    dest = tmp_path / "archives"
    dest.write_text("a file where the destination directory should be")
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({
        "watchdir": str(watch), "sqlite_db": str(tmp_path / "sruns.db"), "local_dest": str(dest),
        "cycle_pause_sec": 1, "sentinal_file_age_minutes": 0, "max_attempts": 1, "threads": 2,
    }))
    assert run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path).returncode == 0
    view = json.loads(run_in_process("status", "--config", str(conf), "--json", cwd=tmp_path).stdout)[0]
    assert view["gave_up"] is True and view["failures"] == 1
    assert view["attempts"] == 1  # the failed attempt counts, though it failed before its stream started
    assert view["last_error"] and "cannot write" in view["last_error"]
    dt.datetime.fromisoformat(view["gave_up_at"])
    text = run_in_process("status", "--config", str(conf), "--long", cwd=tmp_path).stdout
    assert "not_running: gave up" in text and f"sruns-stream retry {run.name}" in text

    # Given up: another pass leaves it alone, even with the cause fixed.
    dest.unlink()
    assert run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path).returncode == 0
    assert journal_row(tmp_path / "sruns.db", run.name)["gave_up_at"] is not None and not dest.exists()

    retried = run_in_process("retry", run.name, "--config", str(conf), cwd=tmp_path)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.startswith(f"{run.name}: eligible again; the daemon had given up after 1 failed attempts")
    row = journal_row(tmp_path / "sruns.db", run.name)
    assert row["gave_up_at"] is None and row["failures"] == 0 and row["next_attempt_at"] is None
    assert run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path).returncode == 0
    row = journal_row(tmp_path / "sruns.db", run.name)
    assert row["status"] == "complete" and row["attempts"] == 2
    assert (dest / run.name / f"{run.name}.tar.gz").is_file()

    # Nothing to retry: archived, or not in the journal. One line each, exit 2.
    for name, words in ((run.name, "is archived (complete)"), ("NO_SUCH_RUN", "is not in the journal")):
        proc = run_in_process("retry", name, "--config", str(conf), cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr


def test_the_archive_line_and_a_gone_process_follow_what_each_status_means(tmp_path: Path) -> None:
    """In process, one row per status, each with a location and no live process: the
    archive line only where the status says stored and verified, "its process is gone"
    only where it says an archive process holds the run (the sets spelled out here, from
    the README's table, as the oracle for the journal's ARCHIVED and IN_PROGRESS)."""
    import time

    from sruns_stream.state.journal import STATUSES, Journal
    from sruns_stream.state.status import render_text

    journal = Journal(tmp_path / "j.db")
    for status in STATUSES:
        journal.ensure(f"RUN_{status}", status=status, location="/archives/x.tar.gz", pid=4242, pid_start=1)
    blocks = render_text(journal.tasks(), time.time()).split("\n\n")
    journal.close()
    shown = {block.split()[0].removeprefix("RUN_"): block for block in blocks}
    assert sorted(shown) == sorted(STATUSES)
    for status, block in shown.items():
        archived = status in ("uploading_complete", "complete")
        assert ("\n  archive    /archives/x.tar.gz (size unknown)\n" in block) == archived, block
        assert ("\n  last       /archives/x.tar.gz (not this run's archive now)\n" in block) != archived, block
        in_progress = status in ("starting", "tarring", "tarring_complete", "uploading", "uploading_complete")
        assert block.startswith(f"RUN_{status}  {status} (its process is gone: resumed at the next attempt)\n") \
            == in_progress, block


# --- a facility's journal: one line per run, filters, a --watch that fits the screen ---------


def _facility(make_run, tmp_path: Path, extra: int = 0) -> tuple[Path, dict[str, str], subprocess.Popen[bytes]]:
    """A journal with an archived run and a failed one (real `archive` processes), one
    being archived now (its row names a live process: a real `sleep`), and ``extra``
    more archived rows."""
    from sruns_stream.state.journal import Journal
    from sruns_stream.state.process import start_time

    db = tmp_path / "sruns.db"
    done = make_run("miseq", 1 << 20, seed=1)
    failed = make_run("miseq", 1 << 20, seed=2, name="240102_M00001_0002_000000000-FAILD")
    assert run_in_process("archive", str(done), "--dest", str(tmp_path / "dest"), "--journal", str(db),
                          cwd=tmp_path).returncode == 0
    (tmp_path / "blocked").write_text("a file where a directory should be")
    assert run_in_process("archive", str(failed), "--dest", str(tmp_path / "blocked"), "--journal", str(db),
                          cwd=tmp_path).returncode == 1
    sleeper = subprocess.Popen(["sleep", "300"])
    journal = Journal(db)
    try:
        journal.ensure("240103_M00001_0003_000000000-ACTIV", status="tarring", pid=sleeper.pid,
                       pid_start=start_time(sleeper.pid), raw_total=1000, session_started_at=0.0)
        for k in range(extra):
            journal.ensure(f"2301{k:02d}_M00001_{k:04d}_000000000-OLDXX", status="complete", archive_bytes=1000 + k,
                           location=f"/old/{k}.tar.gz")
    finally:
        journal.close()
    names = {"done": done.name, "failed": failed.name, "active": "240103_M00001_0003_000000000-ACTIV"}
    return db, names, sleeper


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


@pytest.mark.timeout(120)
def test_status_is_one_line_per_run_with_filters(make_run, tmp_path: Path) -> None:
    db, names, sleeper = _facility(make_run, tmp_path)
    try:
        row = journal_row(db, names["done"])
        table = run_cli("status", "--journal", str(db), cwd=tmp_path)
        assert table.returncode == 0, table.stderr
        config, *lines = table.stdout.splitlines()  # first, which config and journal (issue 24, item 3)
        assert config.startswith("config: ") and config.endswith(f"journal: {db}")
        assert lines[0].split() == ["RUN", "STATUS", "DONE", "UPDATED", "NOTE"] and set(lines[1]) == {"─"}
        by_name = {line.split()[0]: line for line in lines[2:]}
        assert sorted(by_name) == sorted(names.values()) and len(lines) == 5, table.stdout
        from sruns_stream.humanize import human_bytes

        done = by_name[names["done"]].split()
        assert done[1] == "complete" and done[2:4] == human_bytes(row["archive_bytes"]).split()
        assert by_name[names["done"]].endswith(row["location"])
        failed = by_name[names["failed"]]
        assert failed.split()[1:3] == ["not_running:", "failed"] and "cannot write" in failed
        assert by_name[names["active"]].split()[1] == "tarring"

        def shown(*args: str) -> list[str]:
            proc = run_cli("status", "--journal", str(db), *args, cwd=tmp_path)
            assert proc.returncode == 0, proc.stderr
            return [line.split()[0] for line in proc.stdout.splitlines()[3:]]

        assert shown("--failed") == [names["failed"]]
        assert shown("--active") == [names["active"]]
        assert sorted(shown("2401*")) == sorted([names["done"], names["failed"], names["active"]])
        assert shown("*FAILD") == [names["failed"]] and shown("*FAILD", "--active") == []
        nothing = run_cli("status", "--journal", str(db), "--active", "*FAILD", cwd=tmp_path)
        assert nothing.stdout.splitlines()[1:] == ["no run matches"]  # after the config line
        # One run by its name, or --long: the block with everything.
        one = run_cli("status", "--journal", str(db), names["done"], cwd=tmp_path).stdout.split("\n", 1)[1]
        assert one.startswith(f"{names['done']}  complete\n  archive    {row['location']} (")
        long = run_cli("status", "--journal", str(db), "--long", "--failed", cwd=tmp_path).stdout.split("\n", 1)[1]
        assert long.startswith(f"{names['failed']}  not_running: failed\n") and "\n  error      cannot write" in long
        as_json = json.loads(run_cli("status", "--journal", str(db), "--json", "--failed", cwd=tmp_path).stdout)
        assert [r["name"] for r in as_json] == [names["failed"]]
    finally:
        _stop(sleeper)


@pytest.mark.slow  # a real process on a pseudo-terminal, signalled
@pytest.mark.timeout(120)
def test_watch_fits_the_terminal_most_pressing_runs_first(make_run, tmp_path: Path) -> None:
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    from helpers import child_env

    db, names, sleeper = _facility(make_run, tmp_path, extra=30)
    rows, cols = 8, 100
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "sruns_stream", "status", "--journal", str(db), "--watch",
                             "--interval", "0.2"], stdin=slave, stdout=slave, stderr=slave, cwd=tmp_path,
                            env=child_env({"TERM": "xterm", "COLUMNS": "", "LINES": ""}))
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while seen.count(b"\x1b[H\x1b[2J") < 3 and time.monotonic() < deadline:  # two whole frames
            if select.select([master], [], [], 1)[0]:
                seen += os.read(master, 65536)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        os.close(master)
        _stop(sleeper)
    frame = seen.split(b"\x1b[H\x1b[2J")[1].decode()
    plain = re.sub(r"\x1b\[[0-9;]*m", "", frame).replace("\r", "")  # the colours aside
    lines = plain.rstrip("\n").split("\n")
    assert len(lines) <= rows - 1 and all(len(line) <= cols for line in lines), lines
    assert lines[0].startswith("config: ")  # which config and journal, cut to the width (issue 24, item 3)
    assert lines[1].split() == ["RUN", "STATUS", "DONE", "UPDATED", "NOTE"]
    listed = [line.split()[0] for line in lines[3:-1]]
    # What matters most first: the running archive, then the failure, then the most
    # recently updated (the journal's updated_at is the oracle).
    updated = {name: row["updated_at"] for name, row in journal_rows(db).items()}
    assert listed[:2] == [names["active"], names["failed"]], lines
    assert listed[2:] == sorted(set(updated) - {names["active"], names["failed"]}, key=lambda n: -updated[n])[
        : len(listed) - 2], lines
    assert lines[-1].startswith(f"… and {33 - len(listed)} more: "), lines
    assert "\x1b[" in frame  # on a terminal, with colour
