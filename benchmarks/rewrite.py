"""What changing an archive's storage class after compose costs in time, on the emulator.

    python -m benchmarks.rewrite [--sizes 16M,64M,256M] [--reps 3]

A several-stream archive meant for a cold class is composed in STANDARD, then rewritten
onto itself in that class (`storage.gcs.client.GcsBucket.rewrite_class`): one request,
or several following ``rewriteToken``. This times that call against gcp-storage-emulator
(in this process, in memory), objects of each size, median of ``--reps``. The emulator
copies the object in memory in one call and does not change its class: this measures
our side (requests, JSON, the check) and the emulator's copy, not GCS, whose rewrite
runs on Google's machines at a speed this VM cannot observe (see the README's "Costs
and compliance"). Prints one line per size.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence

from sruns_stream.cli import _size  # the one size grammar the CLI accepts


def measure(sizes: Sequence[int], reps: int) -> list[tuple[int, float]]:
    """(size, median seconds) for each size."""
    from gcp_storage_emulator.server import create_server

    from sruns_stream.storage.gcs.client import GcsBucket, make_client

    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    logging.getLogger("api.object").setLevel(logging.ERROR)
    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket="bench")
    server.start()
    rows = []
    try:
        url = f"http://127.0.0.1:{server._api._httpd.server_address[1]}"
        os.environ["STORAGE_EMULATOR_HOST"] = url
        client = make_client()
        gcs = GcsBucket("bench", client)
        for size in sizes:
            data = os.urandom(size)
            times = []
            for rep in range(reps):
                name = f"archive-{size}-{rep}.tar.gz"
                upload = (f"{url}/upload/storage/v1/b/bench/o?uploadType=media&"
                          f"name={urllib.parse.quote(name, safe='')}")
                urllib.request.urlopen(urllib.request.Request(upload, data=data, method="POST"), timeout=300).read()
                info = gcs.stat(name)
                assert info is not None
                t0 = time.perf_counter()
                gcs.rewrite_class(name, "ARCHIVE", info.generation)
                times.append(time.perf_counter() - t0)
                gcs.delete(name)
            rows.append((size, statistics.median(times)))
        client.close()
    finally:
        server.stop()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="16M,64M,256M")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    for size, seconds in measure([_size(s) for s in args.sizes.split(",")], args.reps):
        print(f"rewrite of {size / 2**20:.0f} MiB: {seconds:.3f} s (median of {args.reps}), "
              f"{size / 2**20 / seconds:.0f} MiB/s on gcp-storage-emulator")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
