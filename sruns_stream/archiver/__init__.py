"""The write path: one run streamed as tar, block-gzipped on threads, sent to a store in one or
several streams, resumably."""

__all__: list[str] = []
