"""Which run-folder members are already compressed, so `auto` stores them as they are.

Most bytes of a modern run are deflate or JPEG data already (CBCL, .bcl.gz, .bcl.bgzf,
thumbnails); deflating them again costs CPU for 0–3 % gain, or a loss. The decision
must be a pure function of the member's name and its first bytes, because a resumed
archive has to make it again, byte for byte, from the middle of the stream.
"""

from __future__ import annotations

__all__ = ["MAGIC_BYTES", "MIN_STORED_SIZE", "is_precompressed_magic", "is_precompressed_name"]

# Below this size a member is deflated whatever it holds: a stored run costs a
# deflate segment break on both sides, which is not worth it for a few KiB.
MIN_STORED_SIZE = 4096

_SUFFIXES = (
    b".cbcl",
    b".gz",
    b".bgzf",
    b".bgz",
    b".bam",
    b".cram",
    b".bz2",
    b".xz",
    b".zst",
    b".zip",
    b".ora",
    b".jpg",
    b".jpeg",
    b".png",
)

_MAGIC = (
    b"\x1f\x8b",  # gzip, BGZF, BAM
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG",
    b"\x28\xb5\x2f\xfd",  # zstd
    b"BZh",
    b"\xfd7zXZ\x00",
    b"PK\x03\x04",
    b"CRAM",
)

MAGIC_BYTES = max(len(m) for m in _MAGIC)


def is_precompressed_name(path: bytes) -> bool:
    return path.lower().endswith(_SUFFIXES)


def is_precompressed_magic(head: bytes) -> bool:
    return head.startswith(_MAGIC)
