"""Staying inside one folder: member names that cannot leave it, and directories below it
reached without following a link.

`verify --against` reads the run folder this way and `restore` writes DEST this way. A
member name that is absolute or has a ``..`` component is never joined to the folder
(`safe_name` says why). `open_dirs` reaches a directory one component at a time through
directory fds with O_NOFOLLOW (`safefs.DIR_FLAGS`): a symlink or a non-directory on the
way is reported (`NotADir`), never followed, and the length of the full path (PATH_MAX)
does not matter.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from ..runfolder.safefs import DIR_FLAGS

__all__ = ["NotADir", "open_dirs", "safe_name"]


class NotADir(Exception):
    """Internal: a directory on the way to a member is a symlink (``link``: its target)
    or something else that is not a directory."""

    def __init__(self, shown: str, link: str | None) -> None:
        super().__init__(shown)
        self.shown = shown
        self.link = link


def open_dirs(top_fd: int, parts: list[str], create: Callable[[int, str, str], None] | None = None) -> int:
    """A new fd for ``top_fd``/``parts``, opened one component at a time with O_NOFOLLOW:
    a symlink anywhere on the way raises NotADir instead of being followed, so what the
    fd names is inside ``top_fd``'s tree, whatever the links say and however long the
    full path is. A missing component is FileNotFoundError, or made by ``create(dir_fd,
    name, shown)``."""
    fd = os.dup(top_fd)
    try:
        for i, part in enumerate(parts):
            try:
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create is None:
                    raise
                create(fd, part, "/".join(parts[: i + 1]))
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                link = os.readlink(part, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else None
                raise NotADir("/".join(parts[: i + 1]), link) from None
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def safe_name(name: str) -> tuple[str | None, str | None]:
    """(relative path, None) for a member name that stays inside the folder it is joined
    to (DEST, the run folder), else (None, why not)."""
    if not name:
        return None, "has an empty name"
    if "\0" in name:
        return None, "has a NUL byte in its name"
    if name.startswith("/"):
        return None, "is an absolute path"
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None, "has a '..' component"
    return "/".join(parts), None
