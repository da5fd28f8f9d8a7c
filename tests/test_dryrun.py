"""`archive --dry-run` in real processes: it says what would be archived and left out,
where, and what the journal lets it do (start, resume, nothing), and it writes nothing:
the directory trees before and after are compared byte for byte, the journal included."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import signal
from pathlib import Path

import pytest
from helpers import journal_row, run_in_process, start_cli, wait_until

from sruns_stream.archiver.dryrun import plan_archive
from sruns_stream.archiver.run import archive_run
from sruns_stream.config import ArchiveOptions
from sruns_stream.progress import NoProgress


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry below ``root``: type, size, mtime and, for files, a digest of the bytes."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else ""
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return out


def _files_and_bytes(root: Path) -> tuple[int, int]:
    files = [Path(d, n) for d, _, names in os.walk(root) for n in names]
    regular = [p for p in files if p.is_file() and not p.is_symlink()]
    return len(regular), sum(p.lstat().st_size for p in regular)


@pytest.mark.timeout(120)
def test_dry_run_says_what_would_happen_and_writes_nothing(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 4 << 20)
    state = tmp_path / "state"
    state.mkdir()
    db = state / "sruns.db"
    before = _snapshot(tmp_path)
    proc = run_in_process("archive", str(run), "--dest", str(tmp_path / "dest"), "--journal", str(db), "--dry-run",
                          "--exclude", "Thumbnail_Images", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _snapshot(tmp_path) == before and not db.exists() and not (tmp_path / "dest").exists()
    plan = json.loads(proc.stdout)
    all_files, all_bytes = _files_and_bytes(run)
    thumb_files, thumb_bytes = _files_and_bytes(run / "Thumbnail_Images")
    assert thumb_files > 0
    assert (plan["files"], plan["data_bytes"]) == (all_files - thumb_files, all_bytes - thumb_bytes)
    assert plan["excluded"] == [f"{run.name}/Thumbnail_Images"]
    assert (plan["excluded_files"], plan["excluded_bytes"]) == (thumb_files, thumb_bytes)
    assert plan["archive"] == str(tmp_path / "dest" / run.name / f"{run.name}.tar.gz")
    assert plan["decision"] == "archive" and plan["reason"] is None and plan["journal_exists"] is False

    text = run_in_process("archive", str(run), "--dest", "gs://some-bucket/runs", "--journal", str(db), "--dry-run",
                          cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert f"in gs://some-bucket/runs/{run.name}/{run.name}.tar.gz" in text.stdout
    assert "archive from the start" in text.stdout and "(not there: archive would create it)" in text.stdout
    assert _snapshot(tmp_path) == before


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_dry_run_reads_the_journal_without_touching_it(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 40 << 20)
    db = tmp_path / "sruns.db"
    flags = ("--dest", str(tmp_path / "dest"), "--block-size", "64K", "--sync-interval", "1M", "--threads", "1")
    proc = start_cli("archive", str(run), *flags, cwd=tmp_path)
    wait_until(lambda: (journal_row(db, run.name).get("durable_offset") or 0) >= 1 << 20, "1 MiB durable", proc=proc)
    os.kill(proc.pid, signal.SIGSTOP)  # the stop lands mid-stream, whatever the machine's speed
    os.kill(proc.pid, signal.SIGTERM)
    os.kill(proc.pid, signal.SIGCONT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    row = journal_row(db, run.name)

    before = _snapshot(tmp_path)
    dry = run_in_process("archive", str(run), *flags, "--dry-run", "--json", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert _snapshot(tmp_path) == before  # not even the journal's -wal/-shm, nor a lock file
    plan = json.loads(dry.stdout)
    assert plan["decision"] == "resume" and plan["journal_exists"] is True
    assert (plan["resume_archive"], plan["resume_raw"]) == (row["durable_offset"], row["ck_raw"])

    # What the real run then does is what the dry run said.
    real = run_in_process("archive", str(run), *flags, "--json", cwd=tmp_path)
    assert real.returncode == 0, real.stderr
    assert json.loads(real.stdout)["resumed_from_archive"] >= plan["resume_archive"] > 0

    # Finished: nothing to do; another level: from the start, saying why.
    done = json.loads(run_in_process("archive", str(run), *flags, "--dry-run", "--json", cwd=tmp_path).stdout)
    assert done["decision"] == "already archived"
    other = run_in_process("archive", str(run), *flags, "--dry-run", "--level", "2", cwd=tmp_path)
    assert "already archived" in other.stdout  # level alone does not make an archive another one's
    force = json.loads(
        run_in_process("archive", str(run), *flags, "--dry-run", "--force", "--json", cwd=tmp_path).stdout)
    assert force["decision"] == "archive" and force["reason"] == "--force was given"


@pytest.mark.timeout(120)
def test_archive_and_the_dry_run_make_one_decision(make_run, tmp_path: Path, journal) -> None:  # type: ignore[no-untyped-def]
    """In process: in each state the journal and the folder can be in, the dry run's
    decision and reason are the ones `archive_run` then acts on."""
    run = make_run("miseq", 1 << 20)
    dest = str(tmp_path / "dest")
    options = ArchiveOptions(threads=2)
    quiet = NoProgress(io.StringIO())

    def plan(opts: ArchiveOptions = options, force: bool = False) -> tuple[str, str | None]:
        p = plan_archive(run, dest, opts, journal.path, force=force)
        return p.decision, p.reason

    assert plan() == ("archive", None)
    first = archive_run(run, dest, options, journal, quiet)
    assert first.restart_reason is None and not first.already_complete

    assert plan() == ("already archived", f"at {first.location}")
    assert archive_run(run, dest, options, journal, quiet).already_complete

    with (run / "RunInfo.xml").open("ab") as f:
        f.write(b"<!-- rewritten after the archive -->\n")
    decision, reason = plan()
    assert decision == "archive" and reason and reason.startswith("the run folder changed since it was archived: ")
    assert archive_run(run, dest, options, journal, quiet).restart_reason == reason

    left_out = ArchiveOptions(threads=2, exclude=("Thumbnail_Images",))
    decision, reason = plan(left_out)
    assert (decision, reason) == ("archive", "it was archived leaving out nothing; now Thumbnail_Images is left out")
    assert archive_run(run, dest, left_out, journal, quiet).restart_reason == reason

    assert plan(left_out, force=True) == ("archive", "--force was given")
    assert archive_run(run, dest, left_out, journal, quiet, force=True).restart_reason == "--force was given"


def test_the_dry_run_uses_no_private_name_of_another_module() -> None:
    """One decision, in `decide`: the dry run must not reach into `run` (or anything) for
    a second copy of its parts."""
    source = (Path(__file__).resolve().parents[1] / "sruns_stream" / "archiver" / "dryrun.py").read_text()
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert private == []
