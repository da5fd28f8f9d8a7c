"""The CLI's own edges: a stop that lands before a command has begun."""

from __future__ import annotations

import io
import signal

import pytest
from helpers import INTERRUPTED_LINE

from sruns_stream import cli


class _StoppedWhileParsing:
    """A parser that a SIGTERM interrupts, as `cli._raise_interrupt` does. Faked: in a
    real process the signal lands in argument parsing only when start-up is slow (a
    loaded machine did it once in a whole-suite run), a moment no test can aim at."""

    def parse_known_args(self, argv: object) -> object:
        cli._raise_interrupt(signal.SIGTERM, None)
        raise AssertionError("unreachable")


def test_a_stop_while_the_arguments_are_read_is_an_interruption_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli, "_parser", _StoppedWhileParsing)
    previous = signal.getsignal(signal.SIGTERM)
    err = io.StringIO()
    try:
        code = cli.main(["archive", "RUN"], io.StringIO(), err)
    finally:
        signal.signal(signal.SIGTERM, previous)  # _raise_interrupt ignores a second one
    assert code == 130 and err.getvalue() == INTERRUPTED_LINE + "\n"


def test_a_stop_before_main_is_an_interruption_too(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """main_cli's own window (before main's handlers): the same line and exit code."""

    def stopped(argv: object = None) -> int:
        raise KeyboardInterrupt("signal 15")

    monkeypatch.setattr(cli, "main", stopped)
    monkeypatch.setattr(cli, "_die_with_parent", lambda: None)
    monkeypatch.setattr(cli.signal, "signal", lambda *a: None)
    with pytest.raises(SystemExit) as exit_info:
        cli.main_cli()
    assert exit_info.value.code == 130 and capsys.readouterr().err == INTERRUPTED_LINE + "\n"


# --- what --help says each flag defaults to is what the code does --------------------------


def _helps() -> dict[tuple[str, str], str]:
    """Every option's help text, by (command, longest flag)."""
    import argparse

    out: dict[tuple[str, str], str] = {}
    for action in cli._parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                for a in sub._actions:
                    if a.option_strings and a.help:
                        out[(command, max(a.option_strings, key=len))] = a.help
    return out


def test_every_default_the_help_states_is_the_codes() -> None:
    """Issue 24: `archive --help` said `--read-threads … (default 8)` while the code decides
    per run. Each stated default is read back from the help text and compared with the
    defaults the code applies (ArchiveOptions, the parser's own defaults)."""
    import re

    from sruns_stream.config import AUTO_READ_THREADS, AUTO_STREAMS, AUTO_STREAMS_FROM, ArchiveOptions, default_threads
    from sruns_stream.humanize import parse_size

    helps = _helps()
    code = ArchiveOptions()
    sizes = {"--block-size": code.block_size, "--sync-interval": code.sync_interval, "--chunk-size": code.chunk_size,
             "--read-ahead": code.read_ahead, "--volume-size": code.volume_size,
             "--access-interval": code.access_interval}
    for flag, value in sizes.items():
        stated = re.search(r"\(default (\w+)[;:)]", helps[("archive", flag)])
        assert stated and parse_size(stated[1]) == value, (flag, helps[("archive", flag)], value)
    assert "(ISA-L; default 1)" in helps[("archive", "--level")] and code.level == 1
    compression = helps[("archive", "--compression")]
    assert compression.startswith("auto: ") and "(default)" in compression and code.compression == "auto"
    assert "(default: all cores)" in helps[("archive", "--threads")] and code.threads == default_threads()
    read = helps[("archive", "--read-threads")]
    assert code.read_threads is None and "default 8" not in read  # None: decided per run
    assert f"(default: decided per run, {AUTO_READ_THREADS} where opening a file takes over 50 us" in read
    streams = helps[("archive", "--streams")]
    assert code.upload_streams is None and parse_size("2G") == AUTO_STREAMS_FROM
    assert f"(default: decided per run, {AUTO_STREAMS} from 2G up, else 1)" in streams
    for command in ("verify", "restore"):
        assert helps[(command, "--threads")].endswith("(default: the machine's cores, at most 8)")
        assert cli.READ_BACK_THREADS == 8
    assert code.storage_class is None and "(default: the bucket's)" in helps[("archive", "--storage-class")]
    from sruns_stream.config import MOUNT_CACHE_SIZE

    stated = re.search(r"\(default (\w+)\)", helps[("mount", "--cache-size")])
    assert stated and parse_size(stated[1]) == MOUNT_CACHE_SIZE
    interval = next(a for a in _status_actions() if a.dest == "interval")
    assert "(default 2)" in helps[("status", "--interval")] and interval.default == 2.0

    # Nothing else claims a default unchecked (paths found through the config are another test's).
    checked = {("archive", f) for f in [*sizes, "--level", "--compression", "--threads", "--read-threads", "--streams",
                                        "--storage-class"]}
    checked |= {("verify", "--threads"), ("restore", "--threads"), ("status", "--interval"), ("mount", "--cache-size")}
    claims = {key for key, text in helps.items() if "default" in text and key[1] not in ("--dest", "--journal",
                                                                                          "--config")}
    assert claims <= checked, claims - checked


def _status_actions() -> list:
    import argparse

    sub = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices["status"]._actions)


def test_the_readme_states_the_read_back_threads_default_as_the_help_does() -> None:
    from helpers import REPO

    readme = " ".join((REPO / "README.md").read_text().split())
    assert f"(default: the machine's cores, at most {cli.READ_BACK_THREADS})" in readme
