"""An archive stored as several volumes, and the listing written beside them.

A GCS object holds at most 5 TiB, so an archive larger than ``volume_size`` is stored as
``<run>.tar.gz.000``, ``.001``, … (`layout.volume_names`): their concatenation in name
order is, byte for byte, the one archive, so ``cat <run>.tar.gz.* | tar xz`` restores the
run. Beside them, ``<run>.tar.gz.volumes.tsv`` lists each volume's name, size and
crc32c (8 hex digits), under a header naming the columns::

    volume          size    crc32c
    R.tar.gz.000    1048576 1c2d3e4f
    R.tar.gz.001    524288  5a6b7c8d

so that a reader can name a missing, truncated or altered volume rather than report a
damaged stream. The archive's own crc32c, which the journal and Firestore keep, is the
combination of the volumes' (`combined`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import IntegrityError
from .crc import crc32c_combine
from .layout import volume_number

__all__ = ["LISTING_SUFFIX", "Volume", "combined", "is_stored_form", "listing_name", "parse", "render"]

LISTING_SUFFIX = ".volumes.tsv"
_HEADER = "volume\tsize\tcrc32c"


@dataclass(frozen=True, slots=True)
class Volume:
    name: str  # the file or object name, without its folder
    size: int
    crc32c: int


def listing_name(archive: str) -> str:
    """The listing's path or blob name beside an archive's (``<archive>.volumes.tsv``)."""
    return archive + LISTING_SUFFIX


def is_stored_form(archive: str, name: str) -> bool:
    """Whether ``name`` is the archive stored as one file, one of its volumes or their
    listing: what an archive stored afresh (cut another way) replaces."""
    return name == archive or name == listing_name(archive) or volume_number(archive, name) is not None


def render(volumes: Iterable[Volume]) -> bytes:
    return (_HEADER + "\n" + "".join(f"{v.name}\t{v.size}\t{v.crc32c:08x}\n" for v in volumes)).encode()


def parse(data: bytes, where: str) -> list[Volume]:
    """The volumes a listing names, in order; IntegrityError naming ``where`` if it is
    not one."""
    try:
        lines = data.decode().splitlines()
    except UnicodeDecodeError:
        raise IntegrityError(f"{where} is not a volume listing (not text)") from None
    if not lines or lines[0].split("\t")[:3] != _HEADER.split("\t"):
        raise IntegrityError(f"{where} is not a volume listing (its first line is not {_HEADER!r})")
    volumes = []
    for number, line in enumerate(lines[1:], 2):
        fields = line.split("\t")
        try:
            name, size, crc = fields[0], int(fields[1]), int(fields[2], 16)
        except (IndexError, ValueError):
            raise IntegrityError(f"{where} line {number} is not 'name<TAB>size<TAB>crc32c'") from None
        if not name or "/" in name or size < 0:
            raise IntegrityError(f"{where} line {number} names no volume of this folder")
        volumes.append(Volume(name, size, crc))
    if not volumes:
        raise IntegrityError(f"{where} lists no volumes")
    return volumes


def combined(parts: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """(size, crc32c) of the concatenation of parts given as (size, crc32c)."""
    size, crc = 0, 0
    for n, c in parts:
        crc, size = crc32c_combine(crc, c, n), size + n
    return size, crc
