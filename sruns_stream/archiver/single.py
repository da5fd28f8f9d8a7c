"""One upload stream: the whole archive is one range of the stream (`pipeline`), sent to
the destination `run` opened for it, checkpointed in the run's journal row, finalized
with its manifest and access index beside it."""

from __future__ import annotations

from ..state.checkpoint import Checkpoint
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
from .pipeline import stream_range

__all__ = ["SingleStream"]


class SingleStream:
    """Any destination, one stream (`attempt.Strategy`)."""

    streams = 1

    def run(self, attempt: Attempt) -> Outcome:
        name, manifest, layout, journal = attempt.name, attempt.manifest, attempt.layout, attempt.journal
        saved, progress = attempt.saved, attempt.progress
        files_shown = manifest.files_before(saved.checkpoint.cursor.index) if saved else 0

        def on_block(cp: Checkpoint, files: int) -> None:
            nonlocal files_shown
            files_shown += files
            progress.update(cp.raw_offset, cp.gz_offset, files_shown)

        read_index_files = start_read_indexes(attempt)  # beside the stream, on a thread of its own
        streamed = stream_range(
            layout=layout, codec=attempt.codec, options=attempt.options, sink=attempt.sink,
            store=JournalStore(journal, attempt.task), saved=saved, initial=Checkpoint.start(), raw_end=layout.size,
            trailer=True, progress=progress, label=name, on_block=on_block,
        )
        attempt.walk_again()
        last = streamed.last
        journal.update(name, status="tarring_complete")
        # Every member's crc32c: committed ones from the journal, the rest from memory.
        crcs = journal.member_crcs(name, len(manifest.entries))
        for idx, crc in streamed.pending:
            crcs[idx] = crc
        info = archive_info(attempt, last)
        journal.update(name, status="uploading")
        points = [*journal.access_points(name), *streamed.pending_points]
        manifest_tsv = render_manifest(attempt, crcs)
        stored = attempt.sink.finalize(info, manifest_tsv, render_index(attempt, points))
        check_stored(stored, info)
        write_read_indexes(attempt, stored, points, read_index_files)
        streamed.commit()
        start = streamed.start
        return Outcome(stored, last.crc32, start.raw_offset, streamed.resumed_from, layout.size - start.raw_offset,
                       streamed.discarded, streamed.stored_bytes)
