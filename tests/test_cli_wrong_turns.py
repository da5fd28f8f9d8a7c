"""The operator's wrong turns (issue 24): what a mistyped flag, a closed pipe, a missing
config or a journal from elsewhere does, in real processes (`run_cli`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, child_env, gnu_untar, journal_row, run_cli, run_in_process, start_cli, tree, wait_until

from sruns_stream import cli


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_no_parser_accepts_an_abbreviated_flag() -> None:
    parser = cli._parser()
    assert not parser.allow_abbrev
    for name, sub in _subparsers(parser).items():
        assert not sub.allow_abbrev, name


@pytest.mark.parametrize(("argv", "line"), [
    (["--thread", "4"], "sruns-stream archive: error: unknown flag --thread; did you mean --threads?"),
    (["--dryrun"], "sruns-stream archive: error: unknown flag --dryrun; did you mean --dry-run?"),
    (["--dest=D", "--jsn"], "sruns-stream archive: error: unknown flag --jsn; did you mean --json?"),
    (["--block-size", "1Q"], "sruns-stream archive: error: argument --block-size: not a size: '1Q'"),
])
def test_a_mistyped_archive_flag_is_one_line_naming_the_nearest_flag_and_nothing_is_written(
        make_run, tmp_path: Path, argv: list[str], line: str) -> None:
    run = make_run("miseq", 1 << 20)
    work = tmp_path / "work"
    work.mkdir()
    proc = run_cli("archive", str(run), *argv, cwd=work)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(line), proc.stderr
    assert "usage:" not in proc.stderr and proc.stdout == ""
    assert list(work.iterdir()) == []  # no ./archives, no ./sruns.db


def test_an_unknown_flag_is_named_before_a_missing_argument_and_an_extra_argument_is_one_line(
        tmp_path: Path) -> None:
    proc = run_cli("verify", "--jsn", cwd=tmp_path)
    assert (proc.returncode, proc.stderr.splitlines()) == (
        2, ["sruns-stream verify: error: unknown flag --jsn; did you mean --json? (see sruns-stream verify --help)"])
    proc = run_cli("status", "a", "b", cwd=tmp_path)
    assert (proc.returncode, proc.stderr.splitlines()) == (
        2, ["sruns-stream status: error: unexpected argument 'b' (see sruns-stream status --help)"])


# The process's stdout is a pipe whose reader is already gone: every write to it fails
# (EPIPE), whatever the output's size, with no race against a reader that exits.
_READER_GONE = (sys.executable, "-c",
                "import os, sys; r, w = os.pipe(); os.close(r); os.dup2(w, 1); os.execv(sys.argv[1], sys.argv[1:])")


@pytest.fixture
def archived(make_run, tmp_path: Path) -> tuple[Path, Path]:
    run = make_run("miseq", 1 << 20)
    (run / "Data" / "big.bin").write_text(os.urandom(1 << 20).hex())  # 2 MiB, far above a pipe's buffer
    proc = run_in_process("archive", str(run), "--dest", str(tmp_path / "dest"), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return run, Path(json.loads(proc.stdout)["location"])


@pytest.mark.parametrize("argv", [["verify", "--json"], ["verify"], ["ls", "-l"], ["cat", "Data/big.bin"]])
def test_a_closed_stdout_ends_quietly_with_exit_141(archived: tuple[Path, Path], tmp_path: Path,
                                                   argv: list[str]) -> None:
    _, archive = archived
    proc = run_cli(argv[0], str(archive), *argv[1:], cwd=tmp_path, prefix=_READER_GONE)
    assert (proc.returncode, proc.stderr) == (141, "")


def test_cat_into_head_ends_like_cat_does(archived: tuple[Path, Path], tmp_path: Path) -> None:
    run, archive = archived
    # bash's pipefail reports the writer's exit: 141 for `cat`, and for sruns-stream.
    line = 'set -o pipefail; "$@" | head -c 10; echo " exit $?" >&2'
    oracle = subprocess.run(["bash", "-c", line, "bash", "cat", str(run / "Data" / "big.bin")],
                            capture_output=True, check=True)
    proc = run_cli("cat", str(archive), "Data/big.bin", cwd=tmp_path, prefix=("bash", "-c", line, "bash"))
    assert proc.stderr == oracle.stderr.decode() == " exit 141\n"
    assert proc.stdout == (run / "Data" / "big.bin").read_text()[:10]


def _config(path: Path, **keys: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(keys))
    return path


def _gave_up_journal(db: Path, run: str) -> None:
    from sruns_stream.state.journal import Journal

    journal = Journal(db)
    journal.ensure(run, status="not_running")
    journal.update(run, gave_up_at=1.0, failures=5, last_error="UploadError: 403")
    journal.close()


def test_the_config_is_found_flag_then_variable_then_system_file_and_status_says_which(tmp_path: Path) -> None:
    confs = {}
    for which in ("flag", "env", "system"):
        confs[which] = _config(tmp_path / which / "config.json", sqlite_db="sruns.db")  # relative: beside it
        _gave_up_journal(tmp_path / which / "sruns.db", f"RUN_{which}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    system = {"SRUNS_STREAM_SYSTEM_CONFIG": str(confs["system"])}
    env = {**system, "SRUNS_STREAM_CONFIG": str(confs["env"])}
    cases = [
        ([], system, "system", "the system config"),
        ([], env, "env", "from $SRUNS_STREAM_CONFIG"),
        (["--config", str(confs["flag"])], env, "flag", "given with --config"),
    ]
    for flags, environment, which, how in cases:
        proc = run_cli("status", "--long", *flags, cwd=elsewhere, env=environment)
        assert proc.returncode == 0, proc.stderr
        first = proc.stdout.splitlines()[0]
        assert first == f"config: {confs[which]} ({how}); journal: {tmp_path / which / 'sruns.db'}"
        assert f"RUN_{which}  not_running: gave up" in proc.stdout
    # A variable naming no file is a mistake, not "no config".
    proc = run_cli("status", cwd=elsewhere, env={"SRUNS_STREAM_CONFIG": str(tmp_path / "nope.json")})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "$SRUNS_STREAM_CONFIG names" in proc.stderr
    # None at all: status says so, and reads ./sruns.db.
    _gave_up_journal(elsewhere / "sruns.db", "RUN_here")
    proc = run_cli("status", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("config: none (no --config, no $SRUNS_STREAM_CONFIG, no ")


@pytest.mark.parametrize("where", ["config", "journal", "none"])
def test_the_retry_hint_status_prints_works_pasted_in_another_directory(tmp_path: Path, where: str) -> None:
    home = tmp_path / "home"
    conf = _config(home / "config.json", sqlite_db="state/sruns.db")
    (home / "state").mkdir()
    _gave_up_journal(home / "state" / "sruns.db", "RUN 1")  # a name a shell would split
    flags = {"config": ["--config", "config.json"], "journal": ["--journal", "state/sruns.db"], "none": []}[where]
    cwd = home / "state" if where == "none" else home
    proc = run_cli("status", "--long", *flags, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    hint = next(line for line in proc.stdout.splitlines() if "gave up" in line and "retry" in line)
    command = hint.split("after fixing the cause: ", 1)[1]
    assert command.startswith("sruns-stream retry 'RUN 1' ")
    if where == "config":
        assert command.endswith(f"--config {conf}")
    # Pasted into a shell elsewhere (`sruns-stream` there is this checkout's).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sruns-stream").write_text(f'#!/bin/sh\nexec {sys.executable} -m sruns_stream "$@"\n')
    (bin_dir / "sruns-stream").chmod(0o755)
    pasted = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, check=False,
                            env=child_env({"PATH": f"{bin_dir}:{os.environ['PATH']}"}))
    assert pasted.returncode == 0, pasted.stderr
    assert pasted.stdout.startswith("RUN 1: eligible again; the daemon had given up after 5 failed attempts")
    assert journal_row(home / "state" / "sruns.db", "RUN 1")["gave_up_at"] is None


def test_no_destination_and_no_config_is_refused_before_anything_is_written(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 1 << 20)
    work = tmp_path / "work"
    work.mkdir()
    for extra in ([], ["--dry-run"]):
        proc = run_cli("archive", str(run), *extra, cwd=work)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("sruns-stream: error: no destination: give --dest DIR or gs://BUCKET")
        assert "--dest . for the current directory" in proc.stderr
        assert list(work.iterdir()) == []
    proc = run_cli("archive", str(run), "--dest", ".", "--json", cwd=work)
    assert proc.returncode == 0, proc.stderr
    archive = Path(json.loads(proc.stdout)["location"])
    assert archive == work / run.name / f"{run.name}.tar.gz" and archive.is_file()
    # The daemon without any config: one line, exit 2.
    proc = run_cli("monitor", "--once", cwd=work)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "monitor needs a config" in proc.stderr


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mode) for p in folder.iterdir()}


def test_status_reads_an_sruns_monitor_journal_as_it_is_and_only_a_writer_migrates_it(tmp_path: Path) -> None:
    from sruns_stream.state.journal import SCHEMA_VERSION

    state = tmp_path / "state"
    state.mkdir()
    db = state / "sruns.db"
    with sqlite3.connect(db) as conn:  # sruns-monitor 0.1.9's table, as it leaves it
        conn.execute("CREATE TABLE tasks (name text PRIMARY KEY, pid integer, tarfile text, gcp_tarfile text)")
        conn.execute("INSERT INTO tasks VALUES ('RUN_DONE', 0, 'RUN_DONE.tar.gz', 'bkt/runs/RUN_DONE/RUN_DONE.tar.gz')")
        conn.execute("INSERT INTO tasks VALUES ('RUN_NEW', 0, '', '')")
    conn.close()
    db.chmod(0o644)
    before = _snapshot(state)
    for flags in ([], ["--json"], ["RUN_DONE"]):
        proc = run_cli("status", "--journal", str(db), *flags, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert _snapshot(state) == before  # same bytes, same mode, no -wal or -shm
    rows = {r["name"]: r["status"] for r in json.loads(run_cli("status", "--journal", str(db), "--json",
                                                               cwd=tmp_path).stdout)}
    assert rows == {"RUN_DONE": "complete", "RUN_NEW": "new"}
    # A command that writes migrates it, and records the schema's version.
    proc = run_cli("retry", "RUN_NEW", "--journal", str(db), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert "status" in {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


@pytest.mark.slow  # seven real processes
def test_a_journal_from_a_newer_version_is_refused_in_one_line_and_left_untouched(make_run, tmp_path: Path) -> None:
    from sruns_stream.state.journal import SCHEMA_VERSION, Journal

    run = make_run("miseq", 1 << 20)
    state = tmp_path / "state"
    state.mkdir()
    db = state / "sruns.db"
    journal = Journal(db)
    journal.ensure(run.name, status="not_running", last_error="boom")
    journal.close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = _snapshot(state)
    assert set(before) == {"sruns.db"}
    commands = [
        ["status"], ["status", run.name, "--json"], ["retry", run.name],
        ["archive", str(run), "--dest", str(tmp_path / "dest")], ["archive", str(run), "--dest", "null", "--dry-run"],
        ["verify", run.name], ["ls", run.name],
    ]
    for argv in commands:
        proc = run_cli(*argv, "--journal", str(db), cwd=tmp_path)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert proc.stderr.count("\n") == 1 and f"journal {db} is from a newer sruns-stream (schema " \
            f"{SCHEMA_VERSION + 1};" in proc.stderr, (argv, proc.stderr)
        assert _snapshot(state) == before, argv


@pytest.mark.slow  # six real processes
def test_archive_applies_the_daemons_completion_rules_and_names_the_missing_marker(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 1 << 20, markers=False)
    dest = tmp_path / "dest"
    db = tmp_path / "sruns.db"
    for extra in ([], ["--dry-run"]):
        proc = run_cli("archive", str(run), "--dest", str(dest), "--journal", str(db), *extra, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith(f"sruns-stream: error: {run} is not a finished run: no completion marker yet "
                                      "(none of RunCompletionStatus.xml, CopyComplete.txt, RTAComplete.txt")
        assert proc.stderr.rstrip().endswith("--not-finished archives it anyway")
        assert not dest.exists() and not db.exists()
    # An RTA marker alone: the quiet period, as the daemon waits it (default 1800 s).
    (run / "RTAComplete.txt").write_text("RTA 3.4.4\r\n")
    proc = run_cli("archive", str(run), "--dest", str(dest), "--journal", str(db), cwd=tmp_path)
    assert proc.returncode == 2 and re.search(r"RTAComplete.txt is \d+ s old; waiting until it is 1800 s old",
                                              proc.stderr), proc.stderr
    # Anyway, on purpose: archived, and GNU tar reads it back as the folder.
    plan = run_cli("archive", str(run), "--dest", str(dest), "--journal", str(db), "--not-finished", "--dry-run",
                   cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    proc = run_cli("archive", str(run), "--dest", str(dest), "--journal", str(db), "--not-finished", "--json",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    gnu_untar(Path(json.loads(proc.stdout)["location"]), tmp_path / "out")
    assert tree(tmp_path / "out" / run.name) == tree(run)
    # CopyComplete.txt: finished by the instrument's own word, archived without the flag.
    (run / "CopyComplete.txt").write_text("")
    proc = run_cli("archive", str(run), "--dest", str(tmp_path / "dest2"), "--journal", str(tmp_path / "j2.db"),
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow  # four real processes
def test_a_folder_holding_run_folders_is_refused_even_with_not_finished(tmp_path: Path) -> None:
    import make_fake_run

    watch = tmp_path / "watch"
    for n in (1, 2, 3, 4):
        make_fake_run.make_run(watch / f"240101_M00001_000{n}_000000000-RUN0{n}", "miseq", 64 << 10, seed=n)
    (watch / "completed").mkdir()  # what sruns-monitor's completed_runs_dir often is: no run
    dest = tmp_path / "dest"
    for extra in ([], ["--not-finished"], ["--dry-run"], ["--not-finished", "--dry-run"]):
        proc = run_cli("archive", str(watch), "--dest", str(dest), "--journal", str(tmp_path / "sruns.db"), *extra,
                       cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith(
            f"sruns-stream: error: {watch} holds run folders (240101_M00001_0001_000000000-RUN01, "
            "240101_M00001_0002_000000000-RUN02, 240101_M00001_0003_000000000-RUN03 and 1 more), it is not one: "
            "archive each run folder"), proc.stderr
        assert not dest.exists() and not (tmp_path / "sruns.db").exists()


def test_every_command_has_quiet_and_no_progress_and_retry_has_json() -> None:
    for name, sub in _subparsers(cli._parser()).items():
        flags = {s for action in sub._actions for s in action.option_strings}
        assert {"-q", "--quiet", "--no-progress"} <= flags, name
    assert "--json" in {s for a in _subparsers(cli._parser())["retry"]._actions for s in a.option_strings}


@pytest.mark.slow  # six real processes
def test_quiet_prints_only_what_was_asked_for_and_retry_speaks_json(archived: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    run, archive = archived
    proc = run_cli("verify", str(archive), "-q", "--no-progress", cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    proc = run_cli("verify", str(archive), "-q", "--json", cwd=tmp_path)  # -q --json: the JSON was asked for
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"] is True
    proc = run_cli("archive", str(run), "--dest", str(tmp_path / "dest"), "-q", cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")  # already archived: said by exit 0 alone
    db = tmp_path / "gave_up.db"
    _gave_up_journal(db, "RUN_X")
    proc = run_cli("retry", "RUN_X", "--journal", str(db), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["run"] == "RUN_X" and answer["failures_cleared"] == 5 and answer["last_error"] == "UploadError: 403"
    assert answer["gave_up_at"] == "1970-01-01T00:00:01+00:00" and answer["journal"] == str(db)
    assert journal_row(db, "RUN_X")["gave_up_at"] is None
    _gave_up_journal(tmp_path / "q.db", "RUN_Y")
    proc = run_cli("retry", "RUN_Y", "--journal", str(tmp_path / "q.db"), "-q", cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def _readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    return text.split(f"\n{title}\n", 1)[1].split("\n#", 1)[0]


def test_the_exit_code_table_in_the_readme_is_the_one_the_code_has() -> None:
    from sruns_stream.errors import EXIT_MEANINGS

    rows = re.findall(r"^\| (\d+) \|", _readme_section("### Exit codes"), re.MULTILINE)
    assert [int(r) for r in rows] == sorted(EXIT_MEANINGS)


def test_every_commands_help_has_examples_and_its_exit_codes() -> None:
    from sruns_stream.errors import EXIT_MEANINGS

    for name, sub in _subparsers(cli._parser()).items():
        text = sub.format_help()  # what `sruns-stream NAME --help` prints
        examples = text.split("\nexamples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
        assert examples and all(e.startswith(f"  sruns-stream {name}") for e in examples), (name, examples)
        codes = re.findall(r"^  (\d+) +", text.split("\nexit codes:\n", 1)[1], re.MULTILINE)
        assert codes and {int(c) for c in codes} <= set(EXIT_MEANINGS), name
        assert 0 in {int(c) for c in codes} and 2 in {int(c) for c in codes}, name


@pytest.mark.parametrize(("value", "shown"), [
    ("ftp://hooks.example.org/services/T0/B0/SECRETXYZ", "not ftp://hooks.example.org/…"),
    ("hooks.example.org/services/T0/B0/SECRETXYZ", "not (no scheme)://(no host)/…"),
    ("https://[::1/services/SECRETXYZ", "is not a readable URL"),
    ({"url": "https://hooks.example.org/services/SECRETXYZ"}, "not a dict"),
])
def test_a_bad_webhook_url_is_named_by_scheme_and_host_only(tmp_path: Path, value: object, shown: str) -> None:
    conf = _config(tmp_path / "config.json", sqlite_db="sruns.db", webhook_url=value)
    commands = [["status", "--config", str(conf)]]
    if isinstance(value, str) and value.startswith("ftp:"):  # the daemon's start-up reads it the same way
        commands.append(["monitor", "--config", str(conf), "--once"])
    for argv in commands:
        proc = run_cli(*argv, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "webhook_url" in proc.stderr and shown in proc.stderr, proc.stderr
        assert "SECRET" not in proc.stderr and "services" not in proc.stderr and proc.stdout == ""


def test_the_man_page_checked_in_is_the_one_the_parser_makes() -> None:
    import make_manpage  # scripts/, on the path (conftest)

    text = make_manpage.render()
    assert make_manpage.MANPAGE.read_text() == text, "run python scripts/make_manpage.py"
    # What it is made from, all there: every command and every flag, the examples, the exit codes.
    for name, sub in _subparsers(cli._parser()).items():
        assert f".SH COMMAND \\fI\\,'sruns\\-stream {name}'\\/\\fR" in text, name
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag.replace("-", "\\-") in text, (name, flag)
    for code in (0, 1, 2, 3, 75, 130, 141):
        assert f".TP\n\\fB{code}\\fR\n" in text


@pytest.mark.slow  # signals a real process
@pytest.mark.timeout(60)
def test_status_watch_reads_read_only_and_still_sees_what_is_written_after_it_started(tmp_path: Path) -> None:
    from sruns_stream.state.journal import Journal

    db = tmp_path / "sruns.db"
    _gave_up_journal(db, "RUN_A")
    assert not Path(f"{db}-wal").exists()  # closed: opened read-only, it is `immutable`
    proc = start_cli("status", "--watch", "--json", "--interval", "0.05", "--journal", str(db), cwd=tmp_path)
    assert proc.stdout is not None
    assert [r["name"] for r in json.loads(proc.stdout.readline())] == ["RUN_A"]
    writer = Journal(db)  # a daemon starting meanwhile
    try:
        writer.ensure("RUN_B", status="new")
        wait_until(lambda: [r["name"] for r in json.loads(proc.stdout.readline())] == ["RUN_A", "RUN_B"],
                   "a frame with the run written after status started", proc=proc)
    finally:
        writer.close()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and err == ""
