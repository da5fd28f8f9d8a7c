"""An archive stored as several volumes, and the listing written beside them.

A GCS object holds at most 5 TiB, so an archive larger than ``volume_size`` is stored as
``<run>.tar.gz.000``, ``.001``, … (`layout.volume_names`): their concatenation in name
order is, byte for byte, the one archive, so ``cat <run>.tar.gz.* | tar xz`` restores the
run. Beside them, ``<run>.volumes.tsv`` lists each volume's name, size and crc32c (8
hex digits), under a header naming the columns::

    volume          size    crc32c
    R.tar.gz.000    1048576 1c2d3e4f
    R.tar.gz.001    524288  5a6b7c8d

so that a reader can name a missing, truncated or altered volume rather than report a
damaged stream. The archive's own crc32c, which the journal and Firestore keep, is the
combination of the volumes' (`combined`).

The listing's name is outside every glob of the volumes (``<run>.tar.gz.*``,
``<run>.tar.gz.0*``): archives made before that was so named it
``<run>.tar.gz.volumes.tsv``, which ``gcloud storage cat '…/<run>.tar.gz.*' | tar xz``
fed to tar with the volumes. Readers take either (`listing_names`); an archive stored
afresh removes the old one with the other stale forms.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import IntegrityError
from .crc import crc32c_combine
from .layout import READ_EXTENSIONS, volume_number

__all__ = [
    "LISTING_SUFFIX", "Volume", "combined", "is_stored_form", "listing_name", "listing_names", "parse", "render",
    "stored_forms_prefix",
]

LISTING_SUFFIX = ".volumes.tsv"
_HEADER = "volume\tsize\tcrc32c"


@dataclass(frozen=True, slots=True)
class Volume:
    name: str  # the file or object name, without its folder
    size: int
    crc32c: int


def listing_name(archive: str) -> str:
    """The listing's path or blob name beside an archive's: ``<run>.volumes.tsv`` beside
    ``<run>.tar.gz`` (or ``.tar``, ``.tgz``)."""
    for extension in READ_EXTENSIONS:
        if archive.endswith(extension):
            return archive[: -len(extension)] + LISTING_SUFFIX
    return archive + LISTING_SUFFIX


def listing_names(archive: str) -> tuple[str, ...]:
    """The names a reader looks for, in order: the listing's, then the one archives made
    before it had (``<run>.tar.gz.volumes.tsv``)."""
    return tuple(dict.fromkeys((listing_name(archive), archive + LISTING_SUFFIX)))


def stored_forms_prefix(archive: str) -> str:
    """A name prefix shared by every stored form of ``archive`` (``…/<run>.``): what to
    list to find them all."""
    return os.path.commonprefix([archive, *listing_names(archive)])


def is_stored_form(archive: str, name: str) -> bool:
    """Whether ``name`` is the archive stored as one file, one of its volumes or their
    listing (either name): what an archive stored afresh (cut another way) replaces."""
    return name == archive or name in listing_names(archive) or volume_number(archive, name) is not None


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
