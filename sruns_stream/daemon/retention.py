"""Retention: moving archived run folders to ``completed_runs_dir``, and sweeping them
from there ``sweep_age_sec`` after the move.

Nothing is moved or deleted unless every entry of the folder at that moment is in the
verified archive: right before the move, and again right before the sweep, the folder
is walked and compared with the archive's manifest, and before the sweep the archive
itself must still be there with its size and crc32c. The sweep looks at the archive
first and walks last, then deletes only what that walk listed (`safefs.remove_listed`):
a file written while GCS answers is seen by the walk, one written after the walk
survives (`Retention._swept_in_part`). A folder that changed after its
archive (analysis software writes FASTQs and ``Alignment_*`` folders into run folders
after the instrument is done), or whose archive is gone or altered, is handed back to
be archived again from where it is now (`Retention` marks its journal row; the daemon's
scan finds it). Until the new archive replaces the old one the old one stays where it
was, and the run's status says it is not archived.

A run archived with ``exclude`` patterns is moved like any other (the folder is compared
with its archive leaving the excluded entries aside), but never swept unless the config
says ``sweep_excluded: true``: its excluded files are in no archive, and a sweep would
delete their only copy.

Moves are renames only: across filesystems a move would be a copy of up to terabytes
that stalls the daemon and, interrupted, leaves a half copy.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..config import Config
from ..errors import SrunsError
from ..runfolder.exclude import matcher
from ..runfolder.safefs import DIR, Listed, make_dirs, remove_listed
from ..runfolder.scan import Entry, Manifest, compare, reading_threads, scan_run_folder
from ..state.journal import Journal, Task
from ..storage.layout import parse_location
from ..storage.stores import probe_archive
from .daemonlog import event

__all__ = ["Retention"]

log = logging.getLogger("sruns_stream.daemon.monitor")


class Retention:
    def __init__(
        self, config: Config, journal: Journal, *, clock: Callable[[], float], busy: Callable[[str], bool]
    ) -> None:
        self.config = config
        self.journal = journal
        self.clock = clock
        self._busy = busy  # a run an archive process is working on: not to be touched
        self._move_refused: set[str] = set()  # logged once per run, not every cycle
        self._sweep_refused: set[str] = set()
        # Local archives are read whole before their run folder is swept: off the loop.
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="archive-check")
        self._checks: dict[str, Future[tuple[int, int | None] | None]] = {}
        self._cancel_checks = threading.Event()

    def finish_checks(self, stop: threading.Event) -> None:
        """Wait for the archive checks in flight, then sweep what they cleared."""
        while self._checks and not stop.is_set():
            stop.wait(0.2)
            if all(check.done() for check in self._checks.values()):
                self.sweep()
                return

    def close(self) -> None:
        self._cancel_checks.set()
        self._checker.shutdown(wait=True, cancel_futures=True)

    def move_completed(self) -> None:
        target = self.config.completed_runs_dir
        if target is None:
            return
        for task in self.journal.tasks():
            # Only a verified archive lets a run folder move: status complete is set
            # after the destination's crc32c matched.
            if task.status != "complete" or task.moved_at or not task.rundir_found or self._busy(task.name):
                continue
            src = Path(task.rundir_found)
            if not src.is_dir():
                continue
            dst = target / task.name
            if self._still_archived(task, src, "moved", self._move_refused) is None:
                continue
            if src == dst:  # archived again where an earlier move had put it
                self.journal.update(task.name, moved_to=str(dst), moved_at=self.clock())
                continue
            if dst.exists():
                self._refuse(self._move_refused, task.name, f"cannot move to {dst}: it exists already")
                continue
            make_dirs(target)
            try:
                # Rename only: across filesystems a move is a copy of up to terabytes that
                # would stall this loop for hours and, if interrupted, leave a half copy
                # that later cycles cannot tell from a finished one.
                os.rename(src, dst)
            except OSError as exc:
                fix = (f"; put completed_runs_dir on the same filesystem as {src.parent}"
                       if exc.errno == errno.EXDEV else "")
                self._refuse(self._move_refused, task.name,
                             f"not moved to {dst}: {exc.strerror}{fix} (the run folder stays where it is)")
                continue
            self.journal.update(task.name, moved_to=str(dst), moved_at=self.clock())
            log.info("%s: moved to %s", task.name, dst, extra=event("moved", task.name, moved_to=str(dst)))

    def sweep(self) -> None:
        age = self.config.sweep_age_sec
        if not age:
            return
        for task in self.journal.tasks():
            # By the time of the move, never the folder's own mtime; never unverified runs.
            if task.status != "complete" or not task.moved_at or task.swept_at or not task.moved_to:
                continue
            if self.clock() - task.moved_at < age:
                continue
            folder = Path(task.moved_to)
            if not os.path.lexists(folder):
                self.journal.update(task.name, swept_at=self.clock())  # removed by hand already
                continue
            if task.params.get("exclude") and not self.config.sweep_excluded:
                # Its excluded files are in no archive: deleting the folder deletes their only copy.
                self._refuse(self._sweep_refused, task.name,
                             f"archived without what matches exclude {task.params['exclude']}: {folder} is not "
                             "swept, since those files are in no archive; delete it by hand, or set "
                             "sweep_excluded: true")
                continue
            # The archive first (GCS may take seconds to answer, a local read minutes), then
            # the walk: whatever lands in the folder before the walk is seen by it, and
            # only what the walk listed is deleted, so what lands after it survives.
            if not self._archive_intact(task):
                continue
            listed = self._still_archived(task, folder, "deleted", self._sweep_refused, sweeping=True)
            if listed is None:
                continue
            try:
                left = remove_listed(folder, [Listed(e.rel, e.kind, e.ino, e.size, e.mtime_ns) for e in listed.entries])
            except OSError as exc:
                # What was deleted is in the archive; the next cycle's sweep finishes the rest.
                where = f" ({os.fsdecode(exc.filename)})" if exc.filename else ""
                self._refuse(self._sweep_refused, task.name,
                             f"cannot sweep {folder}: {exc.strerror or exc}{where} (tried again every cycle)")
                continue
            if left:
                self._swept_in_part(task, folder, left)
                continue
            self.journal.update(task.name, swept_at=self.clock())
            log.info("%s: swept %s", task.name, folder, extra=event("swept", task.name, folder=str(folder)))

    def _still_archived(
        self, task: Task, folder: Path, what: str, refused: set[str], sweeping: bool = False
    ) -> Manifest | None:
        """Walk ``folder`` and compare it with the archive's manifest: the walk, when
        nothing differs, else None. A difference means the folder is archived again from
        where it is (once quiet): never moved or deleted.

        ``sweeping``: the walk also lists the excluded entries (a sweep deletes what it
        lists; the comparison leaves them aside all the same), and entries that are only
        missing do not stop it (nor the directories that held them, whose mtime changed
        with that): every file and link still there is as archived, so deleting them loses
        nothing. That is what a sweep killed half-way leaves; archiving that folder again
        would replace the archive with one that lacks what the sweep had deleted."""
        if not task.manifest_id:
            self._refuse(refused, task.name,
                         f"archived by sruns-monitor, which kept no manifest to compare {folder} with: not {what}")
            return None
        try:
            threads = reading_threads(self.config.archive.read_threads, folder) or 1
            # What the archive left out on purpose is not "new" in the folder.
            exclude = task.params.get("exclude", [])
            walk = scan_run_folder(folder, threads, () if sweeping else exclude)
            seen = _without(walk, exclude) if sweeping and exclude else walk
            archived = self.journal.entries(task.name)
            diff = compare(archived, seen)
        except SrunsError as exc:
            self._refuse(refused, task.name, f"cannot compare {folder} with its archive ({exc}): not {what}")
            return None
        if sweeping and diff and not diff.new and not _files_differ(archived, seen):
            log.warning("%s: %d archived entries are gone from %s already (a sweep interrupted, or deleted by "
                        "hand); everything left is as archived: sweeping it", task.name, len(diff.missing), folder)
            return walk
        if diff:
            self._archive_again(task, folder, f"the run folder changed after it was archived: {diff.summary()}",
                                changed=True)
            return None
        return walk

    def _swept_in_part(self, task: Task, folder: Path, left: list[bytes]) -> None:
        """Entries appeared (or changed) in the folder between the walk and the deletion:
        they are in no archive and were kept, with the directories holding them. The run
        is not archived again from what is left: an archive of the leftovers would replace
        its archive, which holds everything that was deleted. The journal stops naming the
        folder as the run's (moved_to), so no later cycle walks, compares or sweeps it;
        the run stays complete (its archive is intact) and not swept."""
        names = [os.fsdecode(rel) for rel in left]
        shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
        why = (f"{len(left)} entries appeared or changed while {folder} was swept; they are in no archive and "
               f"were kept ({shown}); the rest, all in the archive, was deleted; the daemon leaves the folder "
               "alone from now on: move what is left away or delete it by hand")
        log.error("%s: %s", task.name, why)
        self.journal.update(task.name, moved_to=None, last_error=why)

    def _archive_intact(self, task: Task) -> bool:
        """The archive is still where the journal says, with its size and crc32c. GCS says
        both at once; a local archive is read whole for its crc32c, on a thread (the loop
        goes on meanwhile; the sweep happens on a later cycle): the last look at the
        archive before the only other copy is walked once more and deleted."""
        assert task.destination is not None
        location = task.location or ""
        try:
            if parse_location(task.destination).kind == "gcs":
                found = probe_archive(task.destination, location, volumes=task.volume_locations)
            else:
                check = self._checks.get(task.name)
                if check is None:
                    self._checks[task.name] = self._checker.submit(
                        probe_archive, task.destination, location, volumes=task.volume_locations, read=True,
                        cancel=self._cancel_checks,
                    )
                    return False
                if not check.done():
                    return False
                del self._checks[task.name]
                found = check.result()
                # Read a while ago: it must still be there, the same size, right now.
                now = probe_archive(task.destination, location, volumes=task.volume_locations)
                if found is not None and now != (found[0], None):
                    return False  # changed meanwhile: looked at again next cycle
        except SrunsError as exc:
            self._refuse(self._sweep_refused, task.name, f"cannot check its archive ({exc}): not swept")
            return False
        expected = (task.archive_bytes, int(task.crc32c, 16) if task.crc32c else None)
        if found == expected:
            return True
        if found is None:
            problem = "is gone"
        else:
            problem = f"holds {found[0]} bytes" + (f" with crc32c {found[1]:08x}" if found[1] is not None else "")
        self._archive_again(task, Path(task.moved_to or ""), f"its archive {location} {problem}: not swept",
                            changed=False)
        return False

    def _archive_again(self, task: Task, folder: Path, why: str, changed: bool) -> None:
        log.error("%s: %s; archiving it again from %s", task.name, why, folder)
        self.journal.update(
            task.name, status="not_running", manifest_id=None, last_error=why, rundir_found=str(folder),
            moved_to=None, moved_at=None, failures=0, next_attempt_at=None,
            changed_at=self.clock() if changed else None,
        )

    def _refuse(self, seen: set[str], name: str, message: str) -> None:
        if name not in seen:
            seen.add(name)
            log.error("%s: %s", name, message)


def _without(walk: Manifest, exclude: list[str]) -> Manifest:
    """``walk`` as a walk with ``exclude`` would have listed it: without the excluded
    entries and what is below an excluded directory."""
    excluded = matcher(exclude)

    def kept(rel: bytes) -> bool:
        parts = rel.split(b"/") if rel else []
        return not any(excluded(b"/".join(parts[: i + 1])) for i in range(len(parts)))

    return Manifest(root=walk.root, entries=[e for e in walk.entries if kept(e.rel)], skipped=walk.skipped)


def _files_differ(archived: list[Entry], walk: Manifest) -> bool:
    """Whether a file or link in ``walk`` is new or not as archived (directories aside:
    their mtimes change when entries in them are deleted)."""
    diff = compare([e for e in archived if e.kind != DIR],
                   Manifest(root=walk.root, entries=[e for e in walk.entries if e.kind != DIR]))
    return bool(diff.new or diff.changed)
