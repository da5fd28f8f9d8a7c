"""Typed configuration: sruns-monitor's JSON keys plus the pipeline's own, defaults here.

An existing sruns-monitor config file loads as it is (keys starting with ``#`` are
comments, as there). Anything wrong is refused at start with one line naming the key.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError, UsageError
from .runfolder.exclude import check_patterns
from .storage.layout import Location
from .storage.prices import REGIONS as PRICE_REGIONS

__all__ = [
    "AUTO_READ_THREADS",
    "AUTO_STREAMS",
    "AUTO_STREAMS_FROM",
    "CONFIG_ENV",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_VOLUME_SIZE",
    "GCS_CHUNK_QUANTUM",
    "LOCAL_OPEN_SECONDS",
    "MOUNT_CACHE_SIZE",
    "STORAGE_CLASSES",
    "ArchiveOptions",
    "Config",
    "ConfigSource",
    "MailConfig",
    "SYSTEM_CONFIG",
    "SYSTEM_CONFIG_ENV",
    "default_threads",
    "find_config",
    "load_config",
    "parse_config",
    "with_overrides",
]

KiB = 1024
MiB = 1024 * KiB
DEFAULT_BLOCK_SIZE = 1 * MiB
DEFAULT_CHUNK_SIZE = 16 * MiB
DEFAULT_SYNC_INTERVAL = 16 * MiB  # a crash redoes at most this much; fsyncs run off the hot path
GCS_CHUNK_QUANTUM = 256 * KiB
# Measured on this project's 2-core VM through benchmarks/sharesim (0.5 ms per
# operation, a 5,500-file MiSeq-style run): reading it took 0.77 s with 32 threads,
# 1.07 s with 16, 1.14 s with 64; walking it 0.34 s with 32 against 4.5 s with one.
# From the page cache, where an open takes ~10 us, 8 threads made a 55,000-file run
# ~1.5x slower (they only contend for the interpreter there): hence the probe.
AUTO_READ_THREADS = 32
LOCAL_OPEN_SECONDS = 50e-6
TiB = 1024 * 1024 * MiB
# Just under GCS's 5 TiB object limit, with room for the last part of a volume.
DEFAULT_VOLUME_SIZE = 5 * TiB - 1024 * MiB
# Runs whose tar stream is at least this big are uploaded on AUTO_STREAMS streams when
# upload_streams is not set; smaller ones on one (one stream is not the limit there, and
# composing costs a few requests).
AUTO_STREAMS_FROM = 2048 * MiB
AUTO_STREAMS = 4
# Raw bytes between access points. Measured on this project's 2-core VM, dropping the
# dictionary at each changed the archive by -0.02 % to +0.0003 % (MiSeq- and NovaSeq-
# style runs, 1 to 8 MiB): free. Fetching one member reads at most this much
# (compressed) before it; the index holds one 42-byte line per point.
DEFAULT_ACCESS_INTERVAL = 8 * MiB
# `mount --cache-size`: memory for inflated pieces of the archive (64 access intervals).
MOUNT_CACHE_SIZE = 512 * MiB
COMPRESSIONS = ("auto", "level", "none")
# The archive's storage class (`storage_class`): GCS's four, set when each object is created.
STORAGE_CLASSES = ("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE")
RETENTION_MODES = ("unlocked", "locked")
# projects/P/locations/L/keyRings/R/cryptoKeys/K: a Cloud KMS key, as GCS names it.
_KMS_KEY = re.compile(r"projects/[^/\s]+/locations/[^/\s]+/keyRings/[^/\s]+/cryptoKeys/[^/\s]+")
# Where a command finds its config without --config, in this order (as operators' tools
# do): this variable, then the system-wide file. SYSTEM_CONFIG_ENV moves the system file
# (for tests, and for packagers whose /etc is elsewhere).
CONFIG_ENV = "SRUNS_STREAM_CONFIG"
SYSTEM_CONFIG_ENV = "SRUNS_STREAM_SYSTEM_CONFIG"
SYSTEM_CONFIG = Path("/etc/sruns-stream/config.json")


def default_threads() -> int:
    """Cores this process may use (cgroup/affinity aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ArchiveOptions:
    """How one run is streamed: what `archive` flags and the config file set."""

    threads: int = field(default_factory=default_threads)
    compression: str = "auto"  # auto: deflate what compresses, store the rest
    level: int = 1
    block_size: int = DEFAULT_BLOCK_SIZE
    sync_interval: int = DEFAULT_SYNC_INTERVAL
    chunk_size: int = DEFAULT_CHUNK_SIZE
    upload_retries: int = 8
    # A durable point is asked for after this much raw tar (or this long) without one,
    # whatever the sync interval or chunk: a run that compresses 100:1 otherwise fills a
    # 16 MiB interval once per 1.6 GB, and a crash would redo all of it.
    checkpoint_raw_interval: int = 256 * MiB
    checkpoint_seconds: int = 30
    # Reading the run folder: directories listed and files read ahead on this many
    # threads, at most read_ahead bytes ahead of the stream (0 turns read-ahead off). On
    # a share every open/stat/read is a round trip; these overlap them. None (the
    # default) decides per run: AUTO_READ_THREADS where opening a file takes longer than
    # LOCAL_OPEN_SECONDS (a share, a cold disk), else none (the page cache: threads only
    # contend there). The archive's bytes depend on neither.
    read_threads: int | None = None
    read_ahead: int = 64 * MiB
    # Upload streams to GCS, each sending its own segments of the archive, composed into
    # one object at the end (`segments`). None decides per run (AUTO_STREAMS_FROM).
    upload_streams: int | None = None
    # An archive larger than this is stored as volumes <run>.tar.gz.000, .001, ... whose
    # concatenation is the archive: a GCS object holds at most 5 TiB.
    volume_size: int = DEFAULT_VOLUME_SIZE
    # An access point (a block deflated with no dictionary: inflation can start there,
    # and a reader fetches one member from the one before it) at the first block of
    # every access_interval raw bytes; 0: none.
    access_interval: int = DEFAULT_ACCESS_INTERVAL
    # Glob patterns below the run folder left out of the archive (see exclude.py); none
    # by default. Normalized (sorted, deduplicated) here: a resume compares them.
    exclude: tuple[str, ...] = ()
    # Costs and compliance (GCS only; see the README). The archive and its volumes are
    # created in storage_class (None: the bucket's default); everything else this run
    # creates (parts, manifest, index, listing) in STANDARD when a class is asked for.
    storage_class: str | None = None
    # A Cloud KMS key every object this run creates is encrypted with (CMEK); None: Google's.
    kms_key_name: str | None = None
    # Object retention on the archive and its volumes, set right after finalize.
    retain_days: int | None = None
    retention_mode: str = "unlocked"
    event_based_hold: bool = False
    temporary_hold: bool = False
    # The price table `dry-run` and `status` estimate the bill from (`storage.prices`):
    # a region of the table, and per-class overrides {class: [$/GiB-month, $/GiB read]}.
    price_region: str = "us-central1"
    prices: tuple[tuple[str, float, float], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude", check_patterns(self.exclude))
        if self.storage_class is not None and self.storage_class not in STORAGE_CLASSES:
            raise ConfigError(
                f"storage_class must be one of {', '.join(STORAGE_CLASSES)}, not {self.storage_class!r}"
            )
        if self.kms_key_name is not None and not _KMS_KEY.fullmatch(self.kms_key_name):
            raise ConfigError(
                f"kms_key_name must be a Cloud KMS key, projects/P/locations/L/keyRings/R/cryptoKeys/K, "
                f"not {self.kms_key_name!r}"
            )
        if self.retain_days is not None and not 1 <= self.retain_days <= 36500:
            raise ConfigError(f"retain_days must be between 1 and 36500, not {self.retain_days!r}")
        if self.retention_mode not in RETENTION_MODES:
            raise ConfigError(f"retention_mode must be unlocked or locked, not {self.retention_mode!r}")
        if self.price_region not in PRICE_REGIONS:
            raise ConfigError(f"price_region must be one of {', '.join(sorted(PRICE_REGIONS))}, "
                              f"not {self.price_region!r} (or give your own 'prices')")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"compression must be one of {', '.join(COMPRESSIONS)}, not {self.compression!r}")
        if self.level not in (1, 2, 3):
            raise ConfigError(
                f"level must be 1, 2 or 3, not {self.level!r} (level 0 grows incompressible "
                "data by about 23 %; use compression 'none' for no compression)"
            )
        if not 1 <= self.threads <= 256:
            raise ConfigError(f"threads must be between 1 and 256, not {self.threads!r}")
        if self.block_size < 64 * KiB or self.block_size > 64 * MiB or self.block_size % (4 * KiB):
            raise ConfigError(
                f"block_size must be a multiple of 4 KiB between 64 KiB and 64 MiB, not {self.block_size!r}"
            )
        if self.chunk_size <= 0 or self.chunk_size % GCS_CHUNK_QUANTUM:
            raise ConfigError(
                f"chunk_size must be a positive multiple of 256 KiB (262144), not {self.chunk_size!r}"
            )
        if self.sync_interval < self.block_size:
            raise ConfigError(f"sync_interval must be at least block_size ({self.block_size})")
        if self.upload_retries < 0:
            raise ConfigError(f"upload_retries must be 0 or more, not {self.upload_retries!r}")
        if self.checkpoint_raw_interval < self.block_size:
            raise ConfigError(f"checkpoint_raw_interval must be at least block_size ({self.block_size})")
        if self.read_threads is not None and not 0 <= self.read_threads <= 256:
            raise ConfigError(f"read_threads must be between 0 and 256, not {self.read_threads!r}")
        if self.read_ahead < 0:
            raise ConfigError(f"read_ahead must be 0 (off) or more bytes, not {self.read_ahead!r}")
        if self.upload_streams is not None and not 1 <= self.upload_streams <= 64:
            raise ConfigError(f"upload_streams must be between 1 and 64, not {self.upload_streams!r}")
        if not MiB <= self.volume_size <= 5 * TiB:
            raise ConfigError(
                f"volume_size must be between 1 MiB and 5 TiB (GCS's object limit), not {self.volume_size!r}"
            )
        if self.access_interval < 0:
            raise ConfigError(f"access_interval must be 0 (none) or more bytes, not {self.access_interval!r}")
        if self.checkpoint_seconds < 1:
            raise ConfigError(f"checkpoint_seconds must be 1 or more, not {self.checkpoint_seconds!r}")


@dataclass(frozen=True)
class MailConfig:
    """sruns-monitor's ``mail`` block, extended with port, TLS and login."""

    host: str
    from_addr: str
    to_addrs: tuple[str, ...]
    port: int = 25
    tls: str = "none"  # none | starttls | ssl
    user: str | None = None
    password_env: str | None = None  # the password is read from this variable, never the file


@dataclass(frozen=True)
class Config:
    """Everything the daemon and `archive --config` read from the JSON file."""

    watchdirs: tuple[Path, ...] = ()
    completed_runs_dir: Path | None = None
    sqlite_db: Path = Path("sruns.db")
    firestore_collection: str | None = None
    gcp_bucket_name: str | None = None
    gcp_bucket_basedir: str = ""
    local_dest: Path | None = None
    cycle_pause_sec: int = 60
    task_runtime_limit_sec: int | None = None
    sentinal_file_age_minutes: int = 0
    sweep_age_sec: int | None = None
    # RTA-marker-only runs, and runs found changed after a scan (analysis software writes
    # into run folders after the instrument is done): archived once nothing in the
    # folder changed for this long.
    quiet_period_sec: int = 1800
    max_concurrent_runs: int = 1
    max_attempts: int = 5
    host_id: str | None = None  # this daemon's identity in Firestore leases (default: host name)
    lease_sec: int = 600  # how long a claim on a run lasts without renewal
    # Claim runs in Firestore before starting them (several daemons on one share). With
    # Firestore down no new run starts; a single daemon can turn this off.
    leases: bool = True
    # A run archived with `exclude` patterns holds files no archive has: its folder is
    # moved to completed_runs_dir, but swept only if this says those files may go.
    sweep_excluded: bool = False
    webhook_url: str | None = None  # a JSON POST on archived, failed and gave up (Slack, Teams)
    mail: MailConfig | None = None
    name: str | None = None  # sruns-monitor's monitor name: the mail subject prefix, log tag
    archive: ArchiveOptions = field(default_factory=ArchiveOptions)

    @property
    def destination(self) -> str | None:
        """The configured destination in `--dest` form, or None."""
        if self.gcp_bucket_name:
            return str(Location("gcs", self.gcp_bucket_name, self.gcp_bucket_basedir.strip("/")))
        return str(self.local_dest) if self.local_dest else None


_ARCHIVE_KEYS = {f.name for f in fields(ArchiveOptions)}


def _expect(key: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise ConfigError(f"config key {key!r} must be {what}, not {value!r}")
    return value


def _positive_int(key: str, value: Any, allow_zero: bool = False) -> int:
    _expect(key, value, int, "a whole number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"config key {key!r} must be {'0 or more' if allow_zero else 'positive'}, not {value}")
    return int(value)


def _mail(value: Any) -> MailConfig:
    _expect("mail", value, dict, "an object")
    # sruns-monitor's schema: {"from", "host", "tos"} with "tos" a list; "to" is our spelling.
    known = {"host", "from", "to", "tos", "port", "tls", "user", "password_env"}
    unknown = sorted(k for k in value if k not in known and not k.startswith("#"))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in 'mail' (known: {', '.join(sorted(known))})")
    if "to" in value and "tos" in value:
        raise ConfigError("config key 'mail' has both 'to' and 'tos': keep one")
    to_key = "tos" if "tos" in value else "to"
    for key in ("host", "from", to_key):
        if key not in value:
            raise ConfigError(f"config key 'mail' needs {key!r}")
    to = value[to_key]
    to_addrs = (to,) if isinstance(to, str) else tuple(
        _expect(f"mail.{to_key}", a, str, "a list of addresses")
        for a in _expect(f"mail.{to_key}", to, list, "a list of addresses")
    )
    if not to_addrs:
        raise ConfigError(f"config key 'mail.{to_key}' must name at least one address")
    user = None if value.get("user") is None else _expect("mail.user", value["user"], str, "a user name")
    password_env = (
        None if value.get("password_env") is None
        else _expect("mail.password_env", value["password_env"], str, "an environment variable name")
    )
    if user and not password_env:
        raise ConfigError("config key 'mail.user' needs 'mail.password_env' (the variable holding the password)")
    tls = value.get("tls", "none")
    if tls not in ("none", "starttls", "ssl"):
        raise ConfigError(f"config key 'mail.tls' must be none, starttls or ssl, not {tls!r}")
    return MailConfig(
        host=_expect("mail.host", value["host"], str, "a host name"),
        from_addr=_expect("mail.from", value["from"], str, "an address"),
        to_addrs=to_addrs,
        port=_positive_int("mail.port", value.get("port", 465 if tls == "ssl" else 25)),
        tls=tls,
        user=user,
        password_env=password_env,
    )


def _webhook_url(value: Any) -> str:
    # The URL is a credential (a Slack or Teams webhook's path is its secret): an error
    # shows its scheme and host at most, never the rest, whatever is wrong with it.
    if not isinstance(value, str):
        raise ConfigError(f"config key 'webhook_url' must be a URL (a string), not a {type(value).__name__} "
                          "(its value is not shown: it holds a credential)")
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        raise ConfigError("config key 'webhook_url' is not a readable URL (its value is not shown: it holds a "
                          "credential)") from None
    if parts.scheme not in ("https", "http") or not host:
        shown = f"{parts.scheme or '(no scheme)'}://{host or '(no host)'}/…"
        raise ConfigError(f"config key 'webhook_url' must be an https:// (or http://) URL with a host, not {shown} "
                          "(the rest is not shown: it holds a credential)")
    return value


_COMPLIANCE_KEYS = {"storage_class", "kms_key_name", "retain_days", "retention_mode", "event_based_hold",
                    "temporary_hold", "price_region", "prices"}


def _compliance(key: str, value: Any) -> Any:
    """A storage class, key, retention or price key (checked again by ArchiveOptions)."""
    if key in ("storage_class", "kms_key_name", "retain_days") and value is None:
        return None
    if key in ("event_based_hold", "temporary_hold"):
        return _expect(key, value, bool, "true or false")
    if key == "retain_days":
        return _positive_int(key, value)
    if key == "storage_class":
        return str(_expect(key, value, str, "a storage class")).upper()
    if key == "prices":
        _expect(key, value, dict, "an object {CLASS: [dollars per GiB-month, dollars per GiB read]}")
        rows = []
        for cls, pair in value.items():
            if (cls.upper() not in STORAGE_CLASSES or not isinstance(pair, list) or len(pair) != 2
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in pair)):
                raise ConfigError(
                    f"config key 'prices' must map a storage class to [dollars per GiB-month, dollars per "
                    f"GiB read], not {cls!r}: {pair!r}"
                )
            rows.append((cls.upper(), float(pair[0]), float(pair[1])))
        return tuple(sorted(rows))
    return _expect(key, value, str, "a string")


def parse_config(raw: dict[str, Any], base: Path | None = None) -> Config:
    """Build a Config from parsed JSON (relative paths resolve against ``base``)."""
    base = base or Path.cwd()
    data = {k: v for k, v in raw.items() if not k.startswith("#")}

    def path(key: str) -> Path:
        p = Path(_expect(key, data[key], str, "a path"))
        return p if p.is_absolute() else base / p

    kw: dict[str, Any] = {}
    archive: dict[str, Any] = {}
    for key in list(data):
        value = data[key]
        if key == "watchdir":
            kw["watchdirs"] = (path(key),)
        elif key == "watchdirs":
            _expect(key, value, list, "a list of paths")
            kw["watchdirs"] = tuple(
                Path(_expect(key, v, str, "a list of paths")) if Path(v).is_absolute() else base / v
                for v in value
            )
        elif key in ("completed_runs_dir", "sqlite_db", "local_dest"):
            kw[key] = path(key)
        elif key in ("firestore_collection", "gcp_bucket_name", "gcp_bucket_basedir", "name", "host_id"):
            kw[key] = _expect(key, value, str, "a string") if value is not None else None
        elif key in ("cycle_pause_sec", "max_concurrent_runs", "max_attempts", "lease_sec", "quiet_period_sec"):
            kw[key] = _positive_int(key, value)
        elif key in ("task_runtime_limit_sec", "sweep_age_sec"):
            kw[key] = None if value is None else _positive_int(key, value)
        elif key == "sentinal_file_age_minutes":
            kw[key] = _positive_int(key, value, allow_zero=True)
        elif key in ("leases", "sweep_excluded"):
            kw[key] = _expect(key, value, bool, "true or false")
        elif key == "webhook_url":
            kw[key] = None if value is None else _webhook_url(value)
        elif key == "exclude":
            patterns = [_expect(key, v, str, "a list of glob patterns")
                        for v in _expect(key, value, list, "a list of glob patterns")]
            try:
                archive[key] = check_patterns(patterns, "config key 'exclude'")
            except UsageError as exc:
                raise ConfigError(str(exc)) from None
        elif key == "mail":
            kw[key] = _mail(value) if value else None
        elif key == "compression" and isinstance(value, int) and not isinstance(value, bool):
            archive["compression"], archive["level"] = "level", value  # "compression": 2
        elif key in _COMPLIANCE_KEYS:
            archive[key] = _compliance(key, value)
        elif key in ("read_threads", "upload_streams") and value is None:
            archive[key] = None  # decided per run
        elif key in _ARCHIVE_KEYS:
            archive[key] = _expect(key, value, str if key == "compression" else int,
                                   "a string" if key == "compression" else "a whole number")
        else:
            raise ConfigError(f"unknown config key {key!r}: check its spelling (comments start with '#')")
    if "gcp_bucket_name" in kw and kw["gcp_bucket_name"] == "":
        raise ConfigError("config key 'gcp_bucket_name' is empty: remove it or name a bucket")
    kw["archive"] = ArchiveOptions(**archive)
    return Config(**kw)


def load_config(path: Path | str) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    return parse_config(raw, base=path.parent.absolute())


@dataclass(frozen=True)
class ConfigSource:
    """Which config file a command uses and how it was found; ``path`` None: none, the
    defaults (journal ./sruns.db, no destination)."""

    path: Path | None
    how: str  # "--config", "$SRUNS_STREAM_CONFIG", "system" or "none"

    def describe(self) -> str:
        if self.path is None:
            return f"none (no --config, no ${CONFIG_ENV}, no {system_config()})"
        found = {"--config": "given with --config", "system": "the system config"}.get(self.how, f"from {self.how}")
        return f"{self.path} ({found})"


def system_config() -> Path:
    return Path(os.environ.get(SYSTEM_CONFIG_ENV) or SYSTEM_CONFIG)


def find_config(given: Path | None) -> ConfigSource:
    """--config, else $SRUNS_STREAM_CONFIG, else the system config if it exists, else none.
    A file named by the flag or the variable must exist (a typo there is not "no config")."""
    if given is not None:
        return ConfigSource(given.absolute(), "--config")
    env = os.environ.get(CONFIG_ENV)
    if env:
        path = Path(env).absolute()
        if not path.is_file():
            raise ConfigError(f"${CONFIG_ENV} names {path}, which is not a file: fix or unset it")
        return ConfigSource(path, f"${CONFIG_ENV}")
    system = system_config()
    if os.path.lexists(system):
        return ConfigSource(system.absolute(), "system")
    return ConfigSource(None, "none")


def with_overrides(options: ArchiveOptions, **changes: Any) -> ArchiveOptions:
    """ArchiveOptions with the given fields replaced, skipping None (flags not given)."""
    return replace(options, **{k: v for k, v in changes.items() if v is not None})
