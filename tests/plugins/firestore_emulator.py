"""Firestore emulator fixtures: the real Cloud Firestore emulator (Java), on a free loopback port.

``firestore_emulator`` (session) starts the emulator jar once and stops it, by the PID
it started, at the end. ``firestore`` (per test) makes sure it is running (a test may
have stopped or paused it), deletes every document, and points
FIRESTORE_EMULATOR_HOST and GOOGLE_CLOUD_PROJECT at it.

The emulator needs Java 17+ and the jar of the google-cloud-cli component
``cloud-firestore-emulator``; set FIRESTORE_EMULATOR_JAR if it lives elsewhere. Without
them the tests are skipped, saying why; CI has both.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PROJECT = "sruns-test"
DEFAULT_JAR = Path(
    "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar"
)
MAIN_CLASS = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"
START_TIMEOUT_S = 60.0  # a cold JVM on a busy 2-core machine


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _value(v: dict[str, Any]) -> Any:
    """A Firestore REST value as plain Python (timestamps as aware datetimes)."""
    (kind, raw), = v.items()
    if kind == "integerValue":
        return int(raw)
    if kind == "doubleValue":
        return float(raw)
    if kind == "timestampValue":
        return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if kind == "nullValue":
        return None
    if kind == "mapValue":
        return {k: _value(x) for k, x in raw.get("fields", {}).items()}
    if kind == "arrayValue":
        return [_value(x) for x in raw.get("values", [])]
    return raw  # stringValue, booleanValue


class FirestoreEmulator:
    """One emulator process: start, stop (crash), pause (hang), and a REST reader.

    The reader uses urllib and the REST API rather than google-cloud-firestore, so what
    a test checks does not go through the code under test.
    """

    def __init__(self, jar: Path, java: str, port: int, log_path: Path) -> None:
        self.jar = jar
        self.java = java
        self.port = port
        self.host = f"127.0.0.1:{port}"
        self.project = PROJECT
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start on this emulator's port (the same port after a stop) and wait for `Ok`."""
        assert not self.running
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [self.java, "-cp", str(self.jar), MAIN_CLASS, "start", "--host=127.0.0.1", f"--port={self.port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        self.paused = False
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"Firestore emulator exited with {self.proc.returncode}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.host}/", timeout=1) as resp:
                    if resp.read().strip() == b"Ok":
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"Firestore emulator not ready after {START_TIMEOUT_S:.0f} s:\n{self._log_tail()}")

    def stop(self, crash: bool = False) -> None:
        """Stop the process this object started, by its PID: SIGTERM, or SIGKILL to crash."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # A paused process does not act on SIGTERM until continued: kill it.
            self.proc.send_signal(signal.SIGKILL if crash or self.paused else signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung Firestore)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True
        # kill() returns before every thread of the JVM has stopped; a request sent in
        # that window would still be answered. Wait until /proc shows each one stopped.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self._all_threads_stopped():
            time.sleep(0.01)

    def _all_threads_stopped(self) -> bool:
        assert self.proc is not None
        try:
            tasks = os.listdir(f"/proc/{self.proc.pid}/task")
            states = []
            for tid in tasks:
                with open(f"/proc/{self.proc.pid}/task/{tid}/stat", "rb") as f:
                    stat = f.read()
                states.append(stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3])
        except OSError:
            return True  # gone, or not Linux: nothing more to wait for
        return all(state in (b"T", b"t") for state in states)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def reset(self) -> None:
        """Delete every document of the project."""
        req = urllib.request.Request(
            f"http://{self.host}/emulator/v1/projects/{self.project}/databases/(default)/documents",
            method="DELETE",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()

    def document(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        """A document's fields as plain Python, or None when it does not exist."""
        quoted = urllib.parse.quote(doc_id, safe="")
        url = f"http://{self.host}/v1/projects/{self.project}/databases/(default)/documents/{collection}/{quoted}"
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        return {k: _value(v) for k, v in doc.get("fields", {}).items()}

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"


@pytest.fixture(scope="session")
def firestore_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirestoreEmulator]:
    jar = Path(os.environ.get("FIRESTORE_EMULATOR_JAR") or DEFAULT_JAR)
    java = shutil.which("java")
    if java is None:
        pytest.skip("Firestore emulator tests need Java 17+ (`java` is not on PATH)")
    if not jar.is_file():
        pytest.skip(
            f"Firestore emulator jar not found at {jar}: install the google-cloud-cli component "
            "cloud-firestore-emulator or set FIRESTORE_EMULATOR_JAR"
        )
    emulator = FirestoreEmulator(jar, java, _free_port(), tmp_path_factory.mktemp("firestore") / "emulator.log")
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def firestore(firestore_emulator: FirestoreEmulator, monkeypatch: pytest.MonkeyPatch) -> FirestoreEmulator:
    """The running emulator, empty, with the environment pointing at it."""
    if firestore_emulator.paused:
        firestore_emulator.resume()
    if not firestore_emulator.running:
        firestore_emulator.start()
    firestore_emulator.reset()
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", firestore_emulator.project)
    return firestore_emulator


@pytest.fixture
def mirror(journal: Any, firestore: FirestoreEmulator) -> Iterator[Any]:
    """A FirestoreMirror of the test's journal into collection ``sruns``."""
    from sruns_stream.state.firestore import FirestoreMirror

    # Generous: the emulator's first commit after a (re)start takes seconds (JVM warm-up).
    m = FirestoreMirror(journal, "sruns", call_timeout_s=10.0)
    yield m
    m.close()
