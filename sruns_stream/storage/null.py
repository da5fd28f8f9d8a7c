"""A destination that discards everything: for benchmarks of the stream itself."""

from __future__ import annotations

from .sink import ArchiveInfo, Stored

__all__ = ["NullSink"]


class NullSink:
    description = "null (discarded)"
    archive_name = "null"

    def __init__(self, interval: int = 16 << 20) -> None:
        self._offset = 0
        self._durable = 0
        self._interval = interval

    def open(self, state: str | None, durable: int) -> int:
        # Nothing was kept, so nothing can be resumed.
        self._offset = 0
        return 0

    def state(self) -> str | None:
        return None

    @property
    def durable_offset(self) -> int:
        return self._durable

    def write(self, data: bytes) -> None:
        # Advances "durable" every interval, as the local sink's fsyncs do, so a
        # benchmark to null pays the same journal writes as a real destination.
        self._offset += len(data)
        if self._offset - self._durable >= self._interval:
            self._durable = self._offset

    def request_durable(self) -> None:
        self._durable = self._offset

    def finalize(self, info: ArchiveInfo, manifest_tsv: bytes, index_tsv: bytes | None = None) -> Stored:
        self._durable = self._offset
        return Stored(location="null", size=self._offset, crc32c=info.crc32c)

    def abort(self) -> None:
        pass
