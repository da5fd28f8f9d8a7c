"""The progress bar on a real terminal: `archive`, `verify` and `restore` run with stderr
on a pseudo-terminal of a given width, and what they wrote is rendered by a terminal
emulator (pyte). The rendered screen is the oracle: one bar line, never wider than the
terminal (a wider one wraps, and the next redraw stacks another bar under it), and no
characters left over from a longer line drawn before it."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pyte
import pytest
from helpers import child_env

HEIGHT = 60
BAR = re.compile(
    r"(\[[#-]+\] )?\s*\d+\.\d% (\S+ [kMGT]?B/\S+ [kMGT]?B )?(\d[\d,]*/\d[\d,]* files )?(\S+ MB/s )?"
    r"ETA (\d+:\d\d:\d\d|-:--:--)"
)


def _size(fd: int, width: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", HEIGHT, width, 0, 0))


def _screen(width: int, output: bytes) -> list[str]:
    screen = pyte.Screen(width, HEIGHT)
    pyte.ByteStream(screen).feed(output)
    return [line.rstrip() for line in screen.display]


def _read_all(master: int, proc: subprocess.Popen[bytes]) -> bytes:
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: every writer closed its end
                break
            if not data:
                break
            out += data
        elif proc.poll() is not None:
            break
    return out


def _in_terminal(width: int, *args: str, cwd: Path) -> tuple[list[str], str, int]:
    """`python -m sruns_stream ARGS` with stderr on a terminal ``width`` columns wide: the
    rendered screen, stdout, the exit code."""
    master, slave = pty.openpty()
    _size(slave, width)
    env = {k: v for k, v in child_env({"TERM": "xterm-256color"}).items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-m", "sruns_stream", *args], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    try:
        output = _read_all(master, proc)
        stdout = proc.communicate(timeout=120)[0].decode()
    finally:
        os.close(master)
    return _screen(width, output), stdout, proc.returncode


def _the_bar(lines: list[str], width: int) -> str:
    """The one bar line on the screen; every other line is a note or empty."""
    bars = [line for line in lines if "%" in line and "ETA" in line]
    assert len(bars) == 1, lines
    for line in lines:
        assert len(line) < width, line
        assert not line or line in bars or line.startswith("sruns-stream: "), lines
    assert BAR.fullmatch(bars[0]), bars[0]
    return bars[0]


@pytest.mark.slow  # three real processes on a terminal each, ~2 s apiece
@pytest.mark.timeout(180)
@pytest.mark.parametrize("width", [40, 80, 200])
def test_archive_verify_restore_draw_one_line_that_fits(make_run, tmp_path: Path, width: int) -> None:
    run = make_run("miseq", 24 << 20)
    files = sum(1 for _, _, names in os.walk(run) for _ in names)
    db = str(tmp_path / "sruns.db")
    lines, out, code = _in_terminal(width, "archive", str(run), "--dest", str(tmp_path / "dest"), "--journal", db,
                                    "--threads", "1", "--block-size", "64K", cwd=tmp_path)
    assert code == 0, lines
    bar = _the_bar(lines, width)
    assert " 100.0% " in f" {bar}" and bar.endswith("ETA 0:00:00"), bar
    if width >= 80:
        assert f" {files:,}/{files:,} files " in bar and " MB/s " in bar, bar
    assert out.startswith(f"{run.name}: {files} files, ") and out.count("\n") == 1  # the summary, as without a bar

    archive = tmp_path / "dest" / run.name / f"{run.name}.tar.gz"
    for args in (("verify", str(archive)), ("restore", str(archive), str(tmp_path / "out"))):
        lines, out, code = _in_terminal(width, *args, cwd=tmp_path)
        assert code == 0, (args, lines, out)
        bar = _the_bar(lines, width)
        assert " 100.0% " in f" {bar}", bar
        if width >= 80:
            assert f" {files:,}/{files:,} files " in bar, bar
        assert out.startswith("OK: ")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("width", [40, 80, 200])
def test_a_shorter_line_leaves_nothing_of_the_longer_one_before_it(width: int) -> None:
    """A fast start then a crawl: the rate's text shrinks ("1000.0 MB/s" to "0.1 MB/s"),
    and with a bar of capped length so does the line. The clock is the bar's own, so every
    update is drawn."""
    from sruns_stream.progress import TerminalProgress

    master, slave = pty.openpty()
    _size(slave, width)
    now = [0.0]
    total = 10_000_000_000
    with open(slave, "w", closefd=True) as stream:
        bar = TerminalProgress(stream, clock=lambda: now[0])
        bar.start(total, 0, 10_000, 0)
        done = 0
        for step in range(40):
            now[0] += 1.0
            done += 1_000_000_000 // 10 if step < 10 else 100_000
            bar.update(done, done // 2, files_done=step * 10)
        bar.note("a note in between")
        now[0] += 1.0
        bar.update(done + 100_000, 0, files_done=400)
        bar.close()
    output = b""
    while select.select([master], [], [], 0)[0]:
        try:
            data = os.read(master, 1 << 16)
        except OSError:
            break
        if not data:
            break
        output += data
    os.close(master)
    lines = _screen(width, output)
    line = _the_bar(lines, width)
    assert "sruns-stream: a note in between" in lines
    pct = f"{100.0 * (done + 100_000) / total:5.1f}%"
    assert line.startswith(pct) or f"] {pct} " in line, line
    if width >= 80:
        assert " 400/10,000 files " in line, line
    assert "1000.0 MB/s" not in line and line.count("ETA") == 1


@pytest.mark.parametrize("width", [20, 40, 80, 200])
def test_the_line_fits_every_width_and_keeps_percent_and_eta_longest(width: int) -> None:
    from sruns_stream.progress import progress_line

    for done, total, rate, eta in ((0, 0, None, None), (5 * 10**11, 10**12, 123.4e6, 36000.0), (1, 10**15, 1.0, 1e9)):
        line = progress_line(width, done, total, 123_456, 654_321, rate, eta)
        assert 0 < len(line) < width, line
        assert "%" in line
    assert "ETA 10:00:00" in progress_line(80, 5 * 10**11, 10**12, None, None, 123.4e6, 36000.0)
