"""Paths left out of an archive on purpose: glob patterns relative to the run folder.

A pattern (config ``exclude``, or ``archive --exclude``, repeatable) is matched with
`fnmatch` rules, case-sensitively, against each entry's path below the run folder:
``Thumbnail_Images`` matches that directory, ``Logs/*`` everything in ``Logs`` (but not
``Logs`` itself), ``*.jpg`` every JPEG at any depth (``*`` matches ``/`` too). A
directory that matches is not walked at all. A trailing ``/`` is dropped (so ``*/`` is
``*``, everything); a pattern that is empty, absolute or climbs out with ``..`` is refused.

What identifies a run and says it finished (`IDENTITY`: ``RunInfo.xml``, the run
parameters, the completion markers `completion` reads) is never left out: a pattern that
matches one of those names at the top of a run folder (``*``, ``?*``, ``**``, ``*.xml``)
is refused where it is read (`check_patterns`), and so is a pattern that matches
everything below the top (``*/*``, ``**/*``). Nor is all of a run's data: once the run is
scanned, `check_leaves_run` refuses exclusions after which the archive would hold none of
the files in the run's folders (only top-level files such as a sample sheet), or would
lack an identity file that the folder has.

Exclusions change the archive's bytes, so they are part of what a resume compares
(`archive.stream_params`), and they are written into the manifest's header, so `verify
--against` does not report the excluded files on disk as missing from the archive.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError
from .completion import CompletionRules
from .safefs import FILE

if TYPE_CHECKING:  # runfolder imports this module: the type only
    from .scan import Manifest

__all__ = ["IDENTITY", "USUAL", "check_leaves_run", "check_patterns", "matcher"]

# What facilities usually leave out (their own upload scripts do): instrument images and
# logs, which no analysis reads again.
USUAL = ("Thumbnail_Images", "Images", "Logs", "FocusModelGeneration", "Autocenter", "InstrumentAnalyticsLogs")

_MARKERS = CompletionRules()
# The files at the top of a run folder that say which run it is and that it finished
# (`completion` reads them): an archive without them says neither.
IDENTITY = ("RunInfo.xml", "RunParameters.xml", "runParameters.xml", _MARKERS.status_file,
            *_MARKERS.copy_markers, *_MARKERS.rta_markers)
_EXAMPLES = "examples: Thumbnail_Images, Logs/*, *.jpg"
# A path below the top that no narrow pattern names (no known folder, no extension): a
# pattern matching it matches everything in every folder of the run (``*/*``, ``**/*``).
_ANY_NESTED = b"zq0Vx7/zq0Vx7/zq0Vx7"


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
        # The walker's own matcher, on the names as the walker sees them at the top.
        hits = [n for n in IDENTITY if matcher((p,))(os.fsencode(n))]
        if hits:
            raise UsageError(
                f"{where}: {pattern!r} would leave out {_names(hits)}: what identifies the run and marks it "
                f"finished is never left out; name what to leave out more narrowly ({_EXAMPLES})"
            )
        if matcher((p,))(_ANY_NESTED):
            raise UsageError(
                f"{where}: {pattern!r} would leave out everything below the run folder's top (its data: "
                f"Data/, InterOp/, ...); name what to leave out more narrowly ({_EXAMPLES})"
            )
        out.add(p)
    return tuple(sorted(out))


def check_leaves_run(manifest: Manifest, patterns: Iterable[str]) -> None:
    """UsageError if what ``patterns`` left out of ``manifest`` (a scan made with them)
    is one of the run's `IDENTITY` files, or all of its data: the archive would then hold
    nothing but those files while the folder has others."""
    if not manifest.excluded:
        return
    name, shown = manifest.root.name, ", ".join(patterns)
    tops = {e.partition("/")[2] for e in manifest.excluded if e.count("/") == 1}
    lost = [n for n in IDENTITY if n in tops and _regular(manifest.root / n)]
    if lost:
        raise UsageError(
            f"{name}: exclude {shown} would leave out {_names(lost)}: what identifies the run and marks it "
            f"finished is never left out; narrow the patterns ({_EXAMPLES})"
        )
    # The data is in the run's folders (Data/, InterOp/, ...): an archive that keeps none
    # of the files below the top while the folder has some holds only a sample sheet and
    # the like. Only for a run with nothing below its top do top-level files count.
    if any(e.kind == FILE and b"/" in e.rel for e in manifest.entries):
        return
    parent = manifest.root.parent
    example = next((f for f in _files(parent, manifest.excluded) if f.count("/") >= 2), None)
    if example is None:
        identity = {os.fsencode(n) for n in IDENTITY}
        if any(e.kind == FILE and e.rel not in identity for e in manifest.entries):
            return
        example = next(_files(parent, manifest.excluded), None)
    if example is not None:
        raise UsageError(
            f"{name}: exclude {shown} would leave out all of the run's data (such as {example}): the archive "
            f"would hold nothing but files at the top of the run folder; narrow the patterns ({_EXAMPLES})"
        )


def _names(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", …" if len(names) > 3 else "")


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _files(parent: Path, excluded: list[str]) -> Iterator[str]:
    """Regular files at or below the excluded entries (paths from the run folder's
    parent), links not followed: walked only when nothing else is left to archive."""
    for shown in excluded:
        try:
            mode = os.lstat(parent / shown).st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode):
            yield shown
        if not stat.S_ISDIR(mode):
            continue
        for dirpath, dirnames, names in os.walk(parent / shown):
            dirnames.sort()
            for n in sorted(names):
                if _regular(Path(dirpath, n)):
                    yield str(Path(dirpath, n).relative_to(parent))


def matcher(patterns: Iterable[str]) -> Callable[[bytes], bool]:
    """Whether a path below the run folder (bytes, ``/``-separated) is excluded."""
    patterns = tuple(patterns)
    if not patterns:
        return lambda rel: False
    combined = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
    return lambda rel: combined.match(os.fsdecode(rel)) is not None
