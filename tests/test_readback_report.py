"""`readback.report`: one base for what verify and restore report, each adding its own
fields; the --json keys and the one-line summaries are the CLI's contract."""

from __future__ import annotations

from sruns_stream.readback import RestoreReport, VerifyReport
from sruns_stream.readback.report import MAX_PROBLEMS, Problems

COMMON = {
    "source", "manifest", "ok", "members", "files", "data_bytes", "archive_bytes", "damaged", "reconnects",
    "seconds", "problem_count", "problems", "crc32c", "crc32c_base64",
}


def test_each_report_has_the_common_fields_and_only_its_own_besides() -> None:
    verify = VerifyReport(source="gs://b/RUN/RUN.tar.gz", manifest=None, against="/runs/RUN")
    assert set(verify.as_dict()) == COMMON | {
        "against", "exclude", "matched", "mismatched", "missing", "extra", "disk_mismatched", "disk_extra",
    }
    restore = RestoreReport(source="/a/RUN.tar.gz", manifest=None, dest="/out")
    assert set(restore.as_dict()) == COMMON | {
        "dest", "dirs", "links", "checked", "excluded", "refused", "failed", "existing", "missing", "ranges",
    }


def test_summaries_say_ok_or_count_the_problems_and_show_the_first() -> None:
    verify = VerifyReport(source="s", manifest="m", ok=True, members=3, files=2, data_bytes=0)
    assert verify.summary() == "OK: s: 3 members (2 files, 0 B) match m"
    verify = VerifyReport(source="s", manifest="m", problem_count=1, problems=["x: bad"])
    assert verify.summary() == "FAILED: s: 1 problem; first: x: bad"
    restore = RestoreReport(source="s", manifest=None, dest="d", problem_count=2, problems=["y: bad", "z"])
    assert restore.summary() == "FAILED: s -> d: 2 problems; first: y: bad\n  - z"
    restore.ok = True
    assert restore.summary() == (
        "OK: restored 0 files, 0 directories, 0 links (0 B) from s into d; unchecked: no manifest"
    )


def test_problems_keep_the_first_ones_and_count_them_all() -> None:
    problems = Problems()
    for i in range(MAX_PROBLEMS + 5):
        problems.add(f"p{i}")
    problems.first("damaged archive: it ends early")
    assert problems.count == MAX_PROBLEMS + 6
    assert len(problems.items) == MAX_PROBLEMS
    assert problems.items[0] == "damaged archive: it ends early" and problems.items[1] == "p0"
