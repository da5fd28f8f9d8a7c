"""`sruns-stream` command line: parses arguments, wires the parts, maps errors to exit codes.

Exit codes (documented in the README):
  0  success
  1  failure: the run could not be archived (the journal keeps its progress)
  2  usage or configuration error
  130  interrupted (SIGINT/SIGTERM); run the same command again to resume
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from . import __version__, stopping
from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, Interrupted, SrunsError, UsageError, redact

if TYPE_CHECKING:
    from .config import Config
    from .progress import Progress
    from .state.journal import Journal

# Each command imports what it uses when it runs (the archiver, GCS, the journal):
# `--version`, `--help` and a usage error start in a few tens of milliseconds.

__all__ = ["main", "main_cli"]

DEFAULT_DEST = "archives"
_INTERRUPTED_LINE = "sruns-stream: interrupted; run the same command again to resume"
_STOPPED_LINE = {
    "verify": "sruns-stream: interrupted; the archive was not fully verified",
    "restore": "sruns-stream: interrupted; the files restored so far were checked against the manifest;"
               " run again into an empty DEST, or with --force",
}


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1M, 256K, 16777216)") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sruns-stream",
        description="Stream Illumina run folders as tar.gz to GCS or a local directory, resumably.",
    )
    p.add_argument("--version", action="version", version=f"sruns-stream {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("archive", help="archive one run folder (resumes an interrupted attempt)")
    a.add_argument("rundir", type=Path, help="the run folder")
    a.add_argument("--dest",
                   help=f"DIR, file://DIR, gs://BUCKET[/PREFIX] or null (default: config, else ./{DEFAULT_DEST})")
    a.add_argument("--threads", type=int, help="compression threads (default: all cores)")
    a.add_argument("--level", type=int, help="gzip level 1-3 (ISA-L); alone it deflates every member")
    a.add_argument("--compression", choices=["auto", "level", "none"],
                   help="auto: store already-compressed members, deflate the rest (default); "
                        "level: deflate everything; none: plain .tar")
    a.add_argument("--block-size", type=_size, help="raw block size (default 1M)")
    a.add_argument("--sync-interval", type=_size, help="local destination: fsync every this many bytes (default 16M)")
    a.add_argument("--chunk-size", type=_size, help="GCS upload chunk, a multiple of 256K (default 16M)")
    a.add_argument("--read-threads", type=int,
                   help="threads that list directories and read files ahead (default 8; 0: none)")
    a.add_argument("--read-ahead", type=_size, help="how far files are read ahead of the stream (default 64M; 0: off)")
    a.add_argument("--streams", type=int,
                   help="GCS upload streams, each sending segments composed at the end "
                        "(default: 4 from 2 GiB up, else 1)")
    a.add_argument("--volume-size", type=_size,
                   help="store a larger archive as volumes of at most this (default: just under 5T)")
    a.add_argument("--access-interval", type=_size,
                   help="raw bytes between access points, where a reader can start (default 8M; 0: none)")
    a.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="leave out what matches this glob below the run folder, e.g. Thumbnail_Images or "
                        "'Logs/*' (repeatable; added to the config's exclude)")
    a.add_argument("--config", type=Path, help="JSON config file (sruns-monitor keys accepted)")
    a.add_argument("--journal", type=Path, help="SQLite journal (default: config sqlite_db, else ./sruns.db)")
    a.add_argument("--force", action="store_true", help="archive again from zero even if done or resumable")
    a.add_argument("--dry-run", action="store_true",
                   help="walk the folder and say what would be archived, excluded and decided; write nothing")
    a.add_argument("--json", action="store_true", help="print the result as JSON")

    m = sub.add_parser("monitor", help="the daemon: archive every finished run in the watch directories")
    m.add_argument("--config", type=Path, required=True, help="JSON config file (sruns-monitor's works as it is)")
    m.add_argument("--once", action="store_true", help="one cycle, wait for its archives, then exit")
    m.add_argument("-v", "--verbose", action="store_true",
                   help="also log, for each run seen, why it is not being archived yet")
    m.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="json: one object per line (severity, message, time) for Cloud Logging or journald")

    v = sub.add_parser("verify", help="check an archive against its manifest (and the run folder)")
    v.add_argument("source", help="run name (journal, then Firestore), gs://BUCKET/BLOB or a local path")
    v.add_argument("--against", type=Path, help="also compare with the files in this run folder")
    v.add_argument("--threads", type=int, default=None,
                   help="threads that inflate, through the archive's access index (default: the machine's cores)")
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
                   help="threads that inflate, through the archive's access index (default: the machine's cores)")
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

    t = sub.add_parser("retry", help="make a run the daemon gave up on eligible again (after fixing the cause)")
    t.add_argument("run", help="the run's name")
    t.add_argument("--config", type=Path, help="the daemon's config: its sqlite_db is the journal")
    t.add_argument("--journal", type=Path, help="the journal (default: config sqlite_db, else ./sruns.db)")

    s = sub.add_parser("status", help="runs in the journal (reads it; never creates one)")
    s.add_argument("run", nargs="?", help="one run's name")
    s.add_argument("--config", type=Path, help="the daemon's config: its sqlite_db is the journal")
    s.add_argument("--journal", type=Path, help="the journal (default: config sqlite_db, else ./sruns.db)")
    s.add_argument("--json", action="store_true", help="a JSON list, times in ISO 8601")
    s.add_argument("--watch", action="store_true", help="show it again every --interval seconds until Ctrl-C")
    s.add_argument("--interval", type=float, default=2.0, help="seconds between --watch refreshes (default 2)")
    return p


def _load(args: argparse.Namespace) -> Config:
    from .config import Config, load_config

    return load_config(args.config) if args.config else Config()


def _journal(args: argparse.Namespace, config: Config) -> Journal:
    from .state.journal import Journal

    return Journal(getattr(args, "journal", None) or config.sqlite_db)


def _progress(err: TextIO, quiet: bool) -> Progress:
    """A live bar on a terminal, unless the output is for a program."""
    from .progress import NoProgress, TerminalProgress

    return TerminalProgress(err) if err.isatty() and not quiet else NoProgress(err)


def _archive(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from . import cpu
    from .archiver.run import archive_run, check_places
    from .config import with_overrides
    from .runfolder.exclude import check_patterns

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
        exclude=check_patterns([*config.archive.exclude, *args.exclude], "--exclude") if args.exclude else None,
    )
    dest = args.dest or config.destination or DEFAULT_DEST
    if args.dry_run:
        from .archiver.dryrun import plan_archive

        plan = plan_archive(args.rundir, dest, options, args.journal or config.sqlite_db, force=args.force)
        print(json.dumps(plan.as_dict(), sort_keys=True) if args.json else plan.summary(), file=out)
        return EXIT_OK
    progress = _progress(err, args.json)
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
    else:
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
    config = _load(args)
    Monitor.check(config, args.config)  # before the journal is created
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
    progress = _progress(err, args.json)
    # A journal is only needed to find a run by name; never create one for a path or URL.
    journal = _lookup_journal(args, config)
    report: VerifyReport | RestoreReport
    threads = args.threads if args.threads is not None else min(os.cpu_count() or 1, 8)
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
    summary = json.dumps({**report.as_dict(), "cpu": cpu.usage()}, sort_keys=True) if args.json else report.summary()
    print(summary, file=out)
    return EXIT_OK if report.ok else EXIT_FAILURE


def _lookup_journal(args: argparse.Namespace, config: Config) -> Journal | None:
    from .state.journal import Journal

    """The journal a run name is looked up in, if there is one; never created for a path or URL."""
    db = args.journal or config.sqlite_db
    return Journal(db) if "/" not in args.source and Path(db).exists() else None


def _members(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .readback.members import cat_member, list_members, render_listing

    config = _load(args)
    journal = _lookup_journal(args, config)
    stopping.install()
    try:
        if args.command == "ls":
            _, rows = list_members(args.source, patterns=args.include, journal=journal,
                                   collection=config.firestore_collection, progress=_progress(err, True))
            out.write(render_listing(rows, long=args.long, as_json=args.json))
            return EXIT_OK
        progress = _progress(err, False)
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


def _existing_journal(args: argparse.Namespace, config: Config) -> Journal:
    """The journal a command only reads: one that is not there is a usage error, never
    created (status in an empty directory must not leave a ./sruns.db behind)."""
    path = Path(args.journal or config.sqlite_db)
    if not path.is_file():
        given = "--journal" if args.journal else (f"sqlite_db in {args.config}" if args.config else "the default")
        raise UsageError(
            f"no journal at {path.absolute()} ({given}): give --journal FILE, or --config FILE whose sqlite_db "
            "names it"
        )
    return _journal(args, config)


def _status(args: argparse.Namespace, out: TextIO) -> int:
    from .state import status

    if args.interval <= 0:
        raise UsageError(f"--interval must be more than 0 seconds, not {args.interval:g}")
    config = _load(args)
    journal = _existing_journal(args, config)

    def frame() -> str:
        tasks = [t for t in journal.tasks() if args.run is None or t.name == args.run]
        if args.run and not tasks:
            raise UsageError(f"run {args.run!r} is not in the journal {journal.path}")
        now = time.time()
        done = {t.name: journal.progress(t) for t in tasks}
        if args.json:
            return status.render_json(tasks, now, compact=args.watch, done=done)
        return status.render_text(tasks, now, done)

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

    journal = _existing_journal(args, _load(args))
    try:
        print(retry_run(journal, args.run), file=out)
    finally:
        journal.close()
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
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed its usage line
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


def main_cli() -> None:
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        _die_with_parent()
        code = main()
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


