"""The small interface every destination implements, and what it is told and returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["ArchiveInfo", "Sink", "Stored"]


@dataclass(frozen=True, slots=True)
class ArchiveInfo:
    """What a destination records with a finished archive (GCS custom metadata)."""

    run: str
    size: int  # archive bytes
    crc32c: int  # of the archive bytes, as we computed them while streaming
    raw_bytes: int
    file_count: int
    tar_crc32: int
    compression: str
    tool_version: str


@dataclass(frozen=True, slots=True)
class Stored:
    """Where a finished archive lives, as the destination itself reports it."""

    location: str  # a path, "bucket/blob", or "null"
    size: int
    crc32c: int  # read back from the destination, not copied from ArchiveInfo
    manifest_location: str | None = None
    # When the archive is stored as several volumes: each one's location (in order, their
    # concatenation is the archive; ``location`` then names the archive they make up).
    volumes: tuple[str, ...] = ()
    # GCS, as it reports them for the archive (each volume checked alike): its class, its
    # Cloud KMS key (None: Google-managed), object retention's end (RFC 3339), holds.
    storage_class: str | None = None
    kms_key_name: str | None = None
    retain_until: str | None = None
    holds: tuple[str, ...] = ()


class Sink(Protocol):
    """A destination for one archive's bytes.

    The archive (`archive.py`) writes bytes in order and, after each write, looks at
    ``durable_offset``: what would survive a crash of this process (and, for local
    files, of the machine). Whatever opaque ``state()`` returns is kept in the
    journal so that a new process can ``open()`` the same destination again.
    """

    description: str  # for messages, never holding a credential
    archive_name: str  # the archive's path or blob name as users see it

    def open(self, state: str | None, durable: int) -> int:
        """Prepare to write; resume from ``state`` if given.

        ``durable`` is the journal's last durable offset for ``state``. Returns the
        offset the next write() continues at, which may be ahead of ``durable``
        (GCS had the chunk in flight) or 0 when nothing usable is there.
        """
        ...

    def state(self) -> str | None: ...

    @property
    def durable_offset(self) -> int: ...

    def write(self, data: bytes) -> None: ...

    def request_durable(self) -> None:
        """Make what was written durable soon, short of the usual interval if need be
        (the archive asks when much raw work went by without a checkpoint)."""
        ...

    def finalize(self, info: ArchiveInfo, manifest_tsv: bytes, index_tsv: bytes | None = None) -> Stored:
        """Make every byte durable, commit the archive, its manifest and its access index
        (`access_index`, when there is one), read back its checksum. The archive must not
        appear under its final name before this."""
        ...

    def abort(self) -> None:
        """Release resources; keep what is needed to resume."""
        ...
