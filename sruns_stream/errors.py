"""One exception tree for sruns-stream, and the exit codes it maps to.

::

    SrunsError                       exit 1 unless stated
    ├── UsageError                   exit 2: bad arguments or configuration
    │   ├── ConfigError              a config key is missing, unknown or out of range
    │   └── RunFolderMissing         RUNDIR does not exist or is not a directory
    ├── RunFolderError               a run folder cannot be read as it must be
    │   ├── UnreadableEntry          a file or directory cannot be read (names the path)
    │   └── RunFolderChanged         exit 3: an entry appeared, vanished or changed while the
    │       │                        run was archived; run again once the folder is quiet
    │       └── RunFolderGone        the run folder itself disappeared during the archive
    ├── DestinationError             the destination cannot take the archive
    │   ├── DestinationNotWritable
    │   ├── DiskFull                 ENOSPC/EDQUOT while writing; progress is kept
    │   ├── UploadError              a permanent upload failure (403, 404, 400, …)
    │   └── IntegrityError           the stored object does not match what was sent
    ├── JournalError                 SQLite state cannot be read or written
    ├── FirestoreError               Firestore cannot be read (lookups; updates never raise)
    ├── RunLocked                    another process is archiving the same run
    └── Interrupted                  exit 130: SIGTERM/SIGINT stopped the work at a safe
                                     point; the same command resumes it

Library errors (OSError, sqlite3.Error, google.api_core exceptions) are converted at
the boundary where they happen, with ``raise X from exc``, so the CLI only ever
has to map this tree to an exit code and a single line.
"""

from __future__ import annotations

__all__ = [
    "EXIT_CHANGED",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "ConfigError",
    "DestinationError",
    "DestinationNotWritable",
    "DiskFull",
    "FirestoreError",
    "IntegrityError",
    "Interrupted",
    "JournalError",
    "RunFolderChanged",
    "RunFolderError",
    "RunFolderGone",
    "RunFolderMissing",
    "RunLocked",
    "SrunsError",
    "UnreadableEntry",
    "UploadError",
    "UsageError",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CHANGED = 3  # the run folder changed under the archive: not a failure, a "not yet"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


class SrunsError(Exception):
    """Base of every error sruns-stream raises on purpose."""

    exit_code = EXIT_FAILURE


class UsageError(SrunsError):
    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    pass


class RunFolderMissing(UsageError):
    pass


class RunFolderError(SrunsError):
    pass


class UnreadableEntry(RunFolderError):
    pass


class RunFolderChanged(RunFolderError):
    exit_code = EXIT_CHANGED


class RunFolderGone(RunFolderChanged):
    pass


class DestinationError(SrunsError):
    pass


class DestinationNotWritable(DestinationError):
    pass


class DiskFull(DestinationError):
    pass


class UploadError(DestinationError):
    pass


class IntegrityError(DestinationError):
    pass


class JournalError(SrunsError):
    pass


class FirestoreError(SrunsError):
    pass


class RunLocked(SrunsError):
    pass


class Interrupted(SrunsError):
    exit_code = EXIT_INTERRUPTED
