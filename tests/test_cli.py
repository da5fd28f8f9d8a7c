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
