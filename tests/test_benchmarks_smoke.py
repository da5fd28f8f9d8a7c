"""The benchmark driver's pieces work: statistics, tables, targets, one real tiny run.

No timing is asserted anywhere: speed is the benchmark's business, not the tests'.
"""

from __future__ import annotations

import gzip
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks/ is not an installed package: import it from the checkout
    sys.path.insert(0, str(REPO))

# Imports after code, so noqa: E402 on each: they need the sys.path entry made just above.
from benchmarks.competitors import BEFORE, REFERENCE, Competitor, Tools, main_competitors, sruns_stream  # noqa: E402
from benchmarks.data import Dataset, DatasetSpec, parse_size, prepare  # noqa: E402
from benchmarks.measure import (  # noqa: E402
    Command,
    RssProbe,
    Sample,
    cpu_measures,
    median,
    run_command,
    sruns_json,
)
from benchmarks.plan import MANY_SMALL, make_plan, thread_counts  # noqa: E402
from benchmarks.report import (  # noqa: E402
    Report,
    evaluate_targets,
    markdown_table,
    ratio,
    render_markdown,
    slug,
    write_charts,
)
from benchmarks.scenario import Row, run  # noqa: E402
from benchmarks.suite import interleave  # noqa: E402


def test_median_and_ratio() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert ratio(8.0, 2.0) == 4.0  # the row takes 4x as long: sruns-stream is 4x faster
    assert ratio(None, 2.0) is None
    assert ratio(1.0, 0.0) is None


def test_markdown_table_aligns_columns() -> None:
    text = markdown_table(["name", "MB/s"], [["a", "12"], ["longer name", None]])
    lines = text.splitlines()
    assert lines[0] == "| name        | MB/s |"
    assert lines[1] == "|:------------|-----:|"
    assert lines[2] == "| a           |   12 |"
    assert lines[3] == "| longer name |      |"
    assert len({len(line) for line in lines}) == 1


def test_slug_and_thread_counts() -> None:
    assert slug("development run, machine busy") == "development-run-machine-busy"
    assert thread_counts(2) == [1, 2]
    assert thread_counts(32) == [1, 2, 4, 8, 16, 32]
    assert thread_counts(12) == [1, 2, 4, 8, 12]


def test_sizes_on_the_command_line_are_binary() -> None:
    assert [parse_size(t) for t in ("512M", "1G", "4MiB", "8k", "100")] == [512 << 20, 1 << 30, 4 << 20, 8 << 10, 100]


def test_quick_plan_lists_what_it_leaves_out() -> None:
    plan = make_plan(quick=True, cores=2)
    assert {"share", "streams", "verify", "random", "resume", "main"} <= set(plan.sections)
    labels = {d.label for d in plan.datasets}
    assert {plan.scenarios.verify_on, plan.scenarios.random_on, *plan.scenarios.access_cost_on} <= labels
    everyone = {c.name for c in main_competitors()}
    for label, rows in plan.rows.items():
        assert rows[0].name == REFERENCE
        assert {c.name for c in rows} | set(plan.left_out[label]) == everyone
    assert plan.reps >= 3
    # Issue 21: 1 and 2 threads on a NovaSeq-style and a 50k+ small-files run, in --quick too.
    assert "scaling" in plan.sections and plan.threads == [1, 2]
    assert MANY_SMALL.label in labels and MANY_SMALL.files is not None and MANY_SMALL.files >= 50_000
    assert set(plan.scaling_on) == {"NovaSeq", MANY_SMALL.label}
    assert all(BEFORE in {c.name for c in rows} for rows in plan.rows.values())


def _fake_dataset(tmp_path: Path, label: str) -> Dataset:
    return Dataset(DatasetSpec(label, label.lower(), 100), tmp_path, 10, 12, 100_000_000, 0.0, "x")


def _sample(seconds: float, rss_kib: int | None = 50_000, **measures: float) -> Sample:
    return Sample(seconds, rss_kib, [rss_kib], 1000, "", measures=measures)


def _row(competitor: Competitor, ds: Dataset, seconds: list[float], rss_kib: int = 50_000,
         **cpu: float) -> Row[Competitor]:
    return Row(competitor, ds, [_sample(s, rss_kib, archive_bytes=50_000_000, **cpu) for s in seconds])


def test_targets_met_not_met_and_not_measured(tmp_path: Path) -> None:
    by_name = {c.name: c for c in main_competitors()}
    miseq, nova = _fake_dataset(tmp_path, "MiSeq"), _fake_dataset(tmp_path, "NovaSeq")
    many = _fake_dataset(tmp_path, "many small files")
    failed = _row(by_name["sruns-stream auto → loopback-gs"], miseq, [])
    own = {"proc_cpu_s": 4.0, "main_cpu_s": 0.4, "main_share": 0.1, "cpu_from_json": 1.0}
    failed.skipped = "no loopback GCS server"
    report = Report(
        label="t", date="2024-01-01", command="python -m benchmarks", machine={"cores": "2"},
        rss_method="test", quick=True, reps=3, datasets=[miseq, nova], left_out={},
        main={
            "MiSeq": [
                _row(by_name[REFERENCE], miseq, [1.0, 1.1, 0.9]),
                _row(by_name["tar | isal igzip_threaded -1 (ceiling)"], miseq, [0.95, 0.95, 0.95]),
                _row(by_name["tar | pigz -1"], miseq, [3.0, 3.0, 3.0]),
                _row(by_name["sruns-stream auto → null"], miseq, [0.9, 0.9, 0.9], rss_kib=400 * 1024),
                failed,
            ],
            "NovaSeq": [_row(by_name[REFERENCE], nova, [1.0, 1.0, 1.0], **own)],
            "many small files": [
                _row(by_name[REFERENCE], many, [2.0, 2.0, 2.0], rss_kib=120 * 1024,
                     **{**own, "main_share": 0.3}),
                _row(by_name[BEFORE], many, [3.0, 3.0, 3.0], rss_kib=100 * 1024, proc_cpu_s=3.0, main_cpu_s=1.5,
                     main_share=0.5, cpu_from_json=0.0),
                _row(by_name["tar | isal igzip_threaded -1 (ceiling)"], many, [2.0, 2.1, 1.9]),
            ],
        },
    )
    status = {t.text: t.status for t in evaluate_targets(report)}
    assert status["#11 page cache, MiSeq: sruns-stream (auto, local) ≥ 1.0× tar | isal igzip_threaded"] == \
        "**NOT met**"  # 1.0 s vs 0.95 s
    assert status["#5 MiSeq: sruns-stream (auto, local) ≥ 4× tar | pigz -1"] == "**NOT met**"
    assert status["#5 MiSeq: sruns-stream (auto, local) ≥ 8× sruns-monitor's way"].startswith("not measured")
    assert "not run on NovaSeq" in status[
        "#21 (and #5) page cache, NovaSeq: sruns-stream (auto, local) ≥ 1.5× the isal ceiling"]
    assert status["#21 page cache, MiSeq: sruns-stream (auto, local) ≥ 0.95× the isal ceiling"] == "met"
    assert status["#21 page cache, many small files: sruns-stream (auto, local) ≥ 1.0× tar | isal "
                  "igzip_threaded"] == "met"  # 2.0 s vs 2.0 s
    assert status["#21 page cache, NovaSeq: sruns-stream's main thread ≤ 15% of its process's CPU "
                  "(cap 1/share ≥ 6.7×)"] == "met"  # 10 %
    assert status["#21 page cache, many small files: sruns-stream's main thread ≤ 25% of its process's CPU "
                  "(cap 1/share ≥ 4.0×)"] == "**NOT met**"  # 30 %
    assert status["#21 peak RSS at defaults within 10% of before #21 (bb80d58)"] == "**NOT met**"  # 120 vs 100 MiB
    assert status["#11 peak RSS ≤ 300 MiB at defaults (page-cache rows)"] == "**NOT met**"
    assert "no loopback GCS server" in status["#5 MiSeq: sruns-stream auto → loopback-gs ≥ 0.8× → null"]
    text = render_markdown(report, evaluate_targets(report))
    assert "skipped: no loopback GCS server" in text
    assert "| tar \\| pigz -1" in text  # a "|" in a name is escaped: the table keeps its columns
    assert "| sruns-stream auto → local" in text
    notes = write_charts(report, tmp_path, "t")
    if not notes:  # matplotlib installed (the bench extra)
        assert (tmp_path / "t-throughput.png").stat().st_size > 0


def test_rss_fallback_reads_a_child_peak(tmp_path: Path) -> None:
    cmd = Command(((sys.executable, "-c", "b = b'x' * (64 << 20)"),))
    sample = run_command(cmd, tmp_path / "s", RssProbe(prefer_gnu_time=False))
    assert sample.ok, sample.error
    assert sample.peak_rss_kib is not None and sample.peak_rss_kib >= 60 * 1024


def test_failure_is_recorded_not_raised(tmp_path: Path) -> None:
    ds = _fake_dataset(tmp_path, "MiSeq")
    broken = Competitor("broken", "sh", "-", "local", lambda d, t, s: Command((("sh", "-c", "echo nope >&2; exit 3"),)))
    tools = Tools(threads=1, scratch=tmp_path / "tools")
    rows = interleave([broken], ds, tools, 3, RssProbe(), tmp_path / "runs", log=lambda _: None)
    assert len(rows[0].samples) == 1  # not retried after the failure
    assert rows[0].skipped == "failed in repetition 1: exit 3: nope"


def test_a_failing_upload_path_is_not_retried_by_other_rows(tmp_path: Path) -> None:
    def fails(d: Dataset, t: Tools, s: Path) -> Command:
        return Command((("sh", "-c", "echo 501 >&2; exit 1"),))

    first = Competitor("gs a", "x", "-", "loopback-gs", fails, ("gs",), fragile="gs")
    second = Competitor("gs b", "x", "-", "loopback-gs", fails, ("gs",), fragile="gs")
    tools = Tools(threads=1, scratch=tmp_path / "tools")
    rows = interleave([first, second], _fake_dataset(tmp_path, "MiSeq"), tools, 3, RssProbe(), tmp_path / "runs",
                      log=lambda _: None)
    assert [len(r.samples) for r in rows] == [1, 0]
    assert rows[1].skipped == tools.missing["gs"]
    assert tools.missing["gs"].startswith("gs a failed on MiSeq (failed in repetition 1: exit 1: 501)")


def test_unavailable_tool_is_skipped_with_its_reason(tmp_path: Path) -> None:
    gs = sruns_stream("auto", "loopback-gs")
    tools = Tools(threads=1, scratch=tmp_path, missing={"loopback": "no server here"})
    rows = interleave([gs], _fake_dataset(tmp_path, "MiSeq"), tools, 3, RssProbe(), tmp_path, log=lambda _: None)
    assert rows[0].samples == [] and rows[0].skipped == "no server here"


@pytest.mark.slow  # real processes of every competitor
@pytest.mark.timeout(180)
def test_tiny_real_run_of_sruns_stream_and_the_ceiling(tmp_path: Path) -> None:
    ds = prepare(DatasetSpec("MiSeq", "miseq", 2 << 20), cache=tmp_path / "cache", log=lambda _: None)
    assert ds.raw_bytes > 1 << 20 and ds.files > 10
    again = prepare(ds.spec, cache=tmp_path / "cache", log=lambda _: None)  # reused from the cache
    assert again.path == ds.path
    by_name = {c.name: c for c in main_competitors()}
    chosen = [by_name[REFERENCE], by_name["tar | isal igzip_threaded -1 (ceiling)"]]
    if shutil.which("pigz"):
        chosen.append(by_name["tar | pigz -1"])
    tools = Tools(threads=2, scratch=tmp_path / "tools")
    rows = interleave(chosen, ds, tools, 1, RssProbe(), tmp_path / "runs", log=lambda _: None)
    for row in rows:
        assert row.complete, (row.name, row.skipped)
        assert row.archive_bytes and row.archive_bytes < ds.raw_bytes
        assert row.peak_rss_kib and row.peak_rss_kib > 1024
    summary = sruns_json(rows[0].samples[0].stdout)
    assert summary and summary["raw_processed"] == summary["raw_bytes"]
    assert not list((tmp_path / "runs").iterdir())  # every scratch directory was removed


def test_ceiling_program_writes_valid_gzip(tmp_path: Path) -> None:
    data = b"ACGT" * 300_000 + bytes(range(256)) * 1000
    (tmp_path / "in").write_bytes(data)
    out = tmp_path / "out.gz"
    ceiling = (sys.executable, "-m", "benchmarks.baselines", "igzip-threaded", "-T", "2")
    cmd = Command((("cat", str(tmp_path / "in")), ceiling), stdout_file=out, output=out,
                  env={"PYTHONPATH": str(REPO)})
    sample = run_command(cmd, tmp_path / "s", RssProbe())
    assert sample.ok, sample.error
    assert sample.output_bytes == out.stat().st_size
    assert gzip.decompress(out.read_bytes()) == data


def test_scenario_targets_met_not_met_and_not_measured() -> None:
    from benchmarks.random_access import RaCase, RandomAccessResult, Span
    from benchmarks.scenario_report import Scenarios, render_scenarios, scenario_targets
    from benchmarks.share import ShareCase, ShareResult
    from benchmarks.streams import StreamsCase

    sc = Scenarios(streams_cap=20.0)
    sc.share = [ShareResult("many files (x)", 800, 32_000_000, 0.5,
                            [Row(ShareCase(name, build), None, [_sample(s) for s in [seconds] * 3])
                             for name, build, seconds in (("sruns-stream (defaults)", "sruns", 1.0),
                                                          ("tar | pigz -1", "pigz", 5.0),
                                                          ("tar | isal igzip_threaded -1", "isal", 3.0))])]
    sc.streams = [Row(StreamsCase(n, cap), None,
                      [_sample(s, 100_000, cpu_s=1.0, server_cpu_s=1.0, streams_used=n, raw_bytes=10, archive_bytes=10)
                       for _ in range(3)])
                  for n, cap, s in ((1, 20.0, 12.0), (4, 20.0, 3.5), (8, 20.0, 3.0), (1, None, 2.0), (4, None, 2.0))]
    span = Span("RunInfo.xml", "R/RunInfo.xml", 1, 0, 1024, 900, 0, 500)
    sc.random = RandomAccessResult("NovaSeq", 10 << 20, 10 << 20, True, {"RunInfo.xml": span},
                                   [Row(RaCase("RunInfo.xml", "sruns-stream cat (RunInfo.xml)", "sruns-stream"), None,
                                        [_sample(0.5, bytes_sent=70_000, requests=3)])])
    sc.access_cost = {"MiSeq": (1_002_000, 1_000_000)}
    status = {t.text: t.status for t in scenario_targets(sc, {}, 200.0, quick=True)}
    assert status["#11 share, many files, 0.5 ms/op: sruns-stream ≥ 4× tar | pigz -1"] == "met"
    assert status["#11 share, many files, 0.5 ms/op: sruns-stream ≥ 4× tar | isal igzip_threaded -1"] == "**NOT met**"
    assert status["#12 upload streams, cap 20 MB/s per connection: 4 streams ≥ 3× one"] == "met"
    assert status["#12 upload streams, cap 20 MB/s per connection: 8 streams ≥ 5× one"] == "**NOT met**"
    assert status["#12 upload streams, no cap: 4 streams no slower than one (≥ 1×)"] == "met"
    assert status["#13 random access, RunInfo.xml: bytes on the wire ≤ compressed span + 16 MiB"] == "met"
    assert status["#13 random access, InterOp/: bytes on the wire ≤ compressed span + 16 MiB"].startswith(
        "not measured")
    assert status["#13 access points grow the MiSeq archive by ≤ 0.5%"] == "met"
    assert status["#15 the suite's own run time: quick mode ≤ ~5 min"] == "met"
    assert status["#21 `sruns-stream --version` ≤ 0.15 s (median, `python -m sruns_stream --version`)"].startswith(
        "not measured")
    status = {t.text: t.status for t in scenario_targets(sc, {}, 200.0, quick=True, startup_s=0.2)}
    assert status["#21 `sruns-stream --version` ≤ 0.15 s (median, `python -m sruns_stream --version`)"] == \
        "**NOT met**"
    text = render_scenarios(sc, {})
    assert "| cap 20 MB/s, 4 streams" in text and "| sruns-stream cat (RunInfo.xml)" in text


def test_first_byte_is_timed_from_the_output(tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    cmd = Command((("sh", "-c", f"sleep 0.3; echo x > {out}.part; sleep 0.3; mv {out}.part {out}"),), output=out)
    sample = run_command(cmd, tmp_path / "s", RssProbe())
    assert sample.ok, sample.error
    assert sample.first_byte_s is not None and 0.25 <= sample.first_byte_s < sample.seconds


def test_every_section_runs_in_one_shape_interleaved_rotated_and_not_retried() -> None:
    """`scenario.run`: rounds of every row (rotated when asked), a failed row skipped from then on."""
    from benchmarks.share import ShareCase

    calls: list[tuple[str, int]] = []

    def measure(row: Row[ShareCase], rep: int) -> Sample:
        calls.append((row.name, rep))
        failing = row.name == "b" and rep == 1
        return Sample(1.0 + rep, None, [], None, "", "exit 1: no" if failing else None)

    rows = [Row(ShareCase(n, n)) for n in "abc"]
    run(rows, 3, measure, rotate=True, log=lambda _: None)
    assert calls == [("a", 0), ("b", 0), ("c", 0), ("b", 1), ("c", 1), ("a", 1), ("c", 2), ("a", 2)]
    assert rows[1].skipped == "failed in repetition 2: exit 1: no"
    assert [len(r.ok_samples) for r in rows] == [3, 1, 3]
    assert rows[0].seconds == 2.0 and rows[1].seconds == 1.0


def test_streams_rows_render_again_from_their_json() -> None:
    """`python -m benchmarks.streams --render` reads back what the page's JSON holds."""
    from benchmarks.streams import StreamsCase, row_as_dict, row_from_dict

    row = Row(StreamsCase(4, 20.0), None, [_sample(s, 90_000 + i, cpu_s=2.0 + i, server_cpu_s=0.5, streams_used=4,
                                                   raw_bytes=1000, archive_bytes=900)
                                           for i, s in enumerate((3.0, 2.0, 4.0))])
    saved = row_as_dict(row)
    assert saved["seconds"] == [3.0, 2.0, 4.0] and saved["median_s"] == 3.0 and saved["archive_bytes"] == 900
    again = row_from_dict(saved)
    assert again.case == row.case and row_as_dict(again) == saved


def test_verify_targets_against_one_thread_and_gzip() -> None:
    from benchmarks.scenario_report import Scenarios, scenario_targets
    from benchmarks.verify_bench import VerifyCase, VerifyResult

    v = VerifyResult("MiSeq", 100, 200, threads=2, has_threads_option=True)
    for name, seconds in (("sruns-stream verify --threads 1", 2.0), ("sruns-stream verify --threads 2", 1.1),
                          ("gzip -t", 1.8)):
        v.rows.append(Row(VerifyCase(name, Command(())), None, [_sample(seconds) for _ in range(3)]))
    status = {t.text: t.status for t in scenario_targets(Scenarios(verify=v), {}, 1.0, quick=True)}
    assert status["#13, #21 verify of a local MiSeq-style archive: N threads ≥ 1.7× one thread"] == "met"  # 1.82×
    assert status["#21 verify of a local MiSeq-style archive: one thread ≥ `gzip -t`'s speed"] == "**NOT met**"


def test_cpu_share_from_sruns_json_or_the_busiest_polled_thread(tmp_path: Path) -> None:
    """sruns-stream's own --json "cpu" wins; any other command gets its busiest thread from
    /proc. Oracle: two threads that each burn ~0.4 s of their own CPU (thread_time) while the
    main thread waits: the busiest thread is about half of the process's CPU (getrusage)."""
    summary = '{"cpu": {"process_cpu_s": 4.0, "main_thread_cpu_s": 1.0, "main_thread_share": 0.25}}'
    assert cpu_measures("progress\n" + summary + "\n", 9.0, 3.0) == {
        "proc_cpu_s": 4.0, "main_cpu_s": 1.0, "main_share": 0.25, "cpu_from_json": 1.0}
    assert cpu_measures("", 2.0, 0.5)["main_share"] == 0.25
    burn = ("import threading, time\n"
            "def spin():\n"
            "    while time.thread_time() < 0.4: pass\n"
            "ts = [threading.Thread(target=spin) for _ in range(2)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n")
    sample = run_command(Command(((sys.executable, "-c", burn), ("cat",)), stdout_file=Path("/dev/null")),
                         tmp_path / "s", RssProbe())
    assert sample.ok, sample.error
    m = sample.measures
    assert m["cpu_from_json"] == 0.0 and m["proc_cpu_s"] >= 0.8
    assert 0.3 <= m["main_cpu_s"] <= 0.6 and sample.busiest_thread
    assert 0.3 <= m["main_share"] <= 0.75
    assert m["polled_cpu_s"] <= m["proc_cpu_s"] + 0.05


def test_serial_share_net_of_the_fixed_cost(tmp_path: Path) -> None:
    """(main − fixed main) ÷ (process − fixed process): start-up is all main thread, so the
    share on a large run is below the share measured with it."""
    from benchmarks.report import fixed_cpu, net_share

    ds = _fake_dataset(tmp_path, "NovaSeq")
    fixed = fixed_cpu([_row(sruns_stream("auto", "null"), ds, [0.5], proc_cpu_s=0.25, main_cpu_s=0.23)])
    assert fixed == (0.25, 0.23)
    row = _row(sruns_stream("auto", "null"), ds, [2.0], proc_cpu_s=1.25, main_cpu_s=0.33)
    share = net_share(row, fixed)
    assert share is not None and abs(share - 0.10) < 1e-9
    assert net_share(row, None) is None


def test_the_before_row_runs_the_code_before_issue_21(tmp_path: Path) -> None:
    """Oracle: the sruns_stream package the BEFORE row's environment imports, from this
    checkout's working directory (where `python -m` would find today's code first), is the
    one `git archive` exported, and git has that commit."""
    import os
    import subprocess

    from benchmarks.competitors import export_before

    tools = Tools(threads=1, scratch=tmp_path)
    export_before(tools)
    if "before" in tools.missing:
        pytest.skip(tools.missing["before"])  # a shallow clone has no such commit
    by_name = {c.name: c for c in main_competitors()}
    cmd = by_name[BEFORE].build(_fake_dataset(tmp_path, "MiSeq"), tools, tmp_path / "x")
    found = subprocess.run([sys.executable, "-c", "import sruns_stream; print(sruns_stream.__file__)"],
                           cwd=REPO, env={**os.environ, **cmd.env}, capture_output=True, text=True, check=True)
    assert tools.before_tree is not None and Path(found.stdout.strip()).is_relative_to(tools.before_tree)
    # And that code's parser knows every flag the row passes (it has no --not-finished).
    helped = subprocess.run([sys.executable, "-m", "sruns_stream", "archive", "--help"], cwd=REPO,
                            env={**os.environ, **cmd.env}, capture_output=True, text=True, check=True).stdout
    (argv,) = cmd.stages
    assert all(flag in helped for flag in argv if flag.startswith("--")), argv


def test_amdahl_and_the_scaling_page_is_rendered_from_the_page_it_names() -> None:
    """docs/scaling.md is `python -m benchmarks.scaling_doc` of the results page it links:
    change the page, redo the doc (and the template has no number the page cannot give)."""
    import json
    import re

    from benchmarks.scaling_doc import TEMPLATE, amdahl, render

    assert amdahl(0.0, 32) == 32 and amdahl(1.0, 32) == 1
    assert abs(amdahl(0.25, 2) - 1.6) < 1e-9 and abs(amdahl(0.25, 1e12) - 4.0) < 1e-6
    doc = (REPO / "docs" / "scaling.md").read_text()
    named = re.search(r"benchmarks/results/([\w.-]+)\.json", doc)
    assert named, "docs/scaling.md names the page it was computed from"
    page = REPO / "benchmarks" / "results" / f"{named.group(1)}.json"
    text = render(json.loads(page.read_text()), page.with_suffix(".md").read_text(), page.stem, TEMPLATE.read_text())
    assert text == doc
