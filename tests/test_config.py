"""Configuration: sruns-monitor's files load as they are; anything wrong is one line
naming the key; defaults live in one place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli

from sruns_stream.config import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_CHUNK_SIZE,
    ArchiveOptions,
    Config,
    load_config,
    parse_config,
    with_overrides,
)
from sruns_stream.errors import ConfigError

# sruns-monitor's own example config (its README), keys and all.
SRUNS_MONITOR_CONF = {
    "name": "Stanford Center for Genomics",
    "watchdirs": ["/seq/runs"],
    "completed_runs_dir": "/seq/archived",
    "sqlite_db": "sruns.db",
    "firestore_collection": "sequencing_runs",
    "gcp_bucket_name": "seq-archive",
    "gcp_bucket_basedir": "runs",
    "cycle_pause_sec": 30,
    "task_runtime_limit_sec": 86400,
    "sentinal_file_age_minutes": 15,
    "sweep_age_sec": 604800,
    "mail": {"from": "sruns@example.org", "host": "smtp.example.org", "tos": ["ops@example.org"]},
}


def test_an_sruns_monitor_config_loads_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "conf.json"
    path.write_text(json.dumps({"# comment": "keys starting with # are comments", **SRUNS_MONITOR_CONF}))
    config = load_config(path)
    assert config.watchdirs == (Path("/seq/runs"),)
    assert config.sqlite_db == tmp_path / "sruns.db"  # relative to the config file
    assert config.destination == "gs://seq-archive/runs"
    assert config.sentinal_file_age_minutes == 15 and config.sweep_age_sec == 604800
    assert config.mail is not None and config.mail.to_addrs == ("ops@example.org",) and config.mail.port == 25
    assert config.name == "Stanford Center for Genomics"
    assert config.archive == ArchiveOptions()  # none of ours given: our defaults


def test_defaults_are_in_one_place() -> None:
    config = Config()
    assert config.destination is None and config.sqlite_db == Path("sruns.db")
    assert config.quiet_period_sec == 1800 and config.max_attempts == 5
    options = ArchiveOptions()
    # The values the README documents, spelled out: a changed default must change this test.
    assert (options.block_size, options.chunk_size, options.compression, options.level) == (
        1 << 20, 16 << 20, "auto", 1)
    assert (options.block_size, options.chunk_size) == (DEFAULT_BLOCK_SIZE, DEFAULT_CHUNK_SIZE)
    assert options.checkpoint_raw_interval == 256 << 20 and options.checkpoint_seconds == 30


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"wtachdir": "/x"}, ["'wtachdir'", "spelling"]),
        ({"chunk_size": 1000}, ["chunk_size", "256 KiB"]),
        ({"block_size": 100}, ["block_size", "4 KiB"]),
        ({"level": 0}, ["level", "23 %"]),
        ({"compression": "zstd"}, ["compression", "auto"]),
        ({"cycle_pause_sec": -1}, ["cycle_pause_sec", "positive"]),
        ({"quiet_period_sec": "1h"}, ["quiet_period_sec", "whole number"]),
        ({"leases": "yes"}, ["leases", "true or false"]),
        ({"gcp_bucket_name": ""}, ["gcp_bucket_name", "empty"]),
        ({"mail": {"host": "h", "from": "f"}}, ["mail", "'to'"]),
        ({"mail": {"host": "h", "from": "f", "to": [], "user": "u"}}, ["mail"]),
        ({"checkpoint_raw_interval": 1024}, ["checkpoint_raw_interval", "block_size"]),
        ({"threads": True}, ["threads", "whole number"]),
        ({"exclude": ["Logs", "*.xml"]}, ["config key 'exclude'", "'*.xml'", "RunInfo.xml", "more narrowly"]),
        ({"exclude": ["RTAComplete.txt"]}, ["config key 'exclude'", "'RTAComplete.txt' would leave out RTAComplete"]),
    ],
)
def test_a_bad_key_is_one_line_naming_it(raw: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_a_file_that_is_not_json_or_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "conf.json"
    path.write_text('{"watchdir": "/x",}')
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(path)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")


def test_flags_override_the_file_and_an_integer_compression_means_a_level() -> None:
    config = parse_config({"compression": 2, "threads": 3})
    assert (config.archive.compression, config.archive.level, config.archive.threads) == ("level", 2, 3)
    options = with_overrides(config.archive, threads=None, level=3)
    assert (options.threads, options.level) == (3, 3)


def test_the_cli_says_which_key_is_wrong_with_exit_2(tmp_path: Path) -> None:
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"watchdir": str(tmp_path), "sweep_age_sec": "soon"}))
    proc = run_cli("monitor", "--config", str(conf), "--once", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "sweep_age_sec" in proc.stderr and "Traceback" not in proc.stderr
