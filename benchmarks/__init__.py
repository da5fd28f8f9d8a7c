"""Benchmark suite for sruns-stream: ``python -m benchmarks [--quick]``.

Lives outside ``tests/``: speed is measured here against every alternative on the same
generated data, never asserted in unit tests. One concern per module:

- ``data``: generates and caches the run folders (``scripts/make_fake_run.py``)
- ``baselines``: the reference programs that a competitor runs in a child process
- ``measure``: one timed child process (pipeline): a ``Sample`` (seconds, peak RSS, CPU)
- ``scenario``: the one shape of every section: its cases, each a ``Row`` of samples,
  run interleaved (``scenario.run``)
- ``competitors``: who is compared, and the command each one runs
- ``plan``: what ``--quick`` and the full mode run
- ``suite``: the page-cache table's section (the competitors on one data set)
- ``share``, ``streams``, ``verify_bench``, ``random_access``: the other sections, each
  with its cases and its checks
- ``resume``: the cost of resuming after kill -9 at half the archive (a kill, then the
  same command: not a row of repetitions)
- ``machine``: the machine's description
- ``report``, ``scenario_report``, ``charts``: ratios, targets, the markdown and the charts

``bench_gcs`` is separate work. The loopback GCS server the upload rows talk to is
``loopback.gcs`` (top level, shared with the tests).
"""
