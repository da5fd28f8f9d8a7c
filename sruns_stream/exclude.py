"""Paths left out of an archive on purpose: glob patterns relative to the run folder.

A pattern (config ``exclude``, or ``archive --exclude``, repeatable) is matched with
`fnmatch` rules, case-sensitively, against each entry's path below the run folder:
``Thumbnail_Images`` matches that directory, ``Logs/*`` everything in ``Logs`` (but not
``Logs`` itself), ``*.jpg`` every JPEG at any depth (``*`` matches ``/`` too). A
directory that matches is not walked at all. A trailing ``/`` is dropped; a pattern
that is empty, absolute or climbs out with ``..`` is refused.

Exclusions change the archive's bytes, so they are part of what a resume compares
(`archive.stream_params`), and they are written into the manifest's header, so `verify
--against` does not report the excluded files on disk as missing from the archive.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterable

from .errors import UsageError

__all__ = ["USUAL", "check_patterns", "matcher"]

# What facilities usually leave out (their own upload scripts do): instrument images and
# logs, which no analysis reads again.
USUAL = ("Thumbnail_Images", "Images", "Logs", "FocusModelGeneration", "Autocenter", "InstrumentAnalyticsLogs")


def check_patterns(patterns: Iterable[str], where: str = "exclude") -> tuple[str, ...]:
    """The patterns normalized (trailing ``/`` dropped, duplicates removed, sorted: their
    order means nothing), or UsageError naming the first unusable one."""
    out = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise UsageError(f"{where}: {pattern!r} is not a glob pattern (a string such as 'Logs/*')")
        p = pattern.rstrip("/")
        if not p or p.startswith("/") or ".." in p.split("/"):
            raise UsageError(
                f"{where}: {pattern!r} is not a pattern relative to the run folder "
                "(examples: Thumbnail_Images, Logs/*, *.jpg)"
            )
        out.add(p)
    return tuple(sorted(out))


def matcher(patterns: Iterable[str]) -> Callable[[bytes], bool]:
    """Whether a path below the run folder (bytes, ``/``-separated) is excluded."""
    patterns = tuple(patterns)
    if not patterns:
        return lambda rel: False
    combined = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
    return lambda rel: combined.match(os.fsdecode(rel)) is not None
