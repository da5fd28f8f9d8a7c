"""Reading an archive back: `verify` checks it, `restore` extracts it, both in one
streaming pass and never writing the archive itself to disk.

The public API is `verify_archive`, `restore_archive` and the reports they return. The
pipeline, one module per layer:

- `sources`: where the archive is (run name via the journal then Firestore, ``gs://``,
  ``file://``, a path) and its bytes, read resumably (ranged GETs, bounded retries);
- `gunzip`: the checked ISA-L inflate (each gzip member's CRC32 and ISIZE);
- `tarparse`: the tar headers, parsed within bounds, one member at a time;
- `damage`: `ArchiveDamaged`, what those two raise when the bytes stop being an archive;
- `stream`: the three wired together, with progress and a stop check per piece;
- `report`: what both commands report, and the problem list;
- `rowcheck`: a member against its manifest row;
- `confine`: member names that stay inside a folder, and directories reached by fd
  without following links;
- `verify`, `restore` (and `extract`, the extractor restore writes with): the commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .report import RestoreReport, VerifyReport
    from .restore import restore_archive
    from .verify import verify_archive

__all__ = ["RestoreReport", "VerifyReport", "restore_archive", "verify_archive"]

_HOMES = {"RestoreReport": "report", "VerifyReport": "report", "restore_archive": "restore",
          "verify_archive": "verify"}


def __getattr__(name: str) -> Any:
    # Imported when first used (PEP 562): `ls` and `cat` load neither verify nor restore.
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
