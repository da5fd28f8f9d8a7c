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

from . import restore, verify
from .report import RestoreReport, VerifyReport

restore_archive = restore.restore_archive
verify_archive = verify.verify_archive

__all__ = ["RestoreReport", "VerifyReport", "restore_archive", "verify_archive"]
