"""`readback.restore` (and the `extract` it writes with): streaming download → inflate →
safe extraction, each file checked as it lands.

The oracle for a round trip is the input folder itself (helpers.tree: names, types,
bytes, link targets, modes, mtimes). Unsafe archives are crafted with Python's tarfile
(or block by block, for the gzip bomb), and what must not happen is checked on the
filesystem.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from helpers import UMASK_000, child_env, realruns_dir, run_cli, run_in_process, tree
from readback_helpers import (
    MIB,
    RUN_DIR,
    archived,
    header,
    manifest_of,
    odd_novaseq,
    run_measured,
    tar_file,
    write_gz,
)

from sruns_stream.errors import UsageError
from sruns_stream.progress import NoProgress
from sruns_stream.readback import RestoreReport, restore_archive

REALRUNS = realruns_dir()


def _restore(source: str, dest: Path, *, include: list[str] | None = None, force: bool = False) -> RestoreReport:
    return restore_archive(
        source, dest, include=include or [], force=force, journal=None, collection=None, progress=NoProgress()
    )


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir() or p.is_symlink()}


@pytest.fixture
def novaseq(make_run) -> Path:
    return odd_novaseq(make_run)


@pytest.mark.skipif(REALRUNS is None, reason="../shared/realruns (or $SRUNS_REALRUNS) is absent")
@pytest.mark.slow  # every real run piece archived and restored: seconds
@pytest.mark.timeout(60)
def test_realruns_pieces_round_trip(tmp_path: Path) -> None:
    assert REALRUNS is not None
    # Every piece in one folder: one archive and one restore keep the test quick. One
    # level down: a folder whose own folders are runs is refused (a watch directory).
    run = tmp_path / "src" / "REALRUNS_ALL"
    for piece in sorted(p for p in REALRUNS.iterdir() if p.is_dir()):
        shutil.copytree(piece, run / "pieces" / piece.name, symlinks=True)
    archive = archived(run, str(tmp_path / "d"), tmp_path)
    report = _restore(str(archive), tmp_path / "out")
    assert report.ok, report.problems
    assert report.checked == report.files > 0
    assert tree(tmp_path / "out" / run.name) == tree(run)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_generated_run_round_trips_through_gcs_and_a_local_dir(novaseq: Path, gcs, tmp_path: Path) -> None:
    archived(novaseq, f"gs://{gcs.bucket}/p", tmp_path)
    local = archived(novaseq, str(tmp_path / "d"), tmp_path, "--compression", "none", "--force")
    for source, out in (
        (f"gs://{gcs.bucket}/p/{novaseq.name}", tmp_path / "from_gcs"), (str(local), tmp_path / "from_tar")
    ):
        report = _restore(source, out)
        assert report.ok, report.problems
        assert tree(out / novaseq.name) == tree(novaseq)
        assert report.links == 1 and report.files == report.checked
        assert report.summary().startswith("OK: restored ")
        assert not [p for p in out.rglob(".sruns-restore.*")]


@pytest.mark.timeout(60)
def test_include_restores_only_matching_members(novaseq: Path, tmp_path: Path) -> None:
    archive = archived(novaseq, str(tmp_path / "d"), tmp_path)
    name = novaseq.name

    report = _restore(str(archive), tmp_path / "interop", include=[f"{name}/InterOp"])
    assert report.ok, report.problems
    assert os.listdir(tmp_path / "interop") == [name]
    assert os.listdir(tmp_path / "interop" / name) == ["InterOp"]
    assert tree(tmp_path / "interop" / name / "InterOp") == tree(novaseq / "InterOp")
    assert report.excluded > 0

    lane = f"{name}/Data/Intensities/BaseCalls/L001"
    report = _restore(str(archive), tmp_path / "lane", include=["*/Data/Intensities/BaseCalls/L001/*"])
    assert report.ok, report.problems
    restored = {f for f in _files(tmp_path / "lane")}
    assert restored and all(f.startswith(lane + "/") for f in restored)
    assert restored == {f"{name}/{p.relative_to(novaseq)}" for p in (novaseq / lane.split("/", 1)[1]).rglob("*")
                        if p.is_file()}

    report = _restore(str(archive), tmp_path / "typo", include=["InterOp"])
    assert not report.ok and report.files == 0
    assert "--include 'InterOp' matched no member" in report.problems[0]
    assert _files(tmp_path / "typo") == set()


def _add(tf: tarfile.TarFile, name: str, *, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 1704067200
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("no_outside_links", [False, True])
@pytest.mark.timeout(30)
def test_crafted_archive_cannot_write_outside_dest(tmp_path: Path, no_outside_links: bool) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("keep me")
    dest = tmp_path / "dest"
    (dest / "run").mkdir(parents=True)
    # A DEST that already holds a symlink pointing out: writing through it is refused too.
    os.symlink(outside, dest / "run" / "hatch")
    before = {str(p) for p in tmp_path.rglob("*")}
    crafted = tmp_path / "evil" / "evil.tar.gz"
    crafted.parent.mkdir()
    with tarfile.open(crafted, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "run", kind=tarfile.DIRTYPE)
        _add(tf, "run/good.txt", data=b"fine")
        _add(tf, "../escape", data=b"dot-dot")
        _add(tf, "run/../../escape2", data=b"dot-dot")
        _add(tf, str(outside / "abs.txt"), data=b"absolute")
        _add(tf, "run/link_out", kind=tarfile.SYMTYPE, link="../../outside")
        _add(tf, "run/link_abs", kind=tarfile.SYMTYPE, link=str(outside))
        _add(tf, "run/hard_out", kind=tarfile.LNKTYPE, link=os.path.relpath(outside / "secret.txt", dest))
        _add(tf, "run/link_out/planted.txt", data=b"through a link from the archive")
        _add(tf, "run/hatch/planted.txt", data=b"through DEST's own link")
        _add(tf, "run/dev", kind=tarfile.CHRTYPE)
        _add(tf, "run/fifo", kind=tarfile.FIFOTYPE)
        _add(tf, "run/link_in", kind=tarfile.SYMTYPE, link="good.txt")
        _add(tf, "run/dangling", kind=tarfile.SYMTYPE, link="nowhere")  # inside DEST: allowed
        _add(tf, "run/dangling/x.txt", data=b"through a dangling link")

    report = restore_archive(str(crafted), dest, include=[], force=False, journal=None, collection=None,
                             progress=NoProgress(), no_outside_links=no_outside_links)

    assert not report.ok
    assert {str(p) for p in tmp_path.rglob("*") if not str(p).startswith(str(dest))} == {
        p for p in before if not p.startswith(str(dest))
    } | {str(crafted.parent), str(crafted)}
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "keep me" and os.stat(outside / "secret.txt").st_nlink == 1
    assert not (tmp_path / "escape").exists() and not (tmp_path / "escape2").exists()
    assert (dest / "run" / "good.txt").read_bytes() == b"fine"
    assert os.readlink(dest / "run" / "link_in") == "good.txt"
    assert not (dest / "run" / "dev").exists() and not (dest / "run" / "fifo").exists()
    refusals = [
        ("../escape", "'..' component"),
        ("run/../../escape2", "'..' component"),
        (str(outside / "abs.txt"), "absolute path"),
        ("run/hard_out", "'..' component"),
        ("run/link_out/planted.txt", "it is below run/link_out, a symlink in the archive"),
        ("run/hatch/planted.txt",
         f"it is below run/hatch, a symlink to {str(outside)!r} in {dest}: links are not followed"),
        ("run/dev", "device files and fifos are never restored"),
        ("run/fifo", "device files and fifos are never restored"),
        ("run/dangling/x.txt", "it is below run/dangling, a symlink in the archive"),
    ]
    if no_outside_links:
        # Refused, and removed once every link existed.
        refusals += [("run/link_out", "which resolves outside"), ("run/link_abs", "absolute path")]
        assert not os.path.lexists(dest / "run" / "link_out") and not os.path.lexists(dest / "run" / "link_abs")
    else:
        # Links are data: restored as archived, pointing where they pointed.
        assert os.readlink(dest / "run" / "link_out") == "../../outside"
        assert os.readlink(dest / "run" / "link_abs") == str(outside)
    text = "\n".join(report.problems)
    for name, why in refusals:
        assert any(p.startswith(f"refused {name}: ") and why in p for p in report.problems), (name, text)
    assert report.refused == len(refusals), text
    assert os.readlink(dest / "run" / "dangling") == "nowhere" and not (dest / "run" / "nowhere").exists()


@pytest.mark.timeout(60)
def test_existing_files_need_force(novaseq: Path, tmp_path: Path) -> None:
    archive = archived(novaseq, str(tmp_path / "d"), tmp_path)
    out = tmp_path / "out"
    assert _restore(str(archive), out).ok
    runinfo = out / novaseq.name / "RunInfo.xml"
    runinfo.write_text("edited after the restore")
    with pytest.raises(UsageError, match=r"of the files to restore already exist, e\.g\. .*: add --force"):
        _restore(str(archive), out)
    assert runinfo.read_text() == "edited after the restore"  # refused before anything was written
    report = _restore(str(archive), out, force=True)
    assert report.ok, report.problems
    assert tree(out / novaseq.name) == tree(novaseq)


@pytest.mark.timeout(60)
def test_a_file_that_does_not_match_the_manifest_is_removed(novaseq: Path, tmp_path: Path) -> None:
    archive = archived(novaseq, str(tmp_path / "d"), tmp_path)
    manifest = archive.with_name(f"{novaseq.name}.manifest.tsv")
    member = f"{novaseq.name}/RunInfo.xml"
    lines = manifest.read_text(errors="surrogateescape").splitlines(keepends=True)
    cols = next(line for line in lines if line.startswith(member + "\t")).split("\t")
    wrong = "\t".join([*cols[:2], "deadbeef", *cols[3:]])
    edited = "".join(wrong if line.startswith(member + "\t") else line for line in lines)
    manifest.write_text(edited, errors="surrogateescape")

    report = _restore(str(archive), tmp_path / "out")
    assert not report.ok and report.failed == 1
    assert report.problems == [
        f"{member}: crc32c {cols[2]} in the archive, deadbeef in the manifest: removed, not restored"
    ]
    assert not (tmp_path / "out" / member).exists()
    expected = tree(novaseq)
    del expected["RunInfo.xml"]
    assert tree(tmp_path / "out" / novaseq.name) == expected


# --- the CLI (the lead wires `restore` into cli.py) --------------------------------------


@pytest.mark.slow  # three restores of a NovaSeq-style archive
@pytest.mark.timeout(60)
def test_cli_restore_round_trip_include_and_force(novaseq: Path, tmp_path: Path) -> None:
    archive = archived(novaseq, str(tmp_path / "d"), tmp_path)
    out = tmp_path / "out"
    proc = run_in_process("restore", str(archive), str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK: restored ")
    assert tree(out / novaseq.name) == tree(novaseq)

    again = run_in_process("restore", str(archive), str(out), cwd=tmp_path)
    assert again.returncode == 2 and "add --force" in again.stderr
    assert run_in_process("restore", str(archive), str(out), "--force", cwd=tmp_path).returncode == 0

    part = tmp_path / "part"
    proc = run_in_process("restore", novaseq.name, str(part), "--include", f"{novaseq.name}/InterOp",
                          "--journal", str(tmp_path / "sruns.db"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (part / novaseq.name).iterdir()) == ["InterOp"]

    typo = run_in_process("restore", str(archive), str(tmp_path / "typo"), "--include", "nothing/*", cwd=tmp_path)
    assert typo.returncode == 1 and "matched no member" in typo.stdout + typo.stderr


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigterm_stops_a_restore_cleanly_and_what_it_wrote_is_whole(make_run, tmp_path: Path) -> None:
    """A signal mid-restore: exit 130 with one line, no temp file left behind, and every
    file already under its name is complete (it was checked before it was renamed)."""
    import signal
    import time

    run = make_run("hiseq", 24 << 20, seed=9, files=8000)
    archive = archived(run, str(tmp_path / "a"), tmp_path)
    dest = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "sruns_stream", "restore", str(archive), str(dest)],
                            env=child_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if dest.exists() and sum(1 for _ in dest.rglob("*.bcl*")) > 200:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the restore ended before the signal"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("sruns-stream: interrupted; the files restored so far")
    restored = [p for p in dest.rglob("*") if p.is_file() and not p.is_symlink()]
    assert not [p for p in restored if p.name.startswith(".sruns-restore.")]
    assert len(restored) < sum(1 for p in run.rglob("*") if p.is_file())  # it did stop early
    for p in restored:
        assert p.read_bytes() == (run.parent / p.relative_to(dest)).read_bytes(), p


# --- links are data; nothing is written through one ------------------------------------------


def _one_line(proc: Any) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    return str(lines[0])


@pytest.mark.timeout(60)
def test_links_pointing_out_of_dest_are_restored_as_archived(make_run, tmp_path: Path) -> None:
    """Our own archive of a run whose links point at /etc/hostname and out of the run
    folder restores exactly (links are data); --no-outside-links refuses and removes them."""
    run = make_run("miseq", 1 << 20, seed=4)
    os.symlink("/etc/hostname", run / "link_abs")
    os.symlink("../../elsewhere/x", run / "link_up")
    os.symlink("RunInfo.xml", run / "link_in")
    archive = archived(run, str(tmp_path / "d"), tmp_path)

    out = tmp_path / "out"
    proc = run_in_process("restore", str(archive), str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _one_line(proc).startswith("OK: restored ")
    assert tree(out / run.name) == tree(run)

    strict = tmp_path / "strict"
    proc = run_in_process("restore", str(archive), str(strict), "--no-outside-links", "--json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(_one_line(proc))
    assert report["refused"] == 2 and report["problem_count"] == 2, report
    assert set(report["problems"]) == {
        (f"refused {run.name}/link_abs: it is a symlink to the absolute path '/etc/hostname': "
         "removed (--no-outside-links)"),
        (f"refused {run.name}/link_up: it is a symlink to '../../elsewhere/x', which resolves outside {strict}: "
         "removed (--no-outside-links)"),
    }
    expected = tree(run)
    del expected["link_abs"], expected["link_up"]
    assert tree(strict / run.name) == expected


def _crafted(path: Path, members: list[tuple[str, bytes, str]]) -> Path:
    """A .tar.gz of (name, tar type, link target or data) members, in this order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, extra in members:
            if kind == tarfile.REGTYPE:
                _add(tf, name, data=extra.encode())
            else:
                _add(tf, name, kind=kind, link=extra)
    return path


SYM, DIR, REG = tarfile.SYMTYPE, tarfile.DIRTYPE, tarfile.REGTYPE
# Links that re-target earlier ones, then files below them: (members, the links as they
# must stand afterwards, the refusals expected).
RETARGETS = {
    "a link replaced by one pointing out": (
        [("run", DIR, ""), ("run/sub", DIR, ""), ("run/a", SYM, "sub"), ("run/a", SYM, "../../outside"),
         ("run/a/planted.txt", REG, "x")],
        {"run/a": "../../outside"},
        ["run/a/planted.txt"],
    ),
    "the link's target made a link out": (
        [("run", DIR, ""), ("run/a", SYM, "sub"), ("run/sub", SYM, "OUTSIDE"), ("run/a/planted.txt", REG, "x"),
         ("run/sub/planted.txt", REG, "x")],
        {"run/a": "sub", "run/sub": "OUTSIDE"},
        ["run/a/planted.txt", "run/sub/planted.txt"],
    ),
    "a chain that leaves DEST only once complete": (
        [("run", DIR, ""), ("run/a", SYM, "d/../.."), ("run/d", SYM, "."), ("run/a/planted.txt", REG, "x")],
        {"run/a": "d/../..", "run/d": "."},
        ["run/a/planted.txt"],
    ),
}


@pytest.mark.parametrize("case", sorted(RETARGETS))
@pytest.mark.timeout(60)
def test_no_link_lets_a_later_member_write_outside_dest(case: str, tmp_path: Path) -> None:
    members, links, refused = RETARGETS[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    members = [(n, k, str(outside) if e == "OUTSIDE" else e) for n, k, e in members]
    archive = _crafted(tmp_path / "evil" / "run.tar.gz", members)
    dest = tmp_path / "dest"
    proc = run_in_process("restore", str(archive), str(dest), "--force", "--json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(_one_line(proc))
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "planted.txt").exists()
    for name, target in links.items():
        assert os.readlink(dest / name) == target.replace("OUTSIDE", str(outside))
    for name in refused:
        parent = name.rsplit("/", 1)[0]
        assert f"refused {name}: it is below {parent}, a symlink in the archive: nothing is written through a link" \
            in report["problems"], report["problems"]
    assert report["refused"] == len(refused), report["problems"]


@pytest.mark.timeout(60)
def test_a_link_planted_in_dest_is_never_followed(tmp_path: Path) -> None:
    """DEST/run -> somewhere else, and an archive of run/: nothing lands in "somewhere".
    Only --force replaces the link itself, with a real directory."""
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = _crafted(tmp_path / "a" / "run.tar.gz", [("run", DIR, ""), ("run/f.txt", REG, "x"),
                                                     ("run/l", SYM, "f.txt")])
    for extra in ([], ["--force", "--include", "run/f.txt"]):
        dest = tmp_path / ("dest" + "".join(extra).replace("/", "_"))
        dest.mkdir()
        os.symlink(outside, dest / "run")
        proc = run_in_process("restore", str(archive), str(dest), "--json", *extra, cwd=tmp_path)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        report = json.loads(_one_line(proc))
        assert list(outside.iterdir()) == []
        assert os.readlink(dest / "run") == str(outside)
        why = f"it is below run, a symlink to {str(outside)!r} in {dest}: links are not followed"
        expected = [f"refused run/f.txt: {why}"]
        if not extra:
            expected = [f"{dest / 'run'} already exists and is not a directory: not replaced (use --force)",
                        *expected, f"refused run/l: {why}"]
        assert report["problems"] == expected


@pytest.mark.timeout(60)
def test_no_outside_links_judges_chains_once_every_link_exists(tmp_path: Path) -> None:
    """a -> b -> out: b is refused for pointing out, and a too, though it names b. c -> d/../..
    resolves inside DEST while d does not exist, and outside once d -> . does."""
    archive = _crafted(tmp_path / "a" / "run.tar.gz", [
        ("run", DIR, ""), ("run/sub", DIR, ""), ("run/sub/file", REG, "data"),
        ("run/a", SYM, "b"), ("run/b", SYM, "../../outside"),
        ("run/c", SYM, "d/../.."), ("run/d", SYM, "."), ("run/ok", SYM, "sub/file"), ("run/up", SYM, "../run/sub"),
    ])
    dest = tmp_path / "dest"
    proc = run_in_process("restore", str(archive), str(dest), "--no-outside-links", "--json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(_one_line(proc))
    refused = sorted(p.split(":", 1)[0] for p in report["problems"])
    assert refused == ["refused run/a", "refused run/b", "refused run/c"], report["problems"]
    assert all(p.endswith("removed (--no-outside-links)") for p in report["problems"])
    assert sorted(os.listdir(dest / "run")) == ["d", "ok", "sub", "up"]
    assert (dest / "run" / "ok").read_bytes() == b"data"
    assert report["links"] == 3


@pytest.mark.timeout(60)
def test_a_name_component_over_name_max_is_refused_by_name(tmp_path: Path) -> None:
    long = "n" * 300
    archive = _crafted(tmp_path / "a" / "run.tar.gz", [("run", DIR, ""), (f"run/{long}/f.txt", REG, "x"),
                                                     ("run/ok.txt", REG, "fine")])
    dest = tmp_path / "dest"
    proc = run_in_process("restore", str(archive), str(dest), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = _one_line(proc)
    assert f"; first: refused run/{long}/f.txt: it has a name component of 300 bytes ({'n' * 40}…), longer than " \
        f"the 255 bytes (NAME_MAX) the file system under {dest} allows" in line, line
    assert "permission" not in line + proc.stderr
    assert (dest / "run" / "ok.txt").read_bytes() == b"fine"


def _read_deep(root: Path, rel: str) -> tuple[bytes, str]:
    """A file's bytes and its sibling link's target, found one directory fd at a time (a
    path longer than PATH_MAX cannot be opened whole)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in rel.split("/"):
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        f = os.open("f.txt", os.O_RDONLY, dir_fd=fd)
        try:
            data = os.read(f, 100)
        finally:
            os.close(f)
        return data, os.readlink("l", dir_fd=fd)
    finally:
        os.close(fd)


@pytest.mark.timeout(60)
def test_paths_longer_than_path_max_restore(tmp_path: Path) -> None:
    deep = "/".join(f"{i:02d}" + "d" * 200 for i in range(24))  # ~4.9 KB, over PATH_MAX (4096)
    archive = _crafted(tmp_path / "a" / "run.tar.gz", [("run", DIR, ""), (f"run/{deep}/f.txt", REG, "at the bottom"),
                                                     (f"run/{deep}/l", SYM, "f.txt")])
    dest = tmp_path / "dest"
    proc = run_in_process("restore", str(archive), str(dest), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _read_deep(dest, f"run/{deep}") == (b"at the bottom", "f.txt")


# --- a gzip bomb against a small manifest row ------------------------------------------------


@pytest.mark.slow  # 256 MiB inflated in a real process (its file size limit is the point)
@pytest.mark.timeout(120)
def test_a_member_bigger_than_its_manifest_row_is_refused_before_a_byte_is_written(tmp_path: Path) -> None:
    """A gzip bomb: 256 MiB of zeros where the manifest says 10 bytes. Restore skips the
    member's data without writing it (the process may not write a file over 4 MiB), and
    the members after it are restored and checked."""
    size = 256 * MIB
    after = b"after the bomb"

    def pieces() -> Iterable[bytes]:
        yield RUN_DIR + header("run/bomb.bin", size=size)
        zeros = b"\0" * MIB
        for _ in range(size // MIB):
            yield zeros
        yield tar_file("run/typed", b"a file where the manifest has a directory")
        yield tar_file("run/after.txt", after)

    archive = write_gz(tmp_path / "a" / "run.tar.gz", pieces())
    archive.with_name("run.manifest.tsv").write_bytes(manifest_of([
        ("run", 0, None, "d", 0o755, ""),
        ("run/bomb.bin", 10, b"0123456789", "f", 0o644, ""),
        ("run/typed", 0, None, "d", 0o755, ""),
        ("run/after.txt", len(after), after, "f", 0o644, ""),
    ]))
    dest = tmp_path / "dest"
    code, out, err, _ = run_measured("restore", str(archive), str(dest), "--json", cwd=tmp_path, fsize=4 * MIB)
    assert code == 1, (code, out, err)
    assert "Traceback" not in err
    import json

    report = json.loads(out)
    assert report["failed"] == 2 and report["files"] == 1 and report["checked"] == 1, report
    assert f"run/bomb.bin: {size} bytes in the archive, 10 in the manifest: not restored" in report["problems"]
    assert any(
        p.startswith("run/typed: a file in the archive, a directory in the manifest") for p in report["problems"]
    )
    assert sorted(os.listdir(dest / "run")) == ["after.txt"]
    assert (dest / "run" / "after.txt").read_bytes() == after


@pytest.mark.timeout(120)
def test_dest_and_the_parents_restore_makes_are_0755_under_umask_000(make_run, tmp_path: Path) -> None:
    run = make_run("miseq", 1 << 20)
    archive = archived(run, str(tmp_path / "d"), tmp_path)
    out = tmp_path / "new" / "deeper" / "out"
    # --include: the members above InterOp's files are never read, so restore makes them itself.
    proc = run_cli("restore", str(archive), str(out), "--include", f"{run.name}/InterOp/*", cwd=tmp_path,
                   prefix=UMASK_000)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (out / run.name / "InterOp").iterdir()) == sorted(
        p.name for p in (run / "InterOp").iterdir()
    )
    made = [tmp_path / "new", tmp_path / "new" / "deeper", out]
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in made}
    assert modes == {str(p.relative_to(tmp_path)): "0o755" for p in made}
    # Below DEST: the archive's modes, or 0755 where it was not read; never writable by all.
    for p in [out / run.name, *(out / run.name).rglob("*")]:
        if p.is_dir():
            assert stat.S_IMODE(p.stat().st_mode) & 0o022 == 0, (p, oct(p.stat().st_mode))


@pytest.mark.timeout(120)
def test_a_sparse_file_is_restored_sparse(make_run, tmp_path: Path) -> None:
    """A 64 MiB file of zeros but for a few bytes: restored byte for byte, in holes."""
    run = make_run("miseq", 1 << 20)
    sparse = run / "Data" / "sparse.bin"
    size = 64 * MIB
    with sparse.open("wb") as f:
        for offset in (0, 5 * MIB + 3, 40 * MIB - 1, size - 2):  # not block-aligned: their blocks are data
            f.seek(offset)
            f.write(b"\x01")
        f.truncate(size)
    archive = archived(run, str(tmp_path / "d"), tmp_path)
    out = tmp_path / "out"
    proc = run_in_process("restore", str(archive), str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    restored = out / run.name / "Data" / "sparse.bin"
    assert restored.read_bytes() == sparse.read_bytes()
    assert restored.stat().st_blocks * 512 <= 1 * MIB, restored.stat().st_blocks * 512
    assert tree(out / run.name) == tree(run)
