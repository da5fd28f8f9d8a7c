"""Writing members under DEST as they stream by, refusing anything that could write
outside it: `Extractor`.

Refused (and reported, never written): absolute names, ``..`` components, device files
and fifos, hard links to anything but a file this restore wrote, and any member below a
symlink (one in the archive, or one found in DEST). Everything is created relative to
directory fds with O_NOFOLLOW (`confine.open_dirs`), so nothing is written through a
link and the length of the full path (PATH_MAX) does not matter.

Symlinks are data: restored as archived, absolute or pointing out of DEST included, but
only after every file and directory is in place; ``no_outside_links``
(--no-outside-links, for archives from elsewhere) then removes and reports those that
are absolute or resolve outside DEST. A member whose type or size differs from its
manifest row is refused before a byte of it is written. Existing files are never
overwritten without ``force``. Each file is written to a temporary name in its own
directory, checked against the manifest, and only then renamed into place: a file that
does not match is removed and reported, so whatever stands under a final name has been
checked. Directory modes and mtimes are set last, deepest first, so that filling them
does not disturb them. Ownership is not restored (restores run as an ordinary user), and
set-uid/set-gid/sticky bits are dropped from files: a restore never creates privileged
files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from functools import partial
from pathlib import Path

from ..errors import DestinationNotWritable, DiskFull
from ..runfolder.safefs import DIR_MODE
from ..storage.manifest_tsv import ManifestRow
from .confine import NotADir, open_dirs, safe_name
from .report import KIND_NAMES, Problems, RestoreReport, show
from .rowcheck import content_vs_row, shape_vs_row
from .tarparse import Member, TarMembers

__all__ = ["Extractor", "Refused"]


class Refused(Exception):
    """Internal: this member is not written; the message says why."""


def _ns(mtime: int) -> tuple[int, int]:
    return (mtime * 1_000_000_000,) * 2


class Extractor:
    """Writes members under DEST, one at a time, as they stream by.

    Everything is created relative to directory fds reached from DEST one component at a
    time with O_NOFOLLOW (`open_dirs`), and files are opened O_EXCL|O_NOFOLLOW: nothing
    is ever written, created or renamed through a symlink, whether the archive made it
    or it was planted in DEST, and the length of the full path does not matter. Symlinks
    are created last, once every file and directory is in place, and no member below a
    symlink member is written at all; so a link, even one pointing out of DEST, is only
    data. Hard links join only files this restore wrote.
    """

    def __init__(
        self, dest: Path, force: bool, manifest: dict[str, ManifestRow] | None, no_outside_links: bool,
        report: RestoreReport, problems: Problems,
    ) -> None:
        self.dest = dest
        self.root = os.path.realpath(dest)
        self.force = force
        self.manifest = manifest
        self.no_outside_links = no_outside_links
        self.report = report
        self.problems = problems
        try:
            # DEST as the user named it (a symlinked DEST is their choice); below it, no link is followed.
            self.root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise DestinationNotWritable(f"cannot open {dest}: {exc.strerror}") from exc
        try:
            self.name_max = os.fpathconf(self.root_fd, "PC_NAME_MAX")
        except OSError:
            self.name_max = 255
        self.dir_meta: dict[str, tuple[int, int]] = {}  # every directory member: (mode, mtime)
        self.finish_dirs: dict[str, None] = {}  # directories whose mode and mtime are set last
        self.symlinks: list[tuple[Member, str]] = []  # created at the end, in archive order
        self.symlink_names: set[str] = set()  # nothing is written below these
        self.restored: set[str] = set()  # files this restore wrote: the only hard-link targets
        self._parent: tuple[str, int] | None = None  # the last parent directory opened
        self._seq = 0

    def close(self) -> None:
        self._drop_parent()
        os.close(self.root_fd)

    def _os_error(self, exc: OSError, path: str) -> Exception:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFull(f"no space left writing {path}: free space under {self.dest} and run again with --force")
        return DestinationNotWritable(f"cannot write {path}: {exc.strerror}; check {self.dest} and its permissions")

    def _path(self, rel: str) -> str:
        return os.path.join(self.dest, rel)

    # -- directories on the way

    def _made(self, fd: int, name: str, shown: str) -> None:
        os.mkdir(name, DIR_MODE, dir_fd=fd)  # not 0777 under a umask of 000: see safefs.DIR_MODE
        if shown in self.dir_meta:  # its member was left out by --include: still its mode
            self.finish_dirs[shown] = None

    def _open_parent(self, parts: list[str]) -> int:
        """A new fd for the directory ``parts`` under DEST, made as needed; Refused when a
        symlink or a non-directory stands on the way."""
        try:
            return open_dirs(self.root_fd, parts, self._made)
        except NotADir as exc:
            if exc.link is not None:
                raise Refused(
                    f"is below {exc.shown}, a symlink to {exc.link!r} in {self.dest}: links are not followed"
                ) from None
            raise Refused(f"is below {exc.shown}, which is not a directory in {self.dest}") from None

    def _parent_fd(self, parts: list[str]) -> int:
        """As `_open_parent`, kept open for the next member: members come sorted, so most
        share their predecessor's directory. (A cached fd stays right: only directories are
        ever opened, and restore never replaces a directory.)"""
        key = "/".join(parts)
        if self._parent is not None and self._parent[0] == key:
            return self._parent[1]
        fd = self._open_parent(parts)
        self._drop_parent()
        self._parent = (key, fd)
        return fd

    def _drop_parent(self) -> None:
        if self._parent is not None:
            os.close(self._parent[1])
            self._parent = None

    # -- members

    def member(self, member: Member, tar: TarMembers, rel: str) -> None:
        """Restore one wanted member whose name is safe (``rel``)."""
        if member.kind in ("c", "b", "p"):
            raise Refused(f"is a {KIND_NAMES[member.kind]}: device files and fifos are never restored")
        if member.kind == "?":
            raise Refused(f"has tar type {member.typeflag!r}, which restore does not handle")
        if not rel:
            if member.kind == "d":
                return  # "./": DEST itself
            raise Refused("names DEST itself")
        parts = rel.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in self.symlink_names:
                raise Refused(
                    f"is below {'/'.join(parts[:i])}, a symlink in the archive: nothing is written through a link"
                )
        long = next((p for p in parts if len(os.fsencode(p)) > self.name_max), None)
        if long is not None:
            raise Refused(self._too_long(long))
        row = self.manifest.get(member.name) if self.manifest is not None else None
        if row is not None and member.kind != "h":
            bad = shape_vs_row(member, row)
            if bad:
                self.report.failed += 1
                self.problems.add(f"{show(member.name)}: {'; '.join(bad)}: not restored")
                return
        if member.kind == "l":
            if not member.linkname or "\0" in member.linkname:
                raise Refused(f"is a symlink to {member.linkname!r}, which no file system can hold")
            self.symlinks.append((member, rel))
            self.symlink_names.add(rel)
            return
        try:
            parent = self._parent_fd(parts[:-1])
            if member.kind == "f":
                self._file(member, tar, parent, parts[-1], rel, row)
            elif member.kind == "d":
                self._dir(parent, parts[-1], rel)
            else:
                self._hardlink(member, parent, parts[-1], rel)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise Refused(self._too_long(max(parts, key=len))) from None
            raise self._os_error(exc, self._path(rel)) from exc

    def _too_long(self, part: str) -> str:
        return (
            f"has a name component of {len(os.fsencode(part))} bytes ({show(part[:40])}…), longer than the "
            f"{self.name_max} bytes (NAME_MAX) the file system under {self.dest} allows"
        )

    def _in_the_way(self, parent: int, name: str, rel: str) -> bool:
        """True (and reported) when something stands at ``name`` that must stay."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not self.force:
            self.report.existing += 1
            self.problems.add(f"{self._path(rel)} already exists: not overwritten (use --force to overwrite)")
            return True
        if stat.S_ISDIR(st.st_mode):
            self.report.existing += 1
            self.problems.add(f"{self._path(rel)} is a directory: not replaced")
            return True
        return False

    def _temp_name(self) -> str:
        # Short and ours: member names can be 255 bytes long already.
        self._seq += 1
        return f".sruns-restore.{os.getpid()}.{self._seq}"

    def _file(self, member: Member, tar: TarMembers, parent: int, name: str, rel: str, row: ManifestRow | None) -> None:
        if self._in_the_way(parent, name, rel):
            return
        tmp = self._temp_name()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=parent)
        placed = False
        try:
            out = _HoleyWriter(fd)
            crc = tar.file_crc32c(out.write)
            out.finish()
            if row is not None:
                bad = content_vs_row(member, crc, row)
                if bad:
                    self.report.failed += 1
                    self.problems.add(f"{show(member.name)}: {'; '.join(bad)}: removed, not restored")
                    return
                self.report.checked += 1
            elif self.manifest is not None:
                self.problems.add(f"{show(member.name)}: not in the manifest: restored unchecked")
            os.fchmod(fd, member.mode & 0o777)
            os.utime(fd, ns=_ns(member.mtime))
            os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
            placed = True
        finally:
            os.close(fd)
            if not placed:  # mismatched, failed or interrupted: no temporary file stays behind
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=parent)
        self.restored.add(rel)
        self.report.files += 1
        self.report.data_bytes += member.size

    def _dir(self, parent: int, name: str, rel: str) -> None:
        try:
            st: os.stat_result | None = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            if not self.force:
                self.report.existing += 1
                self.problems.add(
                    f"{self._path(rel)} already exists and is not a directory: not replaced (use --force)"
                )
                return
            os.unlink(name, dir_fd=parent)  # a file or a link: removing it follows nothing
            st = None
        if st is None:
            # Owner-only while it fills: a read-only mode would stop us writing its contents.
            os.mkdir(name, 0o700, dir_fd=parent)
        self.finish_dirs[rel] = None
        self.report.dirs += 1

    def _place(self, parent: int, name: str, rel: str, make: Callable[[str], None]) -> bool:
        """Make a link as ``name`` in ``parent`` via ``make(name)``, replacing what is there
        (not a directory) with --force: made under a temporary name, then renamed over it."""
        if self._in_the_way(parent, name, rel):
            return False
        try:
            os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            make(name)
        else:
            tmp = self._temp_name()
            make(tmp)
            os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
            with contextlib.suppress(FileNotFoundError):  # rename does nothing between links to one file
                os.unlink(tmp, dir_fd=parent)
        self.report.links += 1
        return True

    def _hardlink(self, member: Member, parent: int, name: str, rel: str) -> None:
        target, why = safe_name(member.linkname)
        if why or not target:
            raise Refused(f"is a hard link to {member.linkname!r}, which {why or 'names DEST itself'}")
        if target not in self.restored:
            self.problems.add(f"{show(member.name)}: hard link to {member.linkname!r}, which was not restored")
            return
        tparts = target.split("/")
        source = self._open_parent(tparts[:-1])
        try:
            st = os.stat(tparts[-1], dir_fd=source, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                self.problems.add(f"{show(member.name)}: hard link to {member.linkname!r}, which is no longer a file")
                return
            self._place(parent, name, rel, lambda path: os.link(
                tparts[-1], path, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False))
        finally:
            os.close(source)

    # -- once everything else is written

    def make_symlinks(self) -> None:
        """The symlinks, now that no file or directory remains to be written."""
        self._drop_parent()
        made = []
        for member, rel in self.symlinks:
            parts = rel.split("/")
            try:
                parent = self._open_parent(parts[:-1])
            except Refused as exc:
                self.report.refused += 1
                self.problems.add(f"refused {show(member.name)}: it {exc}")
                continue
            except OSError as exc:
                raise self._os_error(exc, self._path(rel)) from exc
            try:
                if self._place(parent, parts[-1], rel, partial(_symlink_at, member.linkname, parent)):
                    os.utime(parts[-1], ns=_ns(member.mtime), dir_fd=parent, follow_symlinks=False)
                    made.append((member, rel))
            except OSError as exc:
                raise self._os_error(exc, self._path(rel)) from exc
            finally:
                os.close(parent)
        if self.no_outside_links:
            self._remove_outside_links(made)

    def _remove_outside_links(self, made: list[tuple[Member, str]]) -> None:
        """--no-outside-links: judged once all links exist (a -> b -> outside only leaves
        DEST once b is there), then the offending ones are removed."""
        offending = []
        last = {rel: member for member, rel in made}  # a name made twice (--force) holds the later link
        for rel, member in last.items():
            if os.path.isabs(member.linkname):
                offending.append((member, rel, f"is a symlink to the absolute path {member.linkname!r}"))
            elif self._leads_out(rel):
                offending.append(
                    (member, rel, f"is a symlink to {member.linkname!r}, which resolves outside {self.dest}")
                )
        for member, rel, why in offending:
            parts = rel.split("/")
            try:
                parent = self._open_parent(parts[:-1])
            except Refused:
                continue  # cannot happen: it was just made there
            try:
                os.unlink(parts[-1], dir_fd=parent)  # the link itself: unlink follows nothing
            except OSError as exc:
                raise self._os_error(exc, self._path(rel)) from exc
            finally:
                os.close(parent)
            self.report.links -= 1
            self.report.refused += 1
            self.problems.add(f"refused {show(member.name)}: it {why}: removed (--no-outside-links)")

    def _leads_out(self, rel: str) -> bool:
        """Whether the link at ``rel`` resolves outside DEST, following links as the kernel
        would (including links that were in DEST before), but never looking outside it:
        the moment the path leaves DEST, the answer is yes."""
        pending = list(reversed(rel.split("/")))
        done: list[str] = []
        hops = 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not done:
                    return True
                done.pop()
                continue
            path = os.path.join(self.root, *done, part)
            try:
                st = os.lstat(path)  # ``done`` holds no link: this follows none
            except (FileNotFoundError, NotADirectoryError):
                done.append(part)  # dangling from here: the rest is resolved as written
                continue
            except OSError:
                return True  # cannot be judged (e.g. past PATH_MAX): refused rather than trusted
            if not stat.S_ISLNK(st.st_mode):
                done.append(part)
                continue
            hops += 1
            if hops > 40:  # a loop (ELOOP): it resolves nowhere, so not outside either
                return False
            target = os.readlink(path)
            if target.startswith("/"):
                if target != self.root and not target.startswith(self.root + "/"):
                    return True
                done, target = [], target[len(self.root) :]
            pending.extend(reversed(target.split("/")))
        return False

    def finish(self) -> None:
        """Directory modes and mtimes, deepest first, once their contents are in place."""
        self._drop_parent()
        for rel in sorted(self.finish_dirs, key=lambda r: r.count("/"), reverse=True):
            meta = self.dir_meta.get(rel)
            if meta is None:
                continue
            mode, mtime = meta
            try:
                fd = open_dirs(self.root_fd, rel.split("/"))
            except (OSError, NotADir):
                continue  # replaced by a link, or gone: not ours to change
            try:
                os.fchmod(fd, mode & 0o7777 & ~stat.S_ISUID)
                os.utime(fd, ns=_ns(mtime))
            except OSError as exc:
                raise self._os_error(exc, self._path(rel)) from exc
            finally:
                os.close(fd)


_BLOCK = 4096  # the block size of ext4, XFS and most others: the smallest hole they keep
_ZEROS = bytes(_BLOCK)


class _HoleyWriter:
    """Writes a new file's bytes, leaving each aligned 4 KiB block of zeros as a hole: a
    sparse file (a VM image, a preallocated log) restored takes what it took before on
    disk, not its full size, and so does any file with long runs of zeros. Reading it
    back gives the same bytes. Costs one 4 KiB memcmp per block (``startswith`` at an
    offset: no copy), about 0.1 s per GiB."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = 0  # where the next whole block starts in the file
        self.carry = bytearray()  # the start of a block cut by the end of a piece

    def write(self, piece: bytes) -> None:
        at = 0
        if self.carry:
            at = _BLOCK - len(self.carry)
            self.carry += piece[:at]
            if len(self.carry) < _BLOCK:
                return
            self._blocks(self.carry, 0, _BLOCK)
            self.carry = bytearray()
        whole = at + (len(piece) - at) // _BLOCK * _BLOCK
        if whole > at:
            self._blocks(piece, at, whole)
        if whole < len(piece):
            self.carry = bytearray(piece[whole:])

    def finish(self) -> None:
        """The last partial block, and the size: a file ending in a hole ends in no write."""
        if self.carry.strip(b"\0"):
            self._put(memoryview(self.carry), self.pos)
        os.ftruncate(self.fd, self.pos + len(self.carry))

    def _blocks(self, buf: bytes | bytearray, begin: int, end: int) -> None:
        """Write ``buf[begin:end]`` (whole blocks) at ``pos``, skipping the zero blocks."""
        view = memoryview(buf)
        data = None  # where the run of data blocks being gathered starts in ``buf``
        for at in range(begin, end, _BLOCK):
            if buf.startswith(_ZEROS, at):
                if data is not None:
                    self._put(view[data:at], self.pos + data - begin)
                    data = None
            elif data is None:
                data = at
        if data is not None:
            self._put(view[data:end], self.pos + data - begin)
        self.pos += end - begin

    def _put(self, data: memoryview, offset: int) -> None:
        while data:
            n = os.pwrite(self.fd, data, offset)
            data, offset = data[n:], offset + n


def _symlink_at(link: str, parent: int, name: str) -> None:
    os.symlink(link, name, dir_fd=parent)
