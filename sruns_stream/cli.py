"""`sruns-stream` command line: parses arguments, wires the parts, maps errors to exit codes.

Exit codes: `errors.EXIT_MEANINGS` (every command's --help prints it; the README's table
says more).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import logging
import os
import shutil
import signal
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from . import __version__, stopping
from .config import (
    AUTO_READ_THREADS,
    AUTO_STREAMS,
    AUTO_STREAMS_FROM,
    CONFIG_ENV,
    LOCAL_OPEN_SECONDS,
    MOUNT_CACHE_SIZE,
    STORAGE_CLASSES,
    SYSTEM_CONFIG,
    ArchiveOptions,
    Config,
    find_config,
    load_config,
    system_config,
    with_overrides,
)
from .errors import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_MEANINGS,
    EXIT_OK,
    EXIT_USAGE,
    Interrupted,
    SrunsError,
    UsageError,
    redact,
)
from .humanize import flag_size, parse_size
from .progress import NoProgress, Progress, Silent, TerminalProgress

if TYPE_CHECKING:
    from .state.journal import Journal

# Each command imports the rest of what it uses when it runs (the archiver, the journal,
# GCS): `--version`, `--help` and a usage error start in a few tens of milliseconds.

__all__ = ["main", "main_cli"]

# verify and restore inflate on the machine's cores, up to this many by default.
READ_BACK_THREADS = 8
_DEFAULTS = ArchiveOptions(threads=1)  # what --help says each archive flag defaults to
_INTERRUPTED_LINE = "sruns-stream: interrupted; run the same command again to resume"
_STOPPED_LINE = {
    "verify": "sruns-stream: interrupted; the archive was not fully verified",
    "restore": "sruns-stream: interrupted; the files restored so far were checked against the manifest;"
               " run again into an empty DEST, or with --force",
}


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1M, 256K, 16777216)") from None


class _ArgumentsError(Exception):
    """A bad command line, raised by `_Parser.error` so `main` prints it as one line."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(f"{parser.prog}: error: {message} (see {parser.prog} --help)")


class _Parser(argparse.ArgumentParser):
    """argparse without abbreviations (`--thread 4` must not run as `--threads 4`), whose
    errors are one line (not the usage block above it). Subcommands' parsers are of this
    class too (argparse makes them with the parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)
        self._given: list[str] = []

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        # "RUN is required" after `verify --jsn` is the wrong turn to name: the flag is.
        unknown = None if self._subparsers else self.unknown_flag(self._given)
        raise _ArgumentsError(self, unknown or message)

    def unknown_flag(self, given: Sequence[str]) -> str | None:
        """"unknown flag --X; did you mean --Y?" for the first flag this parser does not
        know, or None."""
        known = [s for action in self._actions for s in action.option_strings]
        for arg in given:
            if arg == "--":
                return None
            flag = arg.split("=", 1)[0]
            if flag.startswith("-") and len(flag) > 1 and not flag[1:2].isdigit() and flag not in known:
                near = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
                return f"unknown flag {flag}" + (f"; did you mean {near[0]}?" if near else "")
        return None


def _unknown(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]) -> _ArgumentsError:
    """One line for what the command's parser left over: an unknown flag, or one argument
    too many."""
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = subcommands.choices[args.command]
    assert isinstance(command, _Parser)
    return _ArgumentsError(command, command.unknown_flag(extras) or f"unexpected argument {extras[0]!r}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="sruns-stream",
        description="Stream Illumina run folders as tar.gz to GCS or a local directory, resumably.",
    )
    p.add_argument("--version", action="version", version=f"sruns-stream {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("archive", help="archive one run folder (resumes an interrupted attempt)")
    a.add_argument("rundir", type=Path, help="the run folder")
    a.add_argument("--dest",
                   help="DIR, file://DIR, gs://BUCKET[/PREFIX] or null (default: the config's; none without one: "
                        "--dest . archives into the current directory)")
    a.add_argument("--threads", type=int, help="compression threads (default: all cores)")
    a.add_argument("--level", type=int,
                   help=f"gzip level 1-3 (ISA-L; default {_DEFAULTS.level}); alone it deflates every member")
    a.add_argument("--compression", choices=["auto", "level", "none"],
                   help="auto: store already-compressed members, deflate the rest (default); "
                        "level: deflate everything; none: plain .tar")
    a.add_argument("--block-size", type=_size, help=f"raw block size (default {flag_size(_DEFAULTS.block_size)})")
    a.add_argument("--sync-interval", type=_size,
                   help="local destination: fsync every this many bytes "
                        f"(default {flag_size(_DEFAULTS.sync_interval)})")
    a.add_argument("--chunk-size", type=_size,
                   help=f"GCS upload chunk, a multiple of 256K (default {flag_size(_DEFAULTS.chunk_size)})")
    a.add_argument("--read-threads", type=int,
                   help="threads that list directories and read files ahead (default: decided per run, "
                        f"{AUTO_READ_THREADS} where opening a file takes over {LOCAL_OPEN_SECONDS * 1e6:.0f} us, "
                        "as on a share, else 0; 0: none)")
    a.add_argument("--read-ahead", type=_size,
                   help="how far files are read ahead of the stream "
                        f"(default {flag_size(_DEFAULTS.read_ahead)}; 0: off)")
    a.add_argument("--streams", type=int,
                   help="GCS upload streams, each sending segments composed at the end "
                        f"(default: decided per run, {AUTO_STREAMS} from {flag_size(AUTO_STREAMS_FROM)} up, else 1)")
    a.add_argument("--volume-size", type=_size,
                   help="store a larger archive as volumes of at most this "
                        f"(default {flag_size(_DEFAULTS.volume_size)}: just under GCS's 5T object limit)")
    a.add_argument("--access-interval", type=_size,
                   help="raw bytes between access points, where a reader can start "
                        f"(default {flag_size(_DEFAULTS.access_interval)}; 0: none)")
    a.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="leave out what matches this glob below the run folder, e.g. Thumbnail_Images or "
                        "'Logs/*' (repeatable; added to the config's exclude)")
    a.add_argument("--storage-class", type=str.upper, choices=STORAGE_CLASSES,
                   help="GCS: create the archive in this storage class (default: the bucket's)")
    a.add_argument("--kms-key", metavar="projects/…/cryptoKeys/K",
                   help="GCS: encrypt every object this run creates with this Cloud KMS key (CMEK)")
    a.add_argument("--config", type=Path, help="JSON config file (sruns-monitor keys accepted)")
    a.add_argument("--journal", type=Path, help="SQLite journal (default: config sqlite_db, else ./sruns.db)")
    a.add_argument("--force", action="store_true", help="archive again from zero even if done or resumable")
    a.add_argument("--not-finished", action="store_true",
                   help="archive even if the run's completion markers (the daemon's rules) do not say it is "
                        "finished, or it is no run folder")
    a.add_argument("--dry-run", action="store_true",
                   help="walk the folder and say what would be archived, excluded and decided; write nothing")
    a.add_argument("--json", action="store_true", help="print the result as JSON")

    m = sub.add_parser("monitor", help="the daemon: archive every finished run in the watch directories")
    m.add_argument("--config", type=Path,
                   help=f"JSON config file (sruns-monitor's works as it is; default: ${CONFIG_ENV}, else "
                        f"{SYSTEM_CONFIG})")
    m.add_argument("--once", action="store_true", help="one cycle, wait for its archives, then exit")
    m.add_argument("-v", "--verbose", action="store_true",
                   help="also log, for each run seen, why it is not being archived yet")
    m.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="json: one object per line (severity, message, time) for Cloud Logging or journald")

    v = sub.add_parser("verify", help="check an archive against its manifest (and the run folder)")
    v.add_argument("source", help="run name (journal, then Firestore), gs://BUCKET/BLOB or a local path")
    v.add_argument("--against", type=Path, help="also compare with the files in this run folder")
    v.add_argument("--threads", type=int, default=None,
                   help="threads that inflate, through the archive's access index "
                        f"(default: the machine's cores, at most {READ_BACK_THREADS})")
    v.add_argument("--json", action="store_true")
    v.add_argument("--config", type=Path)
    v.add_argument("--journal", type=Path)

    r = sub.add_parser("restore", help="download, check and safely extract an archive")
    r.add_argument("source", help="run name (journal, then Firestore), gs://BUCKET/BLOB or a local path")
    r.add_argument("dest", type=Path, help="directory to extract into")
    r.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help="restore only members matching this pattern (repeatable), e.g. RUN/InterOp")
    r.add_argument("--force", action="store_true", help="overwrite existing files")
    r.add_argument("--threads", type=int, default=None,
                   help="threads that inflate, through the archive's access index "
                        f"(default: the machine's cores, at most {READ_BACK_THREADS})")
    r.add_argument("--no-outside-links", action="store_true",
                   help="refuse symlinks that are absolute or resolve outside DEST (for archives from elsewhere)")
    r.add_argument("--json", action="store_true")
    r.add_argument("--config", type=Path)
    r.add_argument("--journal", type=Path)

    ls = sub.add_parser("ls", help="list an archive's members from its manifest (the archive is not read)")
    ls.add_argument("source", help="run name (journal, then Firestore), gs://BUCKET/BLOB or a local path")
    ls.add_argument("--include", action="append", default=[], metavar="PATTERN",
                    help="only members matching this (repeatable; fnmatch; a folder lists what is below it), "
                         "e.g. RUN/InterOp")
    ls.add_argument("-l", "--long", action="store_true", help="type and mode, size, mtime (UTC), path")
    ls.add_argument("--json", action="store_true", help="every manifest column, offsets and crc32c included")
    ls.add_argument("--config", type=Path)
    ls.add_argument("--journal", type=Path)

    c = sub.add_parser("cat", help="write one member to stdout, checked against its crc32c, by ranged reads")
    c.add_argument("source", help="run name (journal, then Firestore), gs://BUCKET/BLOB or a local path")
    c.add_argument("member", help="the member's path, e.g. RUN/RunInfo.xml (the RUN/ in front may be left out)")
    c.add_argument("-v", "--verbose", action="store_true", help="say on stderr how much of the archive was read")
    c.add_argument("--config", type=Path)
    c.add_argument("--journal", type=Path)

    x = sub.add_parser("index", help="write the indexes ratarmount, indexed_gzip and rapidgzip read beside an "
                                     "archive made before they were written (from its manifest and access index)")
    x.add_argument("source", help="run name (journal, then Firestore), gs://BUCKET/BLOB or a local path")
    x.add_argument("--config", type=Path)
    x.add_argument("--journal", type=Path)

    mt = sub.add_parser("mount", help="the run folder of an archive, read-only, at MOUNTPOINT (FUSE), read by ranged "
                                      "reads without restoring it; in the foreground until unmounted or Ctrl-C")
    mt.add_argument("source", help="run name (journal, then Firestore), gs://BUCKET/BLOB or a local path")
    mt.add_argument("mountpoint", type=Path, help="an empty directory")
    mt.add_argument("--cache-size", type=_size, default=None, metavar="SIZE",
                    help=f"memory for inflated pieces of the archive (default {flag_size(MOUNT_CACHE_SIZE)})")
    mt.add_argument("--config", type=Path)
    mt.add_argument("--journal", type=Path)

    t = sub.add_parser("retry", help="make a run the daemon gave up on eligible again (after fixing the cause)")
    t.add_argument("run", help="the run's name")
    t.add_argument("--config", type=Path, help="the daemon's config: its sqlite_db is the journal")
    t.add_argument("--journal", type=Path, help="the journal (default: config sqlite_db, else ./sruns.db)")

    s = sub.add_parser("status", help="runs in the journal, one line each (reads it; never creates one)")
    s.add_argument("run", nargs="?", metavar="RUN",
                   help="a run's name (shown in full, as --long), or a glob such as '2401*' (quote it)")
    s.add_argument("--long", action="store_true", help="a block per run: progress, archive, crc32c, times, error")
    s.add_argument("--failed", action="store_true", help="only runs whose last attempt failed, or given up on")
    s.add_argument("--active", action="store_true", help="only runs being archived now")
    s.add_argument("--config", type=Path, help="the daemon's config: its sqlite_db is the journal")
    s.add_argument("--journal", type=Path, help="the journal (default: config sqlite_db, else ./sruns.db)")
    s.add_argument("--json", action="store_true", help="a JSON list, times in ISO 8601")
    s.add_argument("--watch", action="store_true", help="show it again every --interval seconds until Ctrl-C")
    s.add_argument("--interval", type=float, default=2.0, help="seconds between --watch refreshes (default 2)")
    t.add_argument("--json", action="store_true", help="the run's name, what was cleared and the message, as JSON")
    _finish_commands(sub.choices)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _config_and_exit_codes(sorted(EXIT_MEANINGS))
    return p


# Per command: examples, and the exit codes it can end with (`--help`, the man page).
_HELP: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "archive": (("sruns-stream archive /mnt/novaseq/RUN --dest gs://my-seq-archive/runs",
                 "sruns-stream archive /mnt/miseq/RUN --dest /mnt/archive --dry-run",
                 "sruns-stream archive ./RUN --dest . --not-finished    # no markers: archive it anyway"),
                (0, 1, 2, 3, 75, 130)),
    "monitor": (("sruns-stream monitor      # the config: $SRUNS_STREAM_CONFIG, else /etc/sruns-stream/config.json",
                 "sruns-stream monitor --config config.json --once -v"),
                (0, 1, 2, 130)),
    "verify": (("sruns-stream verify RUN",
                "sruns-stream verify gs://my-seq-archive/runs/RUN/RUN.tar.gz --against /mnt/novaseq/RUN --json"),
               (0, 1, 2, 75, 130, 141)),
    "restore": (("sruns-stream restore RUN /scratch/restored",
                 "sruns-stream restore RUN /scratch/restored --include RUN/InterOp"),
                (0, 1, 2, 75, 130, 141)),
    "ls": (("sruns-stream ls RUN -l",
            "sruns-stream ls gs://my-seq-archive/runs/RUN/RUN.tar.gz --include RUN/InterOp"),
           (0, 1, 2, 75, 130, 141)),
    "cat": (("sruns-stream cat RUN RunInfo.xml > RunInfo.xml",
             "sruns-stream cat RUN InterOp/TileMetricsOut.bin | head -c 100"),
            (0, 1, 2, 75, 130, 141)),
    "retry": (("sruns-stream retry RUN",
               "sruns-stream retry RUN --config /etc/sruns-stream/config.json --json"),
              (0, 1, 2, 75, 141)),
    "status": (("sruns-stream status",
                "sruns-stream status RUN --json",
                "sruns-stream status --failed",
                "sruns-stream status --watch"),
               (0, 1, 2, 130, 141)),
    "index": (("sruns-stream index gs://my-seq-archive/runs/RUN/RUN.tar.gz    # an archive made before indexes",
               "sruns-stream index /mnt/archive/RUN/RUN.tar.gz    # then: ratarmount /mnt/archive/RUN/RUN.tar.gz MNT"),
              (0, 1, 2, 75, 130)),
    "mount": (("sruns-stream mount RUN /mnt/RUN    # Ctrl-C or fusermount3 -u /mnt/RUN unmounts",
               "sruns-stream mount gs://my-seq-archive/runs/RUN/RUN.tar.gz /mnt/RUN --cache-size 2G"),
              (0, 1, 2, 75, 130)),
}


def _config_and_exit_codes(codes: Sequence[int]) -> str:
    lines = [f"config: --config FILE, else ${CONFIG_ENV}, else {SYSTEM_CONFIG} if it exists", "", "exit codes:"]
    lines += [textwrap.fill(EXIT_MEANINGS[code], 88, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7)
              for code in codes]
    return "\n".join(lines)


def _finish_commands(commands: Mapping[str, argparse.ArgumentParser]) -> None:
    """What every command has: -q and --no-progress, and a --help that ends with
    examples and the exit codes it can end with."""
    for name, command in commands.items():
        command.add_argument("-q", "--quiet", action="store_true",
                             help="print only errors and the output asked for (no summary, notes or progress)")
        command.add_argument("--no-progress", action="store_true", help="no progress line, even on a terminal")
        # A command missing from _HELP still works (a test asks for its examples).
        examples, codes = _HELP.get(name, ((), tuple(sorted(EXIT_MEANINGS))))
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        shown = "examples:\n" + "\n".join(f"  {e}" for e in examples) + "\n\n" if examples else ""
        command.epilog = shown + _config_and_exit_codes(codes)


def _progress(args: argparse.Namespace, err: TextIO) -> Progress:
    """-q: nothing but errors; --no-progress, --json or no terminal: notes only; else a
    progress line."""
    if args.quiet:
        return Silent(err)
    if args.no_progress or getattr(args, "json", False) or not err.isatty():
        return NoProgress(err)
    return TerminalProgress(err)


def _load(args: argparse.Namespace) -> Config:
    """The command's config, found as `find_config` says; from here ``args.config`` is the
    file used (absolute) or None, and ``args.config_source`` says how it was found."""
    source = find_config(args.config)
    args.config, args.config_source = source.path, source
    return load_config(source.path) if source.path else Config()


def _retry_hint(args: argparse.Namespace, run: str, config: Config) -> str:
    """`sruns-stream retry RUN` with what finds this journal, so it works pasted anywhere."""
    from .state.status import retry_command

    if args.config and not args.journal:
        return retry_command(run, config=args.config)
    return retry_command(run, config=args.config, journal=Path(args.journal or config.sqlite_db).absolute())


def _journal(args: argparse.Namespace, config: Config) -> Journal:
    from .state.journal import Journal

    return Journal(getattr(args, "journal", None) or config.sqlite_db)


def _archive(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from . import cpu
    from .archiver.run import archive_run, check_places
    from .runfolder.completion import CompletionRules, check_finished
    from .runfolder.exclude import check_patterns
    from .runfolder.scan import resolve_run_folder

    config = _load(args)
    compression = args.compression or ("level" if args.level is not None else None)
    options = with_overrides(
        config.archive,
        threads=args.threads,
        level=args.level,
        compression=compression,
        block_size=args.block_size,
        sync_interval=args.sync_interval,
        chunk_size=args.chunk_size,
        read_threads=args.read_threads,
        read_ahead=args.read_ahead,
        upload_streams=args.streams,
        volume_size=args.volume_size,
        access_interval=args.access_interval,
        storage_class=args.storage_class,
        kms_key_name=args.kms_key,
        exclude=check_patterns([*config.archive.exclude, *args.exclude], "--exclude") if args.exclude else None,
    )
    root = resolve_run_folder(args.rundir)  # a missing RUNDIR is the first thing to say
    # The daemon's rules: an unfinished run (or a watch directory) is not archived by
    # accident, with exit 0, and neither is it planned by --dry-run.
    rules = CompletionRules.from_config(config.sentinal_file_age_minutes, config.quiet_period_sec)
    state = check_finished(root, rules, time.time(), anyway=args.not_finished)
    if state is not None and state.errored and not args.json and not args.quiet:
        print(f"sruns-stream: the instrument reports {state.instrument_status} "
              f"({state.instrument_error or 'no message'}); archiving it anyway", file=err)
    dest = args.dest or config.destination
    if dest is None:
        # Never a silent ./archives: on a VM that is the boot disk, under a multi-TB run.
        raise UsageError(
            f"no destination: give --dest DIR or gs://BUCKET[/PREFIX] (--dest . for the current directory), or a "
            f"config with gcp_bucket_name or local_dest (--config FILE, ${CONFIG_ENV} or {system_config()})"
        )
    if args.dry_run:
        from .archiver.dryrun import plan_archive

        plan = plan_archive(args.rundir, dest, options, args.journal or config.sqlite_db, force=args.force)
        # With -q too: the plan is the output asked for.
        print(json.dumps(plan.as_dict(), sort_keys=True) if args.json else plan.summary(), file=out)
        return EXIT_OK
    progress = _progress(args, err)
    check_places(args.rundir, dest, args.journal or config.sqlite_db)  # before the journal is created
    journal = _journal(args, config)
    # From here a signal stops the archive at its next block, never mid-statement.
    stopping.install()
    try:
        result = archive_run(args.rundir, dest, options, journal, progress, force=args.force)
    finally:
        journal.close()
    if args.json:
        print(json.dumps({**result.as_dict(), "cpu": cpu.usage()}, sort_keys=True), file=out)
    elif not args.quiet:
        print(result.summary(), file=out)
    return EXIT_OK


def _monitor(args: argparse.Namespace) -> int:
    import threading

    from .daemon import daemonlog
    from .daemon.leases import Leases
    from .daemon.monitor import Monitor
    from .daemon.notify import DEFAULT_SUBJECT_PREFIX, Notifiers, make_notifier
    from .state.firestore import open_mirror

    daemonlog.configure(verbose=args.verbose, fmt=args.log_format)
    if args.quiet:  # warnings and errors only
        logging.getLogger("sruns_stream").setLevel(logging.WARNING)
    config = _load(args)
    if args.config is None:
        raise UsageError(f"monitor needs a config: give --config FILE, set ${CONFIG_ENV}, or write {system_config()}")
    Monitor.check(config, args.config)  # before the journal is created
    Monitor.check_destination(config, args.config)
    journal = _journal(args, config)
    # The optional parts: mail (none without a mail block), the Firestore mirror (none
    # without a collection) and run leases (only with Firestore: they live there).
    prefix = config.name or DEFAULT_SUBJECT_PREFIX
    notifier = make_notifier(config.mail, subject_prefix=prefix)
    if config.webhook_url:
        from .daemon.webhook import WebhookNotifier

        notifier = Notifiers(notifier, WebhookNotifier(config.webhook_url, subject_prefix=prefix))
    mirror = open_mirror(config, journal)
    leases = Leases(config.firestore_collection) if config.firestore_collection and config.leases else None
    monitor = Monitor(config, args.config, journal, mirror=mirror, notifier=notifier, leases=leases)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        if args.once:
            return monitor.run_once(stop)
        return monitor.run(stop)
    finally:
        journal.close()


def _read_back(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from . import cpu
    from .readback import RestoreReport, VerifyReport, restore_archive, verify_archive

    config = _load(args)
    progress = _progress(args, err)
    # A journal is only needed to find a run by name; never create one for a path or URL.
    journal = _lookup_journal(args, config)
    report: VerifyReport | RestoreReport
    threads = args.threads if args.threads is not None else min(os.cpu_count() or 1, READ_BACK_THREADS)
    if threads < 1:
        raise UsageError(f"--threads must be 1 or more, not {threads}")
    stopping.install()  # a signal stops between pieces, and the temp files are cleaned up
    try:
        if args.command == "verify":
            report = verify_archive(args.source, against=args.against, journal=journal,
                                    collection=config.firestore_collection, progress=progress, threads=threads)
        else:
            report = restore_archive(args.source, args.dest, include=args.include, force=args.force,
                                     journal=journal, collection=config.firestore_collection, progress=progress,
                                     no_outside_links=args.no_outside_links, threads=threads)
    finally:
        if journal is not None:
            journal.close()
    if args.json:
        print(json.dumps({**report.as_dict(), "cpu": cpu.usage()}, sort_keys=True), file=out)
    elif not args.quiet:  # -q: the exit code says it
        print(report.summary(), file=out)
    return EXIT_OK if report.ok else EXIT_FAILURE


def _lookup_journal(args: argparse.Namespace, config: Config) -> Journal | None:
    """The journal a run name is looked up in, if there is one; never created for a path or URL."""
    from .state.journal import Journal

    db = args.journal or config.sqlite_db
    # Read-only: a lookup writes nothing, and migrates no older journal (only writers do).
    return Journal(db, readonly=True) if "/" not in args.source and Path(db).exists() else None


def _members(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .readback.members import cat_member, list_members, render_listing

    config = _load(args)
    journal = _lookup_journal(args, config)
    stopping.install()
    try:
        if args.command == "ls":
            _, rows = list_members(args.source, patterns=args.include, journal=journal,
                                   collection=config.firestore_collection,
                                   progress=Silent(err) if args.quiet else NoProgress(err))
            out.write(render_listing(rows, long=args.long, as_json=args.json))
            return EXIT_OK
        progress = _progress(args, err)
        binary = getattr(out, "buffer", None)
        if binary is None:
            raise UsageError("cat writes bytes: its output must be a file or pipe")
        report = cat_member(args.source, args.member, binary, journal=journal,
                            collection=config.firestore_collection, progress=progress)
        if args.verbose:
            print(report.summary(), file=err)
        return EXIT_OK
    finally:
        if journal is not None:
            journal.close()


def _index(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .readback.reindex import write_indexes

    config = _load(args)
    journal = _lookup_journal(args, config)
    stopping.install()
    try:
        for where in write_indexes(args.source, journal=journal, collection=config.firestore_collection,
                                   progress=Silent(err) if args.quiet else NoProgress(err)):
            print(where, file=out)
        return EXIT_OK
    finally:
        if journal is not None:
            journal.close()


def _mount(args: argparse.Namespace, err: TextIO) -> int:
    from .readback.mount import mount_archive

    config = _load(args)
    journal = _lookup_journal(args, config)
    progress = Silent(err) if args.quiet else NoProgress(err)
    try:
        line = mount_archive(args.source, args.mountpoint, cache_size=args.cache_size or MOUNT_CACHE_SIZE,
                             journal=journal, collection=config.firestore_collection, progress=progress)
    finally:
        if journal is not None:
            journal.close()
    progress.note(line)
    return EXIT_OK


def _existing_journal(args: argparse.Namespace, config: Config, *, readonly: bool) -> Journal:
    """The journal of `status` (``readonly``: the file is not changed, an older one not
    migrated) or `retry`: one that is not there is a usage error, never created (status
    in an empty directory must not leave a ./sruns.db behind)."""
    path = Path(args.journal or config.sqlite_db)
    if not path.is_file():
        given = "--journal" if args.journal else (f"sqlite_db in {args.config}" if args.config else "the default")
        raise UsageError(
            f"no journal at {path.absolute()} ({given}): give --journal FILE, or --config FILE whose sqlite_db "
            "names it"
        )
    from .state.journal import Journal

    return Journal(path, readonly=readonly)


def _status(args: argparse.Namespace, out: TextIO) -> int:
    from .state import status

    if args.interval <= 0:
        raise UsageError(f"--interval must be more than 0 seconds, not {args.interval:g}")
    config = _load(args)
    journal = _existing_journal(args, config, readonly=True)

    one_run = args.run is not None and not any(c in args.run for c in "*?[")
    terminal = out.isatty() and os.environ.get("TERM") != "dumb"

    def frame() -> str:
        nonlocal journal
        if args.watch:
            # Read-only, perhaps `immutable` (no WAL when it was opened): opened afresh for
            # each frame, it sees what a daemon started since has written.
            journal.close()
            journal = _existing_journal(args, config, readonly=True)
        every = journal.tasks()
        tasks = status.select(every, args.run, failed=args.failed, active=args.active)
        if one_run and not any(t.name == args.run for t in every):
            raise UsageError(f"run {args.run!r} is not in the journal {journal.path}")
        now = time.time()
        done = {t.name: journal.progress(t) for t in tasks}
        prices = (config.archive.price_region, config.archive.prices)
        if args.json:
            return status.render_json(tasks, now, compact=args.watch, done=done, prices=prices)
        # Which config (and so which journal) this is: `status` in the wrong place must not
        # pass for the daemon's view.
        source = f"config: {args.config_source.describe()}; journal: {Path(journal.path).absolute()}"
        size = shutil.get_terminal_size((120, 40))
        if terminal and len(source) > size.columns:  # one line on a terminal, as the table's notes
            source = source[: size.columns - 1] + "…"
        source += "\n"
        if every and not tasks:
            return source + "no run matches\n"
        if args.long or one_run:
            return source + status.render_text(tasks, now, done, prices,
                                               retry=lambda run: _retry_hint(args, run, config))
        # A terminal's width (a long note cut); not a terminal, nothing is cut (grep sees it all).
        return source + status.render_table(tasks, now, done, width=size.columns if terminal else 100_000,
                                            height=size.lines - 2 if args.watch and terminal else None,
                                            terminal=terminal)

    try:
        if not args.watch:
            out.write(frame())
            if args.json:
                out.write("\n")
            return EXIT_OK
        try:
            status.watch(frame, out, args.interval)
        except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) is how --watch ends
            return EXIT_OK
        return EXIT_OK
    finally:
        journal.close()


def _retry(args: argparse.Namespace, out: TextIO) -> int:
    from .daemon.monitor import retry_run
    from .humanize import iso_time

    journal = _existing_journal(args, _load(args), readonly=False)
    try:
        before = journal.get(args.run)
        message = retry_run(journal, args.run)
    finally:
        journal.close()
    if args.json:
        assert before is not None  # retry_run refuses a run that is not in the journal
        print(json.dumps({
            "run": args.run, "journal": str(Path(journal.path).absolute()), "message": message,
            "failures_cleared": before.failures, "last_error": before.last_error,
            "gave_up_at": iso_time(before.gave_up_at),
        }, sort_keys=True), file=out)
    elif not args.quiet:
        print(message, file=out)
    return EXIT_OK


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # Until a command installs its own handling (archive: stopping.install), SIGTERM
    # unwinds like Ctrl-C. Once: a second one must not cut the unwinding short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the CLI; returns the exit code (callable from tests)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        parser = _parser()
        args, extras = parser.parse_known_args(argv)
        if extras:
            raise _unknown(parser, args, extras)
    except _ArgumentsError as exc:
        print(exc, file=err)
        return EXIT_USAGE
    except SystemExit as exc:  # argparse has printed --help or --version
        return int(exc.code or 0)
    except KeyboardInterrupt:  # a SIGTERM or Ctrl-C while the arguments are read
        print(_INTERRUPTED_LINE, file=err)
        return EXIT_INTERRUPTED
    if args.command in ("archive", "monitor", "verify", "restore"):
        from . import memory

        memory.one_arena()  # before their threads start
    try:
        if args.command == "archive":
            return _archive(args, out, err)
        if args.command == "monitor":
            return _monitor(args)
        if args.command in ("verify", "restore"):
            return _read_back(args, out, err)
        if args.command in ("ls", "cat"):
            return _members(args, out, err)
        if args.command == "retry":
            return _retry(args, out)
        if args.command == "index":
            return _index(args, out, err)
        if args.command == "mount":
            return _mount(args, err)
        return _status(args, out)
    except Interrupted:
        print(_STOPPED_LINE.get(args.command, _INTERRUPTED_LINE), file=err)
        return EXIT_INTERRUPTED
    except SrunsError as exc:
        print(f"sruns-stream: error: {exc}", file=err)
        return exc.exit_code
    except KeyboardInterrupt:
        print(_INTERRUPTED_LINE, file=err)
        return EXIT_INTERRUPTED


def _die_with_parent() -> None:
    """A daemon's child stops (at a checkpoint, via SIGTERM) when the daemon dies, even by kill -9."""
    parent = os.environ.get("SRUNS_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(parent):  # the daemon died before prctl took effect
        sys.exit(EXIT_INTERRUPTED)


def _stdout_closed() -> int:
    """stdout's reader went away (`cat … | head`): end quietly, as cat and gzip do. Python
    flushes stdout once more at exit; pointed at /dev/null, that flush cannot fail."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def main_cli() -> None:
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        _die_with_parent()
        code = main()
        sys.stdout.flush()  # a closed pipe shows here when the output fit in the buffer
    except BrokenPipeError:
        code = _stdout_closed()
    except KeyboardInterrupt:  # a stop before or after main's own handling: nothing was begun
        print(_INTERRUPTED_LINE, file=sys.stderr)
        code = EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a bug: still one line, and the traceback for a report
        import traceback

        # A library's message can quote an upload session or a token: the report keeps
        # the traceback's shape, with what errors.redact hides hidden here too.
        print(redact("".join(traceback.format_exception(exc))), end="", file=sys.stderr)
        print(f"sruns-stream: internal error: {redact(str(exc))}", file=sys.stderr)
        code = EXIT_FAILURE
    sys.exit(code)


