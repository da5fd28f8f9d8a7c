"""``<archive>.index.sqlite``: ratarmount's own index of an archive, so that an unmodified
``ratarmount <run>.tar.gz MNT`` mounts it without first reading all of it.

ratarmount looks for ``<archive>.index.sqlite`` beside the archive it is given and, when
the index is complete and its metadata fit, lists and reads from it: the ``files`` table
(ratarmountcore ``SQLiteIndex``'s schema, written here as its ``create-index-tables.sql``
has it), the gzip seek points in a ``gzipindexes`` table (one blob: our GZIDX file,
`gzidx`, which indexed_gzip and rapidgzip both import), ``metadata`` and ``versions``.
Everything comes from what the stream already knows: the manifest's rows and offsets
(`manifest_tsv`) and the access points (`access_index`).

What ratarmount checks when it opens an index, and what we write for it:

- no ``filestmp`` or ``parentfolders`` table (those mark an index being built), so parent
  folders the manifest lacks are added to ``files`` here, as its finalize step does;
- ``metadata.backendName`` ``SQLiteIndexedTar`` (without it, it re-reads the first files'
  headers to compare);
- ``metadata.tarstats``: only ``st_size``, the archive's size, so a shorter file beside
  the index is refused; no ``st_mtime`` (the archive's time on disk is not the stream's:
  a copied or downloaded archive must still match);
- ``metadata.arguments``: what a plain ``ratarmount ARCHIVE MNT`` records (a difference is
  only a warning, and the seek points are where they are whatever ``gzipSeekPointSpacing``
  says: it is the spacing ratarmount would use to make new ones).

Owners: the manifest has no uid/gid columns; the archiver passes each member's, the
``index`` command for older archives one owner for all (`render`'s ``owners``).
"""

from __future__ import annotations

import json
import os
import posixpath
import sqlite3
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import IntegrityError
from .manifest_tsv import ManifestRow

__all__ = ["INDEX_VERSION", "FileRow", "check", "file_rows", "read_tables", "render"]

INDEX_VERSION = "0.7.0"  # ratarmountcore SQLiteIndex.__version__ whose schema this is
_BLOCK = 512

# ratarmountcore's create-index-tables.sql, without the two tables that mark an index
# still being built (filestmp, parentfolders).
_SCHEMA = """
CREATE TABLE "files" (
    "path" VARCHAR(65535) NOT NULL, "name" VARCHAR(65535) NOT NULL,
    "offsetheader" INTEGER, "offset" INTEGER, "size" INTEGER, "mtime" REAL, "mode" INTEGER,
    "type" INTEGER, "linkname" VARCHAR(65535), "uid" INTEGER, "gid" INTEGER,
    "istar" BOOL, "issparse" BOOL, "isgenerated" BOOL, "recursiondepth" INTEGER,
    PRIMARY KEY ("path","name","offsetheader")
);
CREATE TABLE "xattrkeys" ("id" INTEGER PRIMARY KEY, "name" VARCHAR(65535) UNIQUE);
CREATE TABLE "xattrsdata" (
    "offsetheader" INTEGER, "keyid" INTEGER, "value" VARCHAR(65535),
    PRIMARY KEY ("offsetheader","keyid"), FOREIGN KEY ("keyid") REFERENCES xattrkeys("id")
);
CREATE VIEW "xattrs" ( "offsetheader", "key", "value" ) AS
    SELECT offsetheader, xattrkeys.name, value FROM "xattrsdata"
    INNER JOIN xattrkeys ON xattrkeys.id = xattrsdata.keyid;
CREATE TABLE "metadata" ("key" VARCHAR(65535) NOT NULL, "value" VARCHAR(65535) NOT NULL, PRIMARY KEY ("key"));
CREATE TABLE "versions" (
    "name" VARCHAR(65535) NOT NULL, "version" VARCHAR(65535) NOT NULL,
    "major" INTEGER, "minor" INTEGER, "patch" INTEGER, PRIMARY KEY ("name")
);
CREATE TABLE "gzipindexes" ( data BLOB );
"""
# ratarmount's defaults for the options it records (ratarmountcore SQLiteIndexedTar).
_ARGUMENTS = {"mountRecursively": True, "encoding": "utf-8", "stripRecursiveTarExtension": False,
              "transformRecursiveMountPoint": None, "transformPattern": None, "ignoreZeros": False, "hashes": [],
              "gzipSeekPointSpacing": 16 << 20}
_TYPES = {"f": (b"0", stat.S_IFREG), "d": (b"5", stat.S_IFDIR), "l": (b"2", stat.S_IFLNK)}


@dataclass(frozen=True, slots=True)
class FileRow:
    """One row of ratarmount's ``files`` table, the columns that come from the manifest."""

    path: str  # the parent folder, "" for the top one
    name: str
    offsetheader: int
    offset: int  # where the data starts
    size: int
    mtime: float
    mode: int  # with the file-type bits
    type: bytes  # the tar typeflag
    linkname: str


def _text(s: str) -> str:
    # A name that is not UTF-8 is kept in the manifest as surrogate escapes, which SQLite
    # cannot store: ratarmount escapes such names the same way when it indexes.
    if s.isascii():
        return s
    try:
        s.encode()
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _split(path: str, is_dir: bool) -> tuple[str, str]:
    # ratarmountcore SQLiteIndex.normpath: a leading "/", no trailing one. A manifest's
    # paths are nearly all normal already; normpath only for those that may not be.
    wrapped = "/" + path + "/"
    if path and "//" not in wrapped and "/./" not in wrapped and "/../" not in wrapped:
        full = "/" + path
    else:
        full = "/" + posixpath.normpath("/" + path + ("/" if is_dir else "")).lstrip("/")
    parent, name = full.rsplit("/", 1)
    return parent, name


def _pad(n: int) -> int:
    return -n % _BLOCK


def file_rows(rows: Sequence[ManifestRow], tar_end: int) -> list[FileRow]:
    """The ``files`` rows for manifest rows with offsets, in archive order. A member's data
    ends where the next member's header starts, less its padding (``tar_end``, where the
    end-of-archive marker starts, follows the last); what is before its data is its
    header, and its pax header when it has one."""
    out = []
    for i, row in enumerate(rows):
        if row.offset is None:
            raise IntegrityError(f"{row.path}: the manifest has no offset for it")
        nxt = rows[i + 1].offset if i + 1 < len(rows) else tar_end
        assert nxt is not None
        data = nxt - _pad(row.size) - row.size
        if data < row.offset + _BLOCK:
            raise IntegrityError(f"{row.path}: the manifest's offsets leave no room for its header")
        typeflag, kind = _TYPES[row.kind]
        parent, name = _split(_text(row.path), row.kind == "d")
        out.append(FileRow(parent, name, row.offset, data, row.size, float(row.mtime), row.mode | kind, typeflag,
                           _text(row.link)))
    return out


def _parents(files: list[FileRow]) -> list[FileRow]:
    """Folders the manifest does not list but its members are in (ratarmount adds them
    when it indexes: mode r-x, no header)."""
    have = {(f.path, f.name) for f in files if f.mode & stat.S_IFDIR}
    out = []
    seen: set[str] = set()  # parent folders already walked up from: most members share one
    for f in files:
        if f.path in seen:
            continue
        seen.add(f.path)
        parts = f.path.split("/")
        for i in range(1, len(parts)):
            key = ("/".join(parts[:i]), parts[i])
            if key not in have:
                have.add(key)
                out.append(FileRow(key[0], key[1], f.offsetheader, f.offset, 0, 0.0, 0o555 | stat.S_IFDIR, b"5", ""))
    return out


Table = list[tuple[object, ...]]  # the ``files`` table's rows, sorted as ratarmount writes them


def render(rows: Sequence[ManifestRow], tar_end: int, owners: Sequence[tuple[int, int]] | tuple[int, int],
           archive_size: int, gzidx: bytes, tool_version: str) -> bytes:
    """The SQLite file. ``owners``: each row's (uid, gid), or one pair for all."""
    return render_table(table(rows, tar_end, owners), archive_size, gzidx, tool_version)


def table(rows: Sequence[ManifestRow], tar_end: int, owners: Sequence[tuple[int, int]] | tuple[int, int]) -> Table:
    """The ``files`` rows: what needs only the manifest and the tar stream's layout (the
    archiver makes it while the stream runs)."""
    files = file_rows(rows, tar_end)
    each = [owners] * len(files) if isinstance(owners, tuple) else list(owners)
    table: Table = [
        (f.path, f.name, f.offsetheader, f.offset, f.size, f.mtime, f.mode, f.type, f.linkname, uid, gid,
              False, False, False, 0) for f, (uid, gid) in zip(files, each, strict=True)]
    table += [(f.path, f.name, None, None, 0, 0.0, f.mode, int(f.type), "", 0, 0, False, False, True, 0)
              for f in _parents(files)]
    table.sort(key=lambda r: (r[0], r[1]))
    return table


def render_table(table: Table, archive_size: int, gzidx: bytes, tool_version: str) -> bytes:
    """The SQLite file from its ``files`` rows (`table`) and what only the stored archive
    gives: its size and its GZIDX."""
    fd, tmp = tempfile.mkstemp(suffix=".sqlite")
    os.close(fd)
    try:
        db = sqlite3.connect(tmp)
        try:
            db.executescript(_SCHEMA)
            db.executemany('INSERT OR REPLACE INTO "files" VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)', table)
            db.executemany('INSERT INTO "metadata" VALUES (?,?)', [
                ("tarstats", json.dumps({"st_size": archive_size})),
                ("arguments", json.dumps(_ARGUMENTS)),
                ("backendName", "SQLiteIndexedTar"),
                ("isGnuIncremental", "0"),
            ])
            db.executemany('INSERT INTO "versions" VALUES (?,?,?,?,?)', [
                ("index", INDEX_VERSION, *(int(v) for v in INDEX_VERSION.split("."))),
                ("sruns-stream", tool_version, None, None, None),
            ])
            db.execute('INSERT INTO "gzipindexes" VALUES (?)', (gzidx,))
            db.commit()
            db.execute("VACUUM")
        finally:
            db.close()
        with open(tmp, "rb") as f:
            return f.read()
    finally:
        os.unlink(tmp)


def read_tables(data: bytes, where: str) -> tuple[list[tuple[object, ...]], dict[str, str], list[bytes]]:
    """(files rows with a header, in header order; metadata; gzipindexes blobs) of an
    index file's bytes; IntegrityError naming ``where`` when it is not one."""
    fd, tmp = tempfile.mkstemp(suffix=".sqlite")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        db = sqlite3.connect(f"file:{tmp}?mode=ro", uri=True)
        try:
            files = db.execute('SELECT path,name,offsetheader,offset,size,mtime,mode,type,linkname FROM "files" '
                               "WHERE offsetheader IS NOT NULL ORDER BY offsetheader").fetchall()
            metadata = dict(db.execute('SELECT key,value FROM "metadata"').fetchall())
            blobs = [bytes(r[0]) for r in db.execute('SELECT data FROM "gzipindexes" ORDER BY rowid')]
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise IntegrityError(f"{where} is not a ratarmount index sruns-stream wrote ({exc})") from None
    finally:
        os.unlink(tmp)
    return files, metadata, blobs


def check(data: bytes, where: str, rows: Sequence[ManifestRow], tar_end: int, archive_size: int,
          gzidx: bytes) -> list[str]:
    """What is wrong with an index file against the manifest and the access points
    (rendered as ``gzidx``): empty when it lists every member where the manifest puts it,
    holds those seek points, and is for an archive of this size."""
    try:
        files, metadata, blobs = read_tables(data, where)
    except IntegrityError as exc:
        return [str(exc)]
    problems = []
    try:
        want = [(f.path, f.name, f.offsetheader, f.offset, f.size, f.mtime, f.mode, f.type, f.linkname)
                for f in file_rows(rows, tar_end)]
    except IntegrityError as exc:
        return [f"{where} cannot be checked against the manifest: {exc}"]
    if len(files) != len(want):
        problems.append(f"{where} lists {len(files)} members, the manifest {len(want)}")
    else:
        for got, exp in zip(files, want, strict=True):
            if tuple(got) != exp:
                problems.append(f"{where}: {exp[0]}/{exp[1]} is listed as {got[2:]!r}, the manifest says {exp[2:]!r}")
                break
    try:
        size = json.loads(metadata.get("tarstats", "{}")).get("st_size")
    except (ValueError, AttributeError):
        size = None
    if size != archive_size:
        problems.append(f"{where} is for an archive of {size} bytes, but it holds {archive_size}")
    if blobs != [gzidx]:
        problems.append(f"{where}: its gzip seek points are not the access index's")
    return problems
