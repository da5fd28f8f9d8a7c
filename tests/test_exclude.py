"""`exclude` in real processes: excluded paths are not in the archive (GNU tar is the
oracle), an excluded directory is not even walked, `verify --against` does not call them
missing, a resume with other exclusions starts from zero, and the daemon moves a run
archived with exclusions but sweeps it only when the config says its excluded files
may go; exclusions that would leave out the run's identity (RunInfo.xml, its markers) or
all of its data are refused, on the command line, at config load and after the scan."""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
from helpers import gnu_untar, journal_row, run_cli, run_in_process, start_cli, tree, wait_until

PATTERNS = ("Thumbnail_Images", "Logs/*", "*.jpg")


def _expected(run: Path) -> dict[str, tuple]:
    """The run's tree without what PATTERNS match (a path, or anything below a matching
    directory): what the archive must hold."""
    def left_out(rel: str) -> bool:
        parts = rel.split("/")
        return any(fnmatch.fnmatchcase("/".join(parts[:i]), p) for i in range(1, len(parts) + 1) for p in PATTERNS)

    return {rel: v for rel, v in tree(run).items() if not left_out(rel)}


@pytest.mark.timeout(120)
def test_excluded_paths_are_not_archived_or_walked_and_verify_against_passes(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 6 << 20)
    (run / "Data" / "preview.jpg").write_bytes(b"\xff\xd8 not archived")
    os.mkfifo(run / "Thumbnail_Images" / "a_fifo")  # walked, it would be reported as skipped
    (run / "Thumbnail_Images" / "sub").mkdir()
    expected = _expected(run)
    assert "Logs" in expected and not any(k.startswith("Logs/") for k in expected)
    assert any(k.startswith("Logs/") for k in tree(run)) and "Thumbnail_Images" in tree(run)

    args = ["archive", str(run), "--dest", str(tmp_path / "dest"), "--json"]
    for p in PATTERNS:
        args += ["--exclude", p]
    proc = run_in_process(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["skipped"] == []  # the FIFO in the excluded directory was never looked at
    assert f"{run.name}/Thumbnail_Images" in result["excluded"] and f"{run.name}/Data/preview.jpg" in result["excluded"]
    archive = Path(result["location"])
    gnu_untar(archive, tmp_path / "out")
    assert tree(tmp_path / "out" / run.name) == expected
    assert result["files"] == sum(1 for v in expected.values() if v[0] == "f")
    header = archive.with_name(f"{run.name}.manifest.tsv").read_text().split("\n", 1)[0]
    assert header.split("\t")[8] == "exclude=" + json.dumps(sorted(PATTERNS))

    verify = run_in_process("verify", str(archive), "--against", str(run), "--json", cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout
    doc = json.loads(verify.stdout)
    assert doc["ok"] and doc["disk_extra"] == 0 and doc["exclude"] == sorted(PATTERNS)
    # Same exclusions, same folder: already archived.
    assert json.loads(run_in_process(*args, cwd=tmp_path).stdout)["already_complete"] is True
    # A file the archive really lacks is still reported.
    (run / "late.txt").write_text("written after the archive")
    late = json.loads(run_in_process("verify", str(archive), "--against", str(run), "--json", cwd=tmp_path).stdout)
    assert not late["ok"] and late["disk_extra"] == 1
    assert late["problems"][0].startswith(f"{run.name}/late.txt: on disk")

    # Other exclusions: archived again, saying why.
    (run / "late.txt").unlink()
    again = run_in_process("archive", str(run), "--dest", str(tmp_path / "dest"), "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    redone = json.loads(again.stdout)
    assert not redone["already_complete"] and redone["excluded"] == []
    assert redone["restart_reason"] == (f"it was archived leaving out {', '.join(sorted(PATTERNS))}; "
                                        "now nothing is left out")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pattern", ["/abs/path", "../outside", "", "Logs/../.."])
def test_a_pattern_outside_the_run_folder_is_refused_in_one_line(make_run, tmp_path: Path, pattern: str) -> None:
    run = make_run("miseq", 1 << 20)
    proc = run_in_process("archive", str(run), "--dest", str(tmp_path / "d"), "--exclude", pattern, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--exclude" in proc.stderr and "relative to the run folder" in proc.stderr
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"exclude": ["Logs", pattern]}))
    proc = run_in_process("archive", str(run), "--dest", str(tmp_path / "d"), "--config", str(conf), cwd=tmp_path)
    assert proc.returncode == 2 and "config key 'exclude'" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "sruns.db").exists()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_resume_with_other_exclusions_starts_from_zero_and_with_the_same_resumes(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 40 << 20)
    db = tmp_path / "sruns.db"
    flags = ("--dest", str(tmp_path / "dest"), "--block-size", "64K", "--sync-interval", "1M", "--threads", "1",
             "--json")

    def interrupted(*extra: str) -> None:
        proc = start_cli("archive", str(run), *flags, *extra, cwd=tmp_path)
        wait_until(lambda: journal_row(db, run.name).get("status") == "tarring"
                   and (journal_row(db, run.name).get("durable_offset") or 0) >= 1 << 20, "1 MiB durable", proc=proc)
        os.kill(proc.pid, signal.SIGSTOP)  # held there: the stop lands mid-stream, whatever the machine's speed
        os.kill(proc.pid, signal.SIGTERM)
        os.kill(proc.pid, signal.SIGCONT)
        proc.communicate(timeout=60)
        assert proc.returncode == 130

    interrupted("--exclude", "Thumbnail_Images")
    same = run_in_process("archive", str(run), *flags, "--exclude", "Thumbnail_Images/", cwd=tmp_path)  # same pattern
    assert same.returncode == 0, same.stderr
    resumed = json.loads(same.stdout)
    assert resumed["resumed_from_archive"] > 0 and resumed["restart_reason"] is None

    interrupted("--exclude", "Thumbnail_Images", "--force")
    other = run_in_process("archive", str(run), *flags, cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    result = json.loads(other.stdout)
    assert result["resumed_from_archive"] == 0 and result["restart_reason"] == "stream parameters changed (exclude)"
    gnu_untar(Path(result["location"]), tmp_path / "out")
    assert tree(tmp_path / "out" / run.name) == tree(run)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_daemon_moves_a_run_archived_with_exclusions_but_sweeps_it_only_when_told(tmp_path: Path) -> None:
    import make_fake_run

    watch = tmp_path / "watch"
    run = watch / "240101_M00001_0007_000000000-EXCLD"
    make_fake_run.make_run(run, "miseq", 2 << 20, seed=7)
    copy = tree(run)
    conf_data = {
        "watchdir": str(watch), "completed_runs_dir": str(tmp_path / "completed"),
        "sqlite_db": str(tmp_path / "sruns.db"), "local_dest": str(tmp_path / "archives"), "cycle_pause_sec": 1,
        "sentinal_file_age_minutes": 0, "sweep_age_sec": 1, "exclude": ["Thumbnail_Images"], "threads": 2,
    }
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps(conf_data))
    first = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    row = journal_row(tmp_path / "sruns.db", run.name)
    moved = tmp_path / "completed" / run.name
    # Its Thumbnail_Images are not "new" files: the folder still matches its archive, and moves.
    assert row["status"] == "complete" and row["moved_to"] == str(moved) and not run.exists()
    assert tree(moved) == copy

    def past_the_sweep_age() -> subprocess.CompletedProcess[str]:
        with sqlite3.connect(tmp_path / "sruns.db") as db:
            db.execute("UPDATE tasks SET moved_at = 1")
        return run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)

    kept = past_the_sweep_age()
    assert kept.returncode == 0, kept.stderr
    assert tree(moved) == copy and not journal_row(tmp_path / "sruns.db", run.name)["swept_at"]
    refusals = [line for line in kept.stderr.splitlines() if "is not swept" in line]
    assert len(refusals) == 1 and "sweep_excluded: true" in refusals[0] and "Thumbnail_Images" in refusals[0]

    conf.write_text(json.dumps({**conf_data, "sweep_excluded": True}))
    swept = past_the_sweep_age()
    assert swept.returncode == 0, swept.stderr
    assert not moved.exists() and journal_row(tmp_path / "sruns.db", run.name)["swept_at"]


# Each leaves out everything at the top of a run folder, RunInfo.xml and the markers with
# it ("*/" is "*": a trailing "/" is dropped); the old code archived 0 files and said OK.
EVERYTHING = ("*", "?*", "*/", "[!x]*", "**")
# Each leaves out everything below the top of a run folder, its data with it; the old
# code archived the top-level files alone and said OK.
EVERYTHING_BELOW = ("*/*", "**/*", "?*/*", "*/**")


def _every_folder(run: Path) -> list[str]:
    """Each folder at the top of ``run`` by name: no pattern alone leaves out all the
    data, together they do (only the sample sheet and the identity files are left)."""
    return sorted(p.name for p in run.iterdir() if p.is_dir())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pattern", EVERYTHING)
def test_a_pattern_that_leaves_out_the_run_identity_is_refused_in_one_line(
    make_run, tmp_path: Path, pattern: str
) -> None:
    run = make_run("miseq", 1 << 20)
    for extra in ((), ("--dry-run",)):
        proc = run_in_process("archive", str(run), "--dest", str(tmp_path / "dest"), "--exclude", pattern, *extra,
                              cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert f"--exclude: {pattern!r} would leave out RunInfo.xml" in proc.stderr
        assert "never left out" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "dest").exists() and not (tmp_path / "sruns.db").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pattern", EVERYTHING_BELOW)
def test_a_pattern_that_leaves_out_everything_below_the_top_is_refused_in_one_line(
    make_run, tmp_path: Path, pattern: str
) -> None:
    run = make_run("miseq", 1 << 20)
    for extra in ((), ("--dry-run",)):
        proc = run_in_process("archive", str(run), "--dest", str(tmp_path / "dest"), "--exclude", pattern, *extra,
                              cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert f"--exclude: {pattern!r} would leave out everything below the run folder's top" in proc.stderr
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"local_dest": str(tmp_path / "dest"), "exclude": [pattern]}))
    proc = run_in_process("archive", str(run), "--config", str(conf), cwd=tmp_path)
    assert proc.returncode == 2 and "would leave out everything below" in proc.stderr, proc.stderr
    assert not (tmp_path / "dest").exists()


@pytest.mark.slow  # the daemon in a real process
@pytest.mark.timeout(60)
def test_a_config_whose_exclude_leaves_out_the_run_identity_is_refused_at_load(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 1 << 20)
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({
        "watchdir": str(run.parent), "local_dest": str(tmp_path / "dest"), "sqlite_db": str(tmp_path / "sruns.db"),
        "sentinal_file_age_minutes": 0, "exclude": ["Logs", "*"], "sweep_excluded": True,
    }))
    for run_it, args in ((run_cli, ("monitor", "--config", str(conf), "--once")),
                         (run_in_process, ("archive", str(run), "--config", str(conf)))):
        proc = run_it(*args, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "config key 'exclude': '*' would leave out RunInfo.xml" in proc.stderr
    assert not (tmp_path / "dest").exists() and not (tmp_path / "sruns.db").exists() and run.is_dir()


@pytest.mark.timeout(60)
def test_exclusions_that_leave_none_of_the_data_are_refused_before_anything_is_written(
    make_run, tmp_path: Path
) -> None:
    run = make_run("miseq", 1 << 20)
    folders = _every_folder(run)
    assert len(folders) >= 3 and (run / "SampleSheet.csv").is_file()
    args = ["archive", str(run), "--dest", str(tmp_path / "dest")]
    for p in folders:
        args += ["--exclude", p]
    dry = run_in_process(*args, "--dry-run", cwd=tmp_path)
    proc = run_in_process(*args, cwd=tmp_path)
    for refused in (dry, proc):
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert f"{run.name}: exclude {', '.join(folders)} would leave out all of the run's data (such as " \
               f"{run.name}/" in refused.stderr
        assert "nothing but files at the top of the run folder" in refused.stderr
    assert not (tmp_path / "dest").exists()
    row = journal_row(tmp_path / "sruns.db", run.name)
    assert row["status"] != "complete" and "all of the run's data" in row["last_error"]


@pytest.mark.timeout(60)
def test_a_narrow_pattern_inside_a_folder_still_archives_and_verifies(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 1 << 20)
    proc = run_in_process("archive", str(run), "--dest", str(tmp_path / "dest"), "--exclude", "Thumbnail_Images/**",
                          "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    archive = Path(json.loads(proc.stdout)["location"])
    gnu_untar(archive, tmp_path / "out")
    expected = {k: v for k, v in tree(run).items() if not k.startswith("Thumbnail_Images/")}
    assert "Thumbnail_Images" in expected and len(expected) < len(tree(run))
    assert tree(tmp_path / "out" / run.name) == expected
    verify = run_in_process("verify", str(archive), "--against", str(run), "--json", cwd=tmp_path)
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"], verify.stdout


def test_the_scan_check_refuses_a_run_without_its_identity_whatever_made_the_scan(make_run) -> None:
    # `check_patterns` already refuses such patterns; the scan check is the second line,
    # for a walk that left out what the patterns were not expected to.
    from sruns_stream.errors import UsageError
    from sruns_stream.runfolder.exclude import check_leaves_run
    from sruns_stream.runfolder.scan import scan_run_folder

    run = make_run("miseq", 1 << 20)
    scan = scan_run_folder(run, 1, ["RunInfo.xml", "Logs"])
    with pytest.raises(UsageError, match=r"exclude RunInfo.xml, Logs would leave out RunInfo.xml: what identifies"):
        check_leaves_run(scan, ["RunInfo.xml", "Logs"])
    check_leaves_run(scan_run_folder(run, 1, ["Logs"]), ["Logs"])  # the usual: nothing to say


@pytest.mark.slow  # the daemon in a real process
@pytest.mark.timeout(120)
def test_the_daemon_marks_a_run_failed_when_its_exclusions_leave_no_data(tmp_path: Path) -> None:
    import make_fake_run

    watch = tmp_path / "watch"
    run = watch / "240101_M00001_0008_000000000-NODAT"
    make_fake_run.make_run(run, "miseq", 1 << 20, seed=8)
    copy = tree(run)
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({
        "watchdir": str(watch), "completed_runs_dir": str(tmp_path / "completed"),
        "sqlite_db": str(tmp_path / "sruns.db"), "local_dest": str(tmp_path / "archives"), "cycle_pause_sec": 1,
        "sentinal_file_age_minutes": 0, "sweep_age_sec": 1, "exclude": _every_folder(run), "sweep_excluded": True,
        "threads": 2,
    }))
    proc = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = journal_row(tmp_path / "sruns.db", run.name)
    assert row["status"] != "complete" and row["failures"] == 1 and not row["moved_to"], row
    assert "would leave out all of the run's data" in row["last_error"]
    assert "would leave out all of the run's data" in proc.stderr
    assert tree(run) == copy and not (tmp_path / "completed" / run.name).exists()
    assert not list((tmp_path / "archives").rglob("*.tar.gz*"))
