"""Several upload streams at once: the archive made and uploaded in segments, composed
into one object (or into volumes), byte for byte the archive one stream makes.

One GCS upload stream tops out near 200 MiB/s, and a GCS object holds at most 5 TiB. The
stream contract allows more: raw blocks are fixed ranges of the tar stream, each
deflated with the 32 KiB before it as dictionary, so the compressed bytes of blocks
*a…b* depend only on the raw bytes there. The stream is planned as segments of whole
blocks (`plan`); several workers each produce one segment at a time (`pipeline`: its own
tar reader, compressor and resumable upload to a temporary object, checkpointed in the
journal's ``segments`` table as the single stream is in the run's row). The gzip
trailer, which needs the whole stream's CRC32, is a small object of its own. Then
``compose`` (`storage.gcs.parts`) concatenates header-carrying segment 0, the others and
the trailer into ``<run>.tar.gz``, or into volumes ``<run>.tar.gz.000``, ``.001``, … of
at most ``volume_size`` each when it would be larger. Each composed object's size and
crc32c must equal what was streamed (crc32c combined from the parts, `crc`); then the
manifest is uploaded, the metadata set and the temporaries deleted.

A member that crosses a segment boundary is read in pieces by two (or more) workers;
each records the crc32c of its piece (``ends`` of the segment rows), and the member's
crc32c is combined from them in order.

Crash and resume: finished segments are kept (checked by size and crc32c), unfinished
ones resume from their sessions, and a crash between compose and cleanup is finished by
the next run (the journal records that the archive was composed). Temporaries from an
abandoned plan are deleted before a new one starts.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any

from isal import isal_zlib

from .. import __version__
from ..config import ArchiveOptions
from ..errors import IntegrityError
from ..runfolder.safefs import FILE
from ..state.checkpoint import Checkpoint
from ..state.journal import SegmentRow, files_crc32c
from ..storage.crc import crc32c_combine
from ..storage.gcs.parts import COMPONENT_LIMIT, Parts, helper_class, holds_of
from ..storage.gcs.upload import GcsSink
from ..storage.gzipframe import AccessPoint
from ..storage.layout import (
    TSV_CONTENT_TYPE,
    archive_content_type,
    archive_metadata,
    blob_name,
    compose_scratch,
    index_next_to,
    manifest_next_to,
    part_name,
    parts_prefix,
    trailer_name,
    volume_metadata,
    volume_names,
)
from ..storage.retry import RetryPolicy
from ..storage.sink import Stored
from ..storage.volumes import Volume, combined, listing_name, render
from .attempt import (
    Attempt,
    JournalStore,
    Outcome,
    archive_info,
    check_stored,
    render_index,
    render_manifest,
    start_read_indexes,
    write_read_indexes,
)
from .pipeline import Saved, range_start, stream_range

__all__ = ["SegmentPlan", "Segmented", "SegmentedUpload", "plan_segments"]

@dataclass(frozen=True)
class SegmentPlan:
    size: int  # raw bytes per segment, a multiple of the block size
    count: int
    volume_size: int

    def bounds(self, raw_size: int) -> list[tuple[int, int]]:
        return [(k * self.size, min(raw_size, (k + 1) * self.size)) for k in range(self.count)]

    def as_dict(self) -> dict[str, int]:
        return {"size": self.size, "count": self.count, "volume_size": self.volume_size}


def plan_segments(raw_size: int, options: ArchiveOptions, streams: int) -> SegmentPlan:
    """Segments of whole blocks: several per stream (so that one slow segment does not
    hold the others up), each at least 8 upload chunks long, and large enough that a
    volume is composed from at most half of GCS's component limit."""
    block = options.block_size
    size = max(
        math.ceil(raw_size / (max(1, streams) * 4)),
        8 * options.chunk_size,
        math.ceil(min(options.volume_size, raw_size) / (COMPONENT_LIMIT // 2)),
        block,
    )
    # A part must fit in a volume with room to spare (deflate can grow a block slightly).
    size = min(size, options.volume_size // 2)
    size = max(block, size // block * block)
    return SegmentPlan(size, max(1, math.ceil(raw_size / size)), options.volume_size)


class _Cancelled(Exception):
    """Another segment failed: this one stops at its next block (internal)."""


@dataclass
class _Totals:
    resumed_from: int = 0
    discarded: int = 0
    raw_processed: int = 0
    stored_bytes: int = 0


class Segmented:
    """A GCS destination, ``streams`` upload streams (`attempt.Strategy`)."""

    def __init__(self, streams: int) -> None:
        self.streams = streams

    def run(self, attempt: Attempt) -> Outcome:
        plan = plan_segments(attempt.layout.size, attempt.options, self.streams)
        parts = Parts(attempt.where.bucket, retry=RetryPolicy.for_retries(attempt.options.upload_retries),
                      kms_key=attempt.options.kms_key_name)
        try:
            upload = SegmentedUpload(attempt, self.streams, plan, parts)

            def read() -> None:
                attempt.walk_again()
                attempt.journal.update(attempt.name, status="uploading")  # composing, checking, cleaning up

            stored, tar_crc32 = upload.run(read)
        finally:
            parts.close()
        t = upload.totals
        return Outcome(stored, tar_crc32, 0, t.resumed_from, t.raw_processed, t.discarded, t.stored_bytes)


class SegmentedUpload:
    """One archive uploaded as segments on ``streams`` workers; see the module docstring."""

    def __init__(self, attempt: Attempt, streams: int, plan: SegmentPlan, parts: Parts) -> None:
        self.attempt = attempt
        self.name = attempt.name
        self.manifest = attempt.manifest
        self.layout = attempt.layout
        self.codec = attempt.codec
        self.options = attempt.options
        self.journal = attempt.journal
        self.task = attempt.task  # refreshed as the coordinator's state is saved
        self.where = attempt.where
        self.streams = streams
        self.plan = plan
        self.read_index_files = start_read_indexes(attempt)  # beside the segments, on a thread of its own
        self.progress = attempt.progress
        self.parts = parts
        self.archive = blob_name(self.where.path, self.name, self.codec.extension)
        self.prefix = parts_prefix(self.where.path, self.name)
        self.content_type = archive_content_type(self.codec.extension)
        # Parts, trailer, intermediate composes and the composite itself: compose needs
        # sources of the result's class, and a cold temporary is billed its minimum duration.
        self.helper_class = helper_class(self.options)
        self.totals = _Totals()
        self._abort = threading.Event()
        self._lock = threading.Lock()
        self._done_raw: dict[int, int] = {}
        self._done_gz: dict[int, int] = {}
        self._files_done = 0

    # -- the whole ---------------------------------------------------------------------

    def run(self, on_read: Callable[[], None]) -> tuple[Stored, int]:
        """Upload, compose and clean up; returns what is stored and the tar's crc32.
        ``on_read`` is called once every byte of the run folder has been read."""
        state = self._state()
        if state.get("plan") != self.plan.as_dict():
            self._start_over("the segment plan changed" if state else None)
            state = {"mode": "segments", "plan": self.plan.as_dict(), "phase": "upload"}
            self._save(state)
        if state.get("phase") != "composed":
            self._upload_segments()
        on_read()
        rows = self.journal.segments(self.name)
        raw_crc32 = 0
        for row in rows:
            assert row.raw_crc32 is not None
            raw_crc32 = isal_zlib.crc32_combine(raw_crc32, row.raw_crc32, row.raw_end - row.raw_start)
        if state.get("phase") != "composed":
            state = {**state, "phase": "composed", "volumes": self._compose(rows, raw_crc32)}
            self._save(state)
            # Temporaries go as soon as they are composed: each day kept is billed.
            self.parts.delete(self.parts.names(self.prefix))
        stored = self._finish(rows, state["volumes"], raw_crc32)
        self.parts.delete(self.parts.names(self.prefix))
        return stored, raw_crc32

    def _state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.task.sink_state or "{}")
        except ValueError:
            return {}
        return state if isinstance(state, dict) and state.get("mode") == "segments" else {}

    def _save(self, state: dict[str, Any]) -> None:
        """The coordinator's own state lives in the run's row, with a valid checkpoint sum."""
        self.journal.record_checkpoint(self.task, 0, Checkpoint.start(), [], 0, json.dumps(state, sort_keys=True))
        refreshed = self.journal.get(self.name)
        assert refreshed is not None
        self.task = refreshed

    def _start_over(self, why: str | None) -> None:
        if why:
            self.progress.note(f"{self.name}: starting the segments from zero: {why}")
        self.parts.delete(self.parts.names(self.prefix))  # parts an abandoned plan left behind
        bounds = self.plan.bounds(self.layout.size)
        self.journal.plan_segments(self.name, [(a, b, part_name(self.prefix, k)) for k, (a, b) in enumerate(bounds)])

    # -- segments ------------------------------------------------------------------------

    def _upload_segments(self) -> None:
        rows = self.journal.segments(self.name)
        todo = []
        for row in rows:
            if row.done and self._part_intact(row):
                self._count_done(row)
                continue
            todo.append(row)
        if not todo:
            return
        errors: list[BaseException] = []
        with ThreadPoolExecutor(min(self.streams, len(todo)), thread_name_prefix="segment") as pool:
            futures = [pool.submit(self._upload_one, row) for row in todo]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.exception() for f in done):
                self._abort.set()  # the others stop at their next block
            wait(futures)
            errors = [e for f in futures if (e := f.exception()) is not None]
        real = [e for e in errors if not isinstance(e, _Cancelled)]
        if real or errors:
            raise (real or errors)[0]

    def _part_intact(self, row: SegmentRow) -> bool:
        """A segment recorded done: its part must still be there with its size and crc32c."""
        info = self.parts.stat(row.object)
        if info is not None and (info.size, info.crc32c) == (row.size, row.crc32c):
            return True
        self.progress.note(f"{self.name}: segment {row.seq}'s part is gone or changed: uploading it again")
        self.journal.forget_segment_member_crcs(self.name, row.seq)
        self.journal.plan_segment_again(self.name, row.seq)
        return False

    def _count_done(self, row: SegmentRow) -> None:
        with self._lock:
            self._done_raw[row.seq] = row.raw_end - row.raw_start
            self._done_gz[row.seq] = row.size or 0

    def _saved(self, row: SegmentRow) -> Saved | None:
        """The segment's progress if it checks out (as the single stream's is checked)."""
        if row.checkpoint is None:
            return None
        done = self.journal.segment_member_crcs(self.name, row.seq)
        if row.checkpoint_intact(self.task.params, self.task.manifest_id) and files_crc32c(0, done) == row.files_crc32c:
            return Saved(row.durable_offset, row.checkpoint, row.files_crc32c, row.sink_state)
        self.progress.note(f"{self.name}: segment {row.seq}'s checkpoint fails its checks: from its start")
        self.journal.forget_segment_member_crcs(self.name, row.seq)
        return None

    def _upload_one(self, row: SegmentRow) -> None:
        # The machine's threads and read-ahead are shared among the streams.
        read_threads = self.options.read_threads or 0
        options = replace(
            self.options,
            threads=max(1, self.options.threads // self.streams),
            read_threads=max(1, read_threads // self.streams) if read_threads else 0,
            read_ahead=max(1 << 20, self.options.read_ahead // self.streams) if self.options.read_ahead else 0,
        )
        sink = GcsSink(self.where.bucket, self.where.path, self.name, self.codec.extension, options,
                       part=row.object, note=self.progress.note)
        store = JournalStore(self.journal, self.task, row.seq)
        initial = range_start(self.layout, row.raw_start)

        def on_block(cp: Checkpoint, files: int) -> None:
            if self._abort.is_set():
                raise _Cancelled
            with self._lock:
                self._done_raw[row.seq] = cp.raw_offset - row.raw_start
                self._done_gz[row.seq] = cp.gz_offset
                self._files_done += files
                self.progress.update(sum(self._done_raw.values()), sum(self._done_gz.values()), self._files_done)

        try:
            streamed = stream_range(
                layout=self.layout, codec=self.codec, options=options, sink=sink, store=store,
                saved=self._saved(row), initial=initial, raw_end=row.raw_end, trailer=False,
                progress=self.progress, label=f"{self.name} segment {row.seq}", on_block=on_block,
            )
            last = streamed.last
            info = archive_info(self.attempt, last)  # a part gets no metadata: only its size and crc32c count
            check_stored(sink.finalize(info, b""), info, sink.description)
            streamed.commit()
        except BaseException:
            sink.abort()
            raise
        recorded = dict(self.journal.segment_member_crcs(self.name, row.seq))
        recorded.update(streamed.pending)
        self.journal.finish_segment(self.name, row.seq, size=last.gz_offset, crc32c=last.crc32c,
                                    raw_crc32=last.crc32, ends=self._ends(row, recorded, last))
        with self._lock:
            self.totals.resumed_from += streamed.resumed_from
            self.totals.discarded += streamed.discarded
            self.totals.raw_processed += row.raw_end - streamed.start.raw_offset
            self.totals.stored_bytes += streamed.stored_bytes

    def _ends(self, row: SegmentRow, recorded: dict[int, int], last: Checkpoint) -> dict[str, Any]:
        """The members this segment holds only a piece of: the one it starts inside
        (``head``: its crc32c over the piece, the piece's length, whether it ends here)
        and the one it stops inside, having started here (``tail``)."""
        ends: dict[str, Any] = {}
        entries = self.layout.manifest.entries
        a, b = row.raw_start, row.raw_end
        head = self.layout.locate(a)
        if head < len(entries) and entries[head].kind == FILE:
            start, end = self.layout.data_span(head)
            if start < a < end:
                finished = end <= b
                crc = recorded[head] if finished else last.cursor.crc32c
                ends["head"] = [head, crc, min(end, b) - a, finished]
        tail = self.layout.locate(b) if b < self.layout.size else len(entries)
        if tail < len(entries) and entries[tail].kind == FILE and tail != head:
            start, end = self.layout.data_span(tail)
            if a <= start < b < end:
                ends["tail"] = [tail, last.cursor.crc32c, b - start]
        return ends

    # -- the archive ---------------------------------------------------------------------

    def _member_crcs(self, rows: list[SegmentRow]) -> list[int | None]:
        crcs = self.journal.member_crcs(self.name, len(self.manifest.entries))
        carry: tuple[int, int] | None = None
        for row in rows:
            ends = row.ends or {}
            if "head" in ends:
                idx, crc, length, finished = ends["head"]
                if carry is None or carry[0] != idx:
                    raise IntegrityError(f"segment {row.seq} continues member {idx}, which no segment began")
                whole = crc32c_combine(carry[1], crc, length)
                crcs[idx], carry = (whole, None) if finished else (None, (idx, whole))
            if "tail" in ends:
                idx, crc, _ = ends["tail"]
                carry = (idx, crc)
        return crcs

    def _compose(self, rows: list[SegmentRow], raw_crc32: int) -> list[list[Any]]:
        """The trailer object, then every volume composed and checked: [[name, size, crc32c]]."""
        pieces = [(row.object, row.size or 0, row.crc32c or 0) for row in rows]
        trailer = self.codec.trailer(raw_crc32, self.layout.size)
        if trailer:
            name = trailer_name(self.prefix)
            info = self.parts.upload(name, trailer, self.content_type, storage_class=self.helper_class)
            pieces.append((name, info.size, info.crc32c or 0))
        groups: list[list[tuple[str, int, int]]] = [[]]
        for piece in pieces:
            if groups[-1] and sum(p[1] for p in groups[-1]) + piece[1] > self.plan.volume_size:
                groups.append([])
            groups[-1].append(piece)
        names = volume_names(self.archive, len(groups))
        volumes = []
        for v, (dest, group) in enumerate(zip(names, groups, strict=True)):
            size, crc = combined([(n, c) for _, n, c in group])
            got = self.parts.compose([p[0] for p in group], dest, self.content_type, compose_scratch(self.prefix, v),
                                     self.helper_class)
            if (got.size, got.crc32c) != (size, crc):
                self.parts.delete([dest])
                raise IntegrityError(
                    f"gs://{self.where.bucket}/{dest} was composed with {got.size} bytes and crc32c "
                    f"{got.crc32c if got.crc32c is None else f'{got.crc32c:08x}'}, but its parts hold {size} bytes "
                    f"with {crc:08x}: it was deleted; run with --force to upload the archive again"
                )
            volumes.append([dest, size, crc])
        return volumes

    def _finish(self, rows: list[SegmentRow], volumes: list[list[Any]], raw_crc32: int) -> Stored:
        """Manifest (and volume list), metadata, and a last look at every volume."""
        size, crc = combined([(n, c) for _, n, c in volumes])
        manifest_name = manifest_next_to(self.archive, self.name)
        # Each segment's access points, from its own output offsets to the archive's.
        points: list[AccessPoint] = []
        before = 0
        for row in rows:
            points.extend(
                AccessPoint(p.raw, before + p.archive) for p in self.journal.access_points(self.name, row.seq)
            )
            before += row.size or 0
        index = render_index(self.attempt, points)
        if index is not None:
            self.parts.upload(index_next_to(self.archive, self.name), index, TSV_CONTENT_TYPE,
                              storage_class=self.helper_class)
        tsv = render_manifest(self.attempt, self._member_crcs(rows))
        self.parts.upload(manifest_name, tsv, TSV_CONTENT_TYPE, storage_class=self.helper_class)
        if len(volumes) > 1:
            listing = render(Volume(v[0].rsplit("/", 1)[-1], v[1], v[2]) for v in volumes)
            self.parts.upload(listing_name(self.archive), listing, TSV_CONTENT_TYPE, storage_class=self.helper_class)
        metadata = archive_metadata(self.name, self.layout.size, self.manifest.file_count, raw_crc32,
                                    self.codec.name, __version__)
        settled = []
        for i, (name, n, c) in enumerate(volumes):
            info = self.parts.stat(name)
            if info is None or (info.size, info.crc32c) != (n, c):
                raise IntegrityError(f"gs://{self.where.bucket}/{name} is not the volume that was composed")
            wanted = self.options.storage_class
            if wanted and info.storage_class != wanted:
                # Composed in STANDARD: now into the class asked for, server-side. Done
                # again after a crash here, since the class GCS reports says where it is.
                info = self.parts.rewrite_class(name, wanted, info.generation)
                if (info.size, info.crc32c) != (n, c):
                    raise IntegrityError(f"gs://{self.where.bucket}/{name} changed when its class was changed")
            info = self.parts.patch_metadata(name, {**metadata, **volume_metadata(len(volumes), size, crc, i)},
                                             info.generation)
            try:
                settled.append(self.parts.settle(info, self.options))
            except IntegrityError as exc:
                self.parts.delete([name])  # kept otherwise than asked: not this run's archive
                raise IntegrityError(f"{exc}; it was deleted") from None
        keep = [v[0] for v in volumes] + ([listing_name(self.archive)] if len(volumes) > 1 else [])
        left = self.parts.remove_stale(self.archive, keep)
        if left:
            self.progress.note(f"{self.name}: an earlier archive's objects could not be deleted: {', '.join(left)}")
        stored = Stored(
            location=f"{self.where.bucket}/{self.archive}",
            size=size,
            crc32c=crc,
            manifest_location=f"{self.where.bucket}/{manifest_name}",
            volumes=tuple(f"{self.where.bucket}/{v[0]}" for v in volumes) if len(volumes) > 1 else (),
            storage_class=settled[0].storage_class,
            kms_key_name=settled[0].kms_key_name,
            retain_until=min((s.retain_until for s in settled if s.retain_until), default=None),
            holds=holds_of(settled[0]),
        )
        write_read_indexes(self.attempt, stored, points, self.read_index_files)
        return stored

