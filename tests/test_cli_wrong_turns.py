"""The operator's wrong turns (issue 24): what a mistyped flag, a closed pipe, a missing
config or a journal from elsewhere does, in real processes (`run_cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from helpers import run_cli

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
