"""One exception tree for sruns-stream, and the exit codes it maps to.

::

    SrunsError                       exit 1 unless stated
    ├── UsageError                   exit 2: bad arguments or configuration
    │   ├── ConfigError              a config key is missing, unknown or out of range
    │   ├── RunFolderMissing         RUNDIR does not exist or is not a directory
    │   ├── RunNotFinished           `archive` of a run its completion markers do not call finished
    │   └── JournalTooNew            the journal's schema is newer than this sruns-stream's
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
    ├── RunLocked                    exit 75: another process is archiving the same run
    └── Interrupted                  exit 130: SIGTERM/SIGINT stopped the work at a safe
                                     point; the same command resumes it

Any error can be marked `temporary` (exit 75, EXIT_TEMPORARY): worth running again later
without anyone acting (the network, a quota, GCS's 5xx once the retries are spent, a run
another process holds). The others of exit 1 will not work until someone acts (a
permission, a missing bucket, a full disk, a damaged archive).

Library errors (OSError, sqlite3.Error, google.api_core exceptions) are converted at
the boundary where they happen, with ``raise X from exc``, so the CLI only ever
has to map this tree to an exit code and a single line.

A library's message can quote the URL it failed on, and a resumable upload's URL holds
its session (``upload_id``), a bearer credential for the object. Every error of this
tree is built through `redact`, so no message built from a library's (a last error in
the journal, the daemon's log, Firestore, a webhook or a mail) can carry one.
"""

from __future__ import annotations

import re
from typing import TypeVar

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_CHANGED",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_MEANINGS",
    "EXIT_OK",
    "EXIT_TEMPORARY",
    "EXIT_USAGE",
    "ConfigError",
    "DestinationError",
    "DestinationNotWritable",
    "DiskFull",
    "FirestoreError",
    "IntegrityError",
    "Interrupted",
    "JournalError",
    "JournalTooNew",
    "RunFolderChanged",
    "RunFolderError",
    "RunFolderGone",
    "RunFolderMissing",
    "RunLocked",
    "RunNotFinished",
    "SrunsError",
    "UnreadableEntry",
    "UploadError",
    "UsageError",
    "redact",
    "temporary",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CHANGED = 3  # the run folder changed under the archive: not a failure, a "not yet"
# Temporary: try the same command again later (sysexits.h's EX_TEMPFAIL, which mail
# systems and service managers already read as "retry"); exit 1 needs someone to act.
EXIT_TEMPORARY = 75
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
# stdout's reader went away (`| head`): 128 + SIGPIPE, what shells report for cat or gzip
# in the same pipe, so `set -o pipefail` treats it as they do.
EXIT_BROKEN_PIPE = 141
# What a script does next, per code: `--help` prints this, the README's table says more
# (a test keeps the two in step).
EXIT_MEANINGS = {
    EXIT_OK: "success (archived or already archived and verified; verify/restore found no problem)",
    EXIT_FAILURE: "failed, and will fail again until someone acts (a permission, a missing bucket, a full disk, "
                  "a damaged archive); verify/restore: a problem found",
    EXIT_USAGE: "usage or configuration error: fix the command or the config",
    EXIT_CHANGED: "the run folder changed while it was archived: run again once it is quiet",
    EXIT_TEMPORARY: "temporary (network, quota, GCS 5xx after its retries, the run busy in another process): "
                    "run the same command again later",
    EXIT_INTERRUPTED: "interrupted (SIGINT/SIGTERM): run the same command again to resume",
    EXIT_BROKEN_PIPE: "stdout closed by its reader (| head): stopped quietly",
}


# Query values that grant access to whoever holds the URL: a resumable upload session,
# OAuth tokens, API keys, signed URLs (GCS's and S3's). Matched after "?", "&" or ";",
# also escaped (%26, \u0026 in a JSON body quoted in a message), with "=" or %3D.
_SECRET_QUERY = re.compile(
    r"((?:[?&;]|%26|%3F|\\u0026)"
    r"(?:upload_id|access_token|id_token|refresh_token|token|key|sig|signature|client_secret|"
    r"x-goog-signature|x-goog-credential|x-amz-signature|x-amz-credential|x-amz-security-token)"
    r"(?:=|%3D))[^&;:,()\s'\"<>#\\]+",
    re.IGNORECASE,
)
# The same secrets outside a URL: an Authorization header's value, GCS's upload id header.
# "Bearer" as the header writes it: "a bearer credential" in a sentence is no token.
_SECRET_HEADER = re.compile(
    r"((?:(?-i:\bBearer)|\bx-guploader-uploadid[\"']?\s*[:=])\s*[\"']?)[^\s,;'\"]+", re.IGNORECASE
)
_REDACTED = "<redacted>"


def redact(text: str) -> str:
    """``text`` with the secret parts of any URL or header it quotes replaced by
    ``<redacted>``: upload ids, tokens, keys, signatures. The rest (host, path, status,
    the server's message) stays, so the line still says what failed."""
    text = _SECRET_QUERY.sub(lambda m: m.group(1) + _REDACTED, text)
    return _SECRET_HEADER.sub(lambda m: m.group(1) + _REDACTED, text)


E = TypeVar("E", bound="SrunsError")


def temporary(exc: E) -> E:
    """``exc``, marked as worth running again later as it is (exit EXIT_TEMPORARY): a
    network failure, a quota or a 5xx that outlasted its retries."""
    exc.exit_code = EXIT_TEMPORARY
    return exc


class SrunsError(Exception):
    """Base of every error sruns-stream raises on purpose. Its message is redacted
    (`redact`) as it is built, whatever the message was made from."""

    exit_code = EXIT_FAILURE

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class UsageError(SrunsError):
    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    pass


class RunFolderMissing(UsageError):
    pass


class RunNotFinished(UsageError):
    """`archive` by hand of a folder the daemon's completion rules would not archive yet."""


class JournalTooNew(UsageError):
    """Refused before anything is written: a newer sruns-stream made this journal."""


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
    exit_code = EXIT_TEMPORARY


class Interrupted(SrunsError):
    exit_code = EXIT_INTERRUPTED
