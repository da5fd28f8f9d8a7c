"""What a checkpoint is: where the stream stood after a block, enough to restart right
after it. The write path makes them (`archiver.blockgzip`, per member `archiver.tarstream`),
the journal keeps them (`state.journal`), a resume starts from one (`archiver.pipeline`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["WINDOW", "Checkpoint", "Cursor"]

WINDOW = 32 * 1024  # deflate's window: the dictionary a block needs from before it


@dataclass(frozen=True, slots=True)
class Cursor:
    """Per-member state at a raw offset: the member there and its crc32c so far."""

    index: int = 0
    crc32c: int = 0


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What the stream knows after a block: enough to restart right after it."""

    raw_offset: int
    gz_offset: int
    crc32: int  # of the raw tar bytes before raw_offset
    crc32c: int  # of the output bytes before gz_offset
    cursor: Cursor = field(default_factory=Cursor)
    # crc32 of the raw bytes just before raw_offset (at most WINDOW): the dictionary a
    # resume re-reads from the run folder must be the one these bytes were deflated with.
    window_crc32: int = 0

    @classmethod
    def start(cls) -> Checkpoint:
        return cls(0, 0, 0, 0, Cursor(), 0)
