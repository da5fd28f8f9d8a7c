"""Servers on a loopback port that stand in for remote services, for the tests and the benchmarks.

Not part of the installed package (``pyproject.toml`` packages ``sruns_stream*`` only):
both ``tests/`` and ``benchmarks/`` import it from the checkout.

- ``gcs``: a GCS JSON-API server that discards upload bodies after their crc32c, serves
  connections in parallel and can cap each connection's upload rate
  (``LoopbackGcsServer``). The tests' emulator (gcp-storage-emulator, ``tests/plugins``)
  cannot stand in for it in the benchmarks: it serves one request at a time, rewrites the
  whole object on every chunk and has no per-connection cap, which is what
  ``benchmarks.streams`` measures.
"""

__all__: list[str] = []
