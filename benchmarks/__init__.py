"""Benchmark suite for sruns-stream: ``python -m benchmarks [--quick]``.

Lives outside ``tests/``: speed is measured here against every alternative on the same
generated data, never asserted in unit tests. One concern per module:

- ``data``: generates and caches the run folders (``scripts/make_fake_run.py``)
- ``baselines``: the reference programs that a competitor runs in a child process
- ``measure``: one timed child process (pipeline) with its peak RSS
- ``competitors``: who is compared, and the command each one runs
- ``plan``: what ``--quick`` and the full mode run
- ``suite``: interleaved repetitions and medians' raw material
- ``resume``: the cost of resuming after kill -9 at half the archive
- ``machine``: the machine's description
- ``report``: ratios, targets, the markdown table and the charts

``bench_gcs`` is separate work. The loopback GCS server the upload rows talk to is
``loopback.gcs`` (top level, shared with the tests).
"""
