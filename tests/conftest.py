"""Fixtures shared by all tests; the real parts they talk to live in ``plugins/``:
the GCS emulator (``gcs``), the Firestore emulator (``firestore``) and an SMTP server
(``smtp``, ``serve``) and
an HTTP server that takes webhook POSTs (``webhook``).

Tests that start an emulator are marked ``slow`` here, by the fixtures they use; tests
that kill, signal or time real processes, or take more than ~3 s, carry the mark
themselves. ``pytest -m "not slow"`` is the quick inner loop: there the CLI runs in
process (``helpers.run_in_process``) unless a real process is the point.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

pytest_plugins = ["plugins.gcs_emulator", "plugins.firestore_emulator", "plugins.smtp_server", "plugins.webhook_server"]

_EMULATORS = {"gcs", "firestore", "firestore_emulator"}


def pytest_configure(config: pytest.Config) -> None:
    # A shell that starts a job in the background without job control (a CI script, a
    # nohup'd run) starts it with SIGINT ignored, and children inherit that: a process a
    # test stops with Ctrl-C (SIGINT) would never see it. Handled here, it is reset to the
    # default in every process the tests start.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # No command in a test finds this machine's config (`config.find_config`): a test
    # that wants one gives it, or points these at its own.
    os.environ.pop("SRUNS_STREAM_CONFIG", None)
    os.environ["SRUNS_STREAM_SYSTEM_CONFIG"] = str(Path(__file__).resolve().parent / "no-system-config.json")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _EMULATORS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _no_process_left_behind():
    """A test that fails half-way (a timeout, a failed assertion while a process is
    stopped) must not leave what it started running: each is killed by its PID."""
    import helpers

    yield
    while helpers.STARTED:
        proc = helpers.STARTED.pop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a stopped process cannot die until continued
            proc.kill()
            proc.communicate()


@pytest.fixture
def journal(tmp_path: Path):
    """A journal in the test's directory, closed at the end."""
    from sruns_stream.state.journal import Journal

    j = Journal(tmp_path / "sruns.db")
    yield j
    j.close()


@pytest.fixture
def make_run(tmp_path: Path):
    """Generate a fake run folder: make_run(kind, size, seed=0, **kw) -> Path."""
    import make_fake_run

    def _make(kind: str = "miseq", size: int = 4 << 20, seed: int = 0, name: str | None = None, **kw):
        path = tmp_path / (name or f"240101_M00001_0001_000000000-{kind.upper()[:5]}")
        make_fake_run.make_run(path, kind, size, seed=seed, **kw)
        return path

    return _make
