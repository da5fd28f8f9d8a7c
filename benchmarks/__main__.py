"""``python -m benchmarks [--quick]``: parse the command line and wire the suite together.

One run measures every scenario of the deployment (issue 15): the page-cache table, the
share at several latencies (`share`), capped upload streams (`streams`), verify with 1
and N threads (`verify_bench`), random access from GCS (`random_access`), resume after
kill -9 (`resume`), and in the full mode the thread, block and chunk sweeps.
Progress goes to stderr; the markdown page is printed to stdout and written, with its
charts and a JSON file of every sample, to ``benchmarks/results/<date>-<label>[-quick].*``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from . import share, streams
from .charts import write_scenario_charts
from .competitors import Competitor, Tools, check_local_tools, export_before, probe_gcloud
from .data import DEFAULT_CACHE, REPO, Dataset, GeneratorMissing, prepare, warm_page_cache
from .machine import describe_machine
from .measure import RssProbe, interpreter_startup, median
from .plan import (
    ALL_SECTIONS,
    MANY_SMALL,
    MISEQ,
    TINY,
    Plan,
    block_rows,
    chunk_rows,
    fixed_cost_rows,
    make_plan,
    scaling_rows,
)
from .random_access import access_point_cost, measure_random_access
from .report import Report, evaluate_targets, render_markdown, slug, write_charts
from .resume import ResumeSetting, measure_resume
from .scenario import Row
from .scenario_report import Scenarios, render_scenarios, scenario_targets
from .suite import ByteCounter, interleave
from .verify_bench import make_archive, measure_verify

__all__ = ["main"]

SECTIONS = ALL_SECTIONS


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Throughput of sruns-stream against every alternative, on the same generated data.",
    )
    p.add_argument("--quick", action="store_true",
                   help="every scenario on smaller data, fewer rows (about 10 minutes on 2 cores)")
    p.add_argument("--reps", type=int, help="interleaved repetitions per row (default 3)")
    p.add_argument("--threads", type=int, help="threads for pigz and the ceiling (default: all usable cores)")
    p.add_argument("--label", help="names the results file (default: the host name)")
    p.add_argument("--only", help=f"comma-separated sections to run ({','.join(SECTIONS)}; default: all the "
                                  "mode runs; --quick leaves out blocks and chunks)")
    p.add_argument("--datasets", help="comma-separated data set kinds for the page-cache table (miseq,novaseq)")
    p.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where generated run folders are kept")
    p.add_argument("--tmpdir", type=Path, help="parent of the one temporary directory (default: system temp)")
    return p


def _start_loopback(stack: contextlib.ExitStack, tools: Tools) -> ByteCounter | None:
    try:
        from loopback.gcs import LoopbackGcsServer
    except ImportError as exc:
        tools.missing["loopback"] = f"no loopback GCS server: loopback/gcs.py cannot be imported ({exc})"
        return None
    try:
        server = stack.enter_context(LoopbackGcsServer())
    # Any failure of this optional part only disables the upload rows, visibly.
    except Exception as exc:  # noqa: BLE001
        tools.missing["loopback"] = f"the loopback GCS server did not start: {exc.__class__.__name__}: {exc}"
        return None
    tools.loopback_url = server.url
    _log(f"loopback GCS server at {server.url}")
    return server


def _check_sruns_gs(tools: Tools) -> None:
    try:
        found = importlib.util.find_spec("sruns_stream.storage.gcs.upload") is not None
    except ImportError:
        found = False
    if not found:
        tools.missing["sruns-gs"] = (
            "sruns-stream has no gs:// destination yet (sruns_stream/storage/gcs/upload.py is missing)"
        )


def _notes_for(rows_by_section: dict[str, list[Row[Competitor]]], tools: Tools) -> list[str]:
    notes = []
    for need, why in sorted(tools.missing.items()):
        affected = sorted({r.case.name for rows in rows_by_section.values() for r in rows
                           if need in r.case.needs})
        if affected:
            notes.append(f"{why}: skipped {', '.join(affected)}")
    for section, rows in rows_by_section.items():
        for r in rows:
            if r.skipped and not r.case.unavailable(tools):
                where = r.dataset.spec.label if r.dataset else "?"
                notes.append(f"{section}: {r.case.name} on {where}: {r.skipped}")
    return notes


def _run_scenarios(plan: Plan, sections: set[str], by_label: dict[str, Dataset], tools: Tools, probe: RssProbe,
                   workroot: Path, cache: Path) -> Scenarios:
    """The deployment's scenarios, in this order; one that cannot run says why on the page."""
    sp = plan.scenarios
    sc = Scenarios(streams_cap=sp.streams_cap, streams_options=sp.streams_options)
    if "share" in sections:
        _log(f"\n== the share: {len(sp.share_datasets)} runs at {sp.share_latencies} ms per operation")
        try:
            runs = [prepare(spec, cache, log=_log) for spec in sp.share_datasets]
            for ds in runs:
                _log(f"  {ds.describe()}")
            share_rows = [r for r in share.ROWS if sp.share_serial or r.build != "sruns-serial"]
            sc.share = share.sweep(runs, sp.share_latencies, plan.reps, workroot / "share",
                                   mountpoint=workroot / "share-mnt", rows=share_rows, cache=cache, log=_log)
        except (share.ShareUnavailable, RuntimeError, subprocess.CalledProcessError) as exc:
            sc.skipped["share"] = str(exc)
    if "streams" in sections:
        ds = prepare(sp.streams_dataset, cache, log=_log)
        sc.streams_data = ds.describe()
        cases = streams.make_cases(sp.streams_counts, sp.streams_cap, None)
        _log(f"\n== upload streams on {ds.spec.label}: {', '.join(c.name for c in cases)}")
        try:
            sc.streams = streams.sweep(ds, cases, plan.reps, sp.streams_options, workroot / "streams", log=_log)
        except streams.StreamsFailed as exc:
            sc.skipped["streams"] = str(exc)
    if "verify" in sections and sp.verify_on in by_label:
        ds = by_label[sp.verify_on]
        _log(f"\n== verify on {ds.spec.label}: archiving it once, untimed")
        sc.verify = measure_verify(ds, plan.reps, workroot / "verify", probe, _log)
        shutil.rmtree(workroot / "verify", ignore_errors=True)
    if "random" in sections and sp.random_on in by_label:
        ds = by_label[sp.random_on]
        _log(f"\n== random access on {ds.spec.label}: archiving it once, untimed")
        try:
            archive, summary = make_archive(ds, workroot / "random" / "archive")
        except RuntimeError as exc:
            sc.skipped["random"] = str(exc)
        else:
            sc.random = measure_random_access(ds, archive, summary, plan.reps, workroot / "random", probe, tools, _log)
        shutil.rmtree(workroot / "random", ignore_errors=True)
        for label in sp.access_cost_on:
            if label in by_label:
                _log(f"  access points' cost on {label}")
                sc.access_cost[label] = access_point_cost(by_label[label], workroot / "cost")
    for section in ("share", "streams", "verify", "random"):
        if section not in sections:
            sc.skipped.setdefault(section, "not run (left out by --only)")
    return sc


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    if args.reps is not None and args.reps < 1:
        _parser().error("--reps must be at least 1")
    started = time.perf_counter()
    cores = len(os.sched_getaffinity(0))
    plan = make_plan(args.quick, args.reps, cores)
    sections = {s.strip() for s in args.only.split(",") if s.strip()} if args.only else set(plan.sections)
    unknown = sections - set(SECTIONS)
    if unknown:
        _parser().error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    kinds = {k.strip() for k in args.datasets.split(",")} if args.datasets else None
    # The scenarios run on the page-cache table's data sets: those are always prepared.
    needed = {plan.scenarios.verify_on, plan.scenarios.random_on, *plan.scenarios.access_cost_on}
    specs = [d for d in plan.datasets if kinds is None or d.kind in kinds or d.label in needed]
    label = args.label or describe_machine()["host"]
    today = datetime.date.today().isoformat()
    # A quick and a full run on the same day keep both pages.
    stem = f"{today}-{slug(label)}" + ("-quick" if plan.quick else "")
    notes: list[str] = []
    if plan.reps < 3:
        notes.append(f"only {plan.reps} repetition(s): fewer than the 3 the method asks for")

    _log(f"sruns-stream benchmark ({'quick' if plan.quick else 'full'}): {plan.reps} repetitions, "
         f"sections {','.join(s for s in SECTIONS if s in sections)}")
    _log("data:")
    try:
        datasets = [prepare(spec, args.cache, log=_log) for spec in specs]
    except GeneratorMissing as exc:
        _log(f"error: {exc}")
        return 2
    for ds in datasets:
        _log(f"  {ds.describe()}")
    by_label = {ds.spec.label: ds for ds in datasets}

    machine = describe_machine()
    probe = RssProbe()
    workroot = Path(tempfile.mkdtemp(prefix="sruns-bench-", dir=args.tmpdir))
    report = Report(
        label=label, date=today, command="python -m benchmarks " + shlex.join(argv_list), machine=machine,
        rss_method=probe.description, quick=plan.quick, reps=plan.reps, datasets=datasets,
        main={}, left_out={}, resume_on=plan.resume_on,
    )
    sections_rows: dict[str, list[Row[Competitor]]] = {}
    try:
        with contextlib.ExitStack() as stack:
            tools = Tools(threads=args.threads or cores, scratch=workroot / "tools")
            tools.scratch.mkdir(parents=True)
            check_local_tools(tools)
            export_before(tools)
            _check_sruns_gs(tools)
            server = _start_loopback(stack, tools)
            if server is not None:
                _log("probing gcloud against the loopback server ...")
                probe_gcloud(tools)
            for need, why in sorted(tools.missing.items()):
                _log(f"  unavailable ({need}): {why}")

            def run(rows: Sequence[Competitor], ds: Dataset, reps: int = plan.reps) -> list[Row[Competitor]]:
                warm_page_cache(ds.path)
                return interleave(rows, ds, tools, reps, probe, workroot / "runs", server, _log)

            if "main" in sections:
                for ds in datasets:
                    _log(f"\n== {ds.spec.label}: {len(plan.rows[ds.spec.label])} competitors × {plan.reps}")
                    report.main[ds.spec.label] = run(plan.rows[ds.spec.label], ds)
                    sections_rows[f"main/{ds.spec.label}"] = report.main[ds.spec.label]
                    if plan.left_out[ds.spec.label]:
                        report.left_out[ds.spec.label] = plan.left_out[ds.spec.label]
            scenarios = _run_scenarios(plan, sections, by_label, tools, probe, workroot, args.cache)
            if "scaling" in sections:
                tiny = prepare(TINY, args.cache, log=_log)
                _log(f"\n== the fixed cost: {tiny.describe()}")
                report.fixed = run(fixed_cost_rows(), tiny)
                sections_rows["fixed cost"] = report.fixed
                for name in plan.scaling_on:
                    if name in by_label:
                        _log(f"\n== thread scaling on {name}: threads {plan.threads}")
                        report.scaling[name] = run(scaling_rows(plan.threads), by_label[name])
                        sections_rows[f"scaling/{name}"] = report.scaling[name]
            sweep_ds = by_label.get(plan.resume_on)
            if "blocks" in sections and sweep_ds:
                _log(f"\n== block size sweep on {sweep_ds.spec.label}: {plan.block_sizes}")
                report.blocks = run(block_rows(plan.block_sizes), sweep_ds)
                sections_rows["block size"] = report.blocks
            if "chunks" in sections and sweep_ds:
                _log(f"\n== chunk size sweep on {sweep_ds.spec.label} to loopback-gs: {plan.chunk_sizes}")
                report.chunks = run(chunk_rows(plan.chunk_sizes), sweep_ds)
                sections_rows["chunk size"] = report.chunks
            if "resume" in sections and sweep_ds:
                _log(f"\n== resume cost on {sweep_ds.spec.label}: kill -9 at half, then again")
                warm_page_cache(sweep_ds.path)
                settings = [r for r in RESUME_SETTINGS if r.label in plan.resume_settings]
                report.resume = measure_resume(sweep_ds, tools, probe, workroot / "resume", settings,
                                               plan.reps, server, _log)
            startup = interpreter_startup([sys.executable, "-m", "sruns_stream", "--version"], plan.reps,
                                          {"PYTHONPATH": str(REPO)})
    finally:
        shutil.rmtree(workroot, ignore_errors=True)

    machine["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report.notes = notes + _notes_for(sections_rows, tools)
    if report.left_out:
        report.notes.append("--quick leaves some rows out (listed under each table); the full mode runs them"
                            if plan.quick else "the slowest competitors run on the MiSeq run only (listed under "
                            "each table)")
    report.wall_seconds = time.perf_counter() - started
    args.results_dir.mkdir(parents=True, exist_ok=True)
    report.notes += write_charts(report, args.results_dir, stem)
    drawn, chart_notes = write_scenario_charts(scenarios, report.main, args.results_dir, stem, label)
    report.charts.update(drawn)
    report.notes += chart_notes
    targets = evaluate_targets(report, MISEQ.label, "NovaSeq", MANY_SMALL.label) + scenario_targets(
        scenarios, report.main, report.wall_seconds, plan.quick, median(startup))
    startup_lines = [
        (f"`python -m sruns_stream --version` (interpreter and the CLI's imports, nothing else): median "
        f"{median(startup):.2f} s over {len(startup)} runs ({', '.join(f'{x:.2f}' for x in startup)}). Each "
        "target compares it with every throughput row. The page-cache and share tables also give each "
        "row's time to the first byte of its output: for sruns-stream that is start-up plus the scan of the "
        "whole run folder (the manifest is made before the first byte is streamed), so on a many-files run "
        "it stays a fixed share of the row whatever the run's size."),
    ]
    text = render_markdown(report, targets, render_scenarios(scenarios, report.charts), startup_lines)
    md = args.results_dir / f"{stem}.md"
    md.write_text(text)
    raw = {
        "label": label, "date": today, "command": report.command, "machine": machine,
        "rss_method": probe.description, "reps": plan.reps, "quick": plan.quick,
        "datasets": [{"label": d.spec.label, "kind": d.spec.kind, "size": d.spec.size, "seed": d.spec.seed,
                      "files_requested": d.spec.files, "files": d.files, "raw_bytes": d.raw_bytes,
                      "generator_sha": d.generator_sha} for d in datasets],
        "rows": {section: [r.as_dict() for r in rows] for section, rows in sections_rows.items()},
        "resume": [{"setting": vars(r.setting), "full_seconds": r.full_seconds,
                    "full_archive_bytes": r.full_archive_bytes, "full_crc32c": r.full_crc32c,
                    "attempts": [vars(a) for a in r.attempts], "error": r.error} for r in report.resume],
        "share": [r.as_dict() for r in scenarios.share],
        "streams": {"cap_mb_s": scenarios.streams_cap, "options": scenarios.streams_options,
                    "data": scenarios.streams_data,
                    "rows": [streams.row_as_dict(s) for s in scenarios.streams]},
        "verify": scenarios.verify.as_dict() if scenarios.verify else None,
        "random_access": scenarios.random.as_dict() if scenarios.random else None,
        "access_cost": scenarios.access_cost,
        "scenarios_skipped": scenarios.skipped,
        "startup_s": startup,
        "wall_seconds": report.wall_seconds,
        "targets": [{"target": t.text, "value": t.value, "status": t.status} for t in targets],
        "notes": report.notes,
    }
    (args.results_dir / f"{stem}.json").write_text(json.dumps(raw, indent=1, default=str))
    print(text)
    _log(f"written: {md}" + "".join(f", {args.results_dir / c}" for c in report.charts.values())
         + f", {args.results_dir / (stem + '.json')}")
    return 0


RESUME_SETTINGS = [
    ResumeSetting("local, defaults", "local"),
    # Defaults sync a local archive every 64 MiB: a smaller interval shows the design's bound.
    ResumeSetting("local, --sync-interval 8M", "local", ("--sync-interval", "8M")),
    ResumeSetting("loopback-gs, defaults", "loopback-gs"),
]


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # children and the temporary directory are already cleaned up
        print("interrupted: no results written", file=sys.stderr)
        sys.exit(130)
