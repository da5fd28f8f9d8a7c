"""The README's "Trying it without a cloud account" block, run as written (against the
suite's emulators instead of the ones it starts) in real processes: the daemon archives
the run to GCS and records it in Firestore, where the block's own lookup finds it, and
`verify` by run name reads it back (issue 24: the block started Firestore and nothing
wrote to it). Also the README's lists checked against the code: the mail and webhook
events, and config paths relative to the config's directory."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from helpers import REPO, child_env, run_cli

README = (REPO / "README.md").read_text()
RUN = "240101_M00001_0001_000000000-DEMO1"


def _block(after: str) -> str:
    start = README.index(after)
    body = README.index("```bash\n", start) + len("```bash\n")
    return README[body: README.index("\n```\n", body)]


@pytest.mark.slow  # the emulators, the daemon and gcloud's library in real processes
@pytest.mark.timeout(300)
def test_the_without_a_cloud_account_block_archives_to_gcs_and_records_in_firestore(gcs, firestore,
                                                                                    tmp_path: Path) -> None:
    lines = _block("### Trying it without a cloud account").splitlines()
    setup = lines[: next(i for i, line in enumerate(lines) if line.startswith("export FIRESTORE_EMULATOR_HOST")) + 1]
    assert any(line.startswith("gcloud emulators firestore start") for line in setup)  # the block starts both
    script = "\n".join(lines[len(setup):])
    # The suite's emulators stand for the ones the block starts; a small run, a test bucket.
    script = (script.replace("/tmp/sruns-try", str(tmp_path / "try")).replace("--size 200M", "--size 2M")
              .replace("my-seq-archive", gcs.bucket))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    blob = f"runs/{RUN}/{RUN}.tar.gz"
    doc = firestore.document("sequencing_runs", RUN)  # the oracle: the emulator's own REST reader
    assert doc is not None and doc["workflow_status"] == "complete" and doc["storage"] == f"{gcs.bucket}/{blob}"
    assert gcs.resource(blob) is not None
    out = done.stdout.splitlines()
    # status (a table), the block's Firestore lookup, verify by run name: in that order.
    assert any(line.split()[:2] == [RUN, "complete"] for line in out), done.stdout
    assert any("'workflow_status': 'complete'" in line and f"'storage': '{gcs.bucket}/{blob}'" in line
               for line in out), done.stdout
    assert out[-1].startswith(f"OK: gs://{gcs.bucket}/{blob}: "), done.stdout
    # Relative paths in the config resolved from its directory, not the current one (REPO).
    assert (tmp_path / "try" / "sruns.db").is_file() and not (REPO / "sruns.db").exists()


def test_the_readmes_events_are_what_the_daemon_sends() -> None:
    from sruns_stream.daemon import notify, webhook

    table = README[README.index("**What operators are told.**"): README.index("**Chat notifications.**")]
    rows = {m[1]: (m[2], m[3]) for m in re.finditer(r"^\| `(\w+)` \| [^|]+ \| (yes|no) \| (yes|no) \|$", table, re.M)}
    monitor = (REPO / "sruns_stream" / "daemon" / "monitor.py").read_text()
    sent = set(re.findall(r"MailEvent\.(\w+)\(", monitor))  # what the daemon sends (to mail, and to the webhook)
    assert set(rows) == sent, (set(rows), sent)
    assert all(mail == "yes" for mail, _ in rows.values())  # the mail notifier takes every event
    posted = {name for name, (_, hook) in rows.items() if hook == "yes"}
    assert {kind.name.lower() for kind in webhook.EVENTS} == posted
    assert {getattr(notify.EventKind, name.upper()) for name in rows} <= set(notify.EventKind)


@pytest.mark.timeout(60)
def test_relative_config_paths_resolve_from_the_configs_directory(tmp_path: Path) -> None:
    """As the README says, in a real process run from another directory."""
    assert "resolve from the config file's own directory" in " ".join(README.split())
    (tmp_path / "etc").mkdir()
    (tmp_path / "elsewhere").mkdir()
    conf = tmp_path / "etc" / "conf.json"
    conf.write_text(json.dumps({"sqlite_db": "state.db"}))
    proc = run_cli("status", "--config", str(conf), cwd=tmp_path / "elsewhere")
    assert proc.returncode == 2 and str(tmp_path / "etc" / "state.db") in proc.stderr, proc.stderr
