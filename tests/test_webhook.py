"""`webhook_url` in real processes: the daemon POSTs JSON with a `text` field (what
Slack's and Teams' incoming webhooks show) to a real HTTP server on loopback when a run
is archived, fails, and is given up on; a webhook that fails is logged and changes
nothing else."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from helpers import journal_row, run_cli

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, url: str, **extra) -> Path:
    conf = {"watchdir": str(tmp_path / "watch"), "sqlite_db": str(tmp_path / "sruns.db"),
            "local_dest": str(tmp_path / "archives"), "cycle_pause_sec": 1, "sentinal_file_age_minutes": 0,
            "threads": 2, "webhook_url": url, **extra}
    path = tmp_path / "conf.json"
    path.write_text(json.dumps(conf))
    return path


@pytest.mark.timeout(180)
def test_archived_failed_and_gave_up_are_posted(webhook, tmp_path: Path) -> None:
    import make_fake_run

    inbox, url = webhook
    good = tmp_path / "watch" / "240101_M00001_0001_000000000-HOOK1"
    make_fake_run.make_run(good, "miseq", 1 << 20, seed=1)
    proc = run_cli("monitor", "--config", str(_config(tmp_path, url)), "--once", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [post] = inbox.posts
    assert post["path"] == "/services/T000/B000/secret-token" and post["content_type"] == "application/json"
    body = post["json"]
    archive = tmp_path / "archives" / good.name / f"{good.name}.tar.gz"
    assert body["run"] == good.name and body["event"] == "archived" and body["headline"] == "archived"
    assert body["text"].startswith(f"[sruns-stream] {good.name}: archived\n")
    assert f"location: {archive}" in body["text"] and body["facts"]["location"] == str(archive)
    assert "secret-token" not in proc.stderr  # the URL is a credential: logs name its host only
    assert f"posted '[sruns-stream] {good.name}: archived' to the webhook at http://127.0.0.1:" in proc.stderr

    # A run that cannot be archived: one POST for the failure, one when the daemon gives up.
    import shutil

    shutil.rmtree(tmp_path / "archives")
    (tmp_path / "archives").write_text("not a directory")
    bad = tmp_path / "watch" / "240101_M00001_0002_000000000-HOOK2"
    make_fake_run.make_run(bad, "miseq", 1 << 20, seed=2)
    conf = _config(tmp_path, url, max_attempts=2, name="seq-lab")
    assert run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path).returncode == 0
    import sqlite3

    with sqlite3.connect(tmp_path / "sruns.db") as db:
        db.execute("UPDATE tasks SET next_attempt_at = 0")
    assert run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path).returncode == 0
    assert journal_row(tmp_path / "sruns.db", bad.name)["gave_up_at"] is not None
    events = [(p["json"]["run"], p["json"]["event"]) for p in inbox.posts[1:]]
    assert events == [(bad.name, "failed"), (bad.name, "gave_up")]
    failed, gave_up = (p["json"] for p in inbox.posts[1:])
    assert failed["text"].startswith(f"[seq-lab] {bad.name}: failed (attempt 1 of 2)\n")
    assert "cannot write" in failed["facts"]["error"]
    assert gave_up["text"].startswith(f"[seq-lab] {bad.name}: gave up after 2 attempts\n")
    # The hint works pasted anywhere: it names the daemon's config.
    assert f"sruns-stream retry {bad.name} --config {tmp_path / 'conf.json'}" in gave_up["text"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("broken", ["refused", "http 500"])
def test_a_failing_webhook_is_logged_and_the_run_is_archived(webhook, tmp_path: Path, broken: str) -> None:
    import make_fake_run

    inbox, url = webhook
    if broken == "refused":
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    else:
        inbox.status = 500
    run = tmp_path / "watch" / "240101_M00001_0003_000000000-HOOK3"
    make_fake_run.make_run(run, "miseq", 1 << 20, seed=3)
    proc = run_cli("monitor", "--config", str(_config(tmp_path, url)), "--once", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert journal_row(tmp_path / "sruns.db", run.name)["status"] == "complete"
    [line] = [line for line in proc.stderr.splitlines() if "sruns_stream.daemon.webhook" in line]
    assert (
        f"ERROR sruns_stream.daemon.webhook: webhook '[sruns-stream] {run.name}: archived' not sent to http://127.0.0.1:"
        in line
    )
    assert ("HTTP 500" in line) if broken == "http 500" else ("refused" in line), line


@pytest.mark.timeout(60)
@pytest.mark.parametrize("url", ["ftp://example.org/x", "hooks.slack.com/services/x", 42])
def test_a_webhook_url_that_is_not_http_is_a_config_error(tmp_path: Path, url: object) -> None:
    (tmp_path / "watch").mkdir()
    conf = _config(tmp_path, url)  # type: ignore[arg-type]
    proc = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "config key 'webhook_url' must be " in proc.stderr and "URL" in proc.stderr, proc.stderr
