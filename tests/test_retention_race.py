"""The sweep race: a file written into a moved run folder while the daemon makes sure
its archive is intact is never deleted.

The deletion helper on its own, with real files: it removes only what a walk listed.
"""

from __future__ import annotations

import os
from pathlib import Path

from helpers import tree

from sruns_stream.runfolder import scan_run_folder
from sruns_stream.safefs import Listed, remove_listed


def test_remove_listed_removes_only_what_is_still_as_listed_and_follows_no_link(tmp_path: Path) -> None:
    """The deletion on its own: a link planted where a listed directory was is not
    entered (what it points to survives), a file changed in place (same inode, new size)
    survives, and new entries survive with their directories."""
    run = tmp_path / "run"
    (run / "Data" / "Lane1").mkdir(parents=True)
    (run / "Logs").mkdir()
    for rel in ("RunInfo.xml", "Data/Lane1/a.bcl", "Data/Lane1/b.bcl", "Logs/x.log", "Logs/y.log"):
        (run / rel).write_bytes(rel.encode())
    os.symlink("RunInfo.xml", run / "link")
    walk = scan_run_folder(run)
    listed = [Listed(e.rel, e.kind, e.ino, e.size, e.mtime_ns) for e in walk.entries]

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.log").write_bytes(b"not the run's")
    os.rename(run / "Logs", tmp_path / "Logs.moved-away")
    os.symlink(outside, run / "Logs")  # where a listed directory was
    with open(run / "Data" / "Lane1" / "b.bcl", "ab") as f:
        f.write(b"more")  # changed in place
    (run / "Data" / "Lane1" / "c.bcl").write_bytes(b"new")

    left = remove_listed(run, listed)
    assert sorted(left) == [b"Data/Lane1/b.bcl", b"Data/Lane1/c.bcl", b"Logs", b"Logs/x.log", b"Logs/y.log"]
    assert (outside / "x.log").read_bytes() == b"not the run's"
    assert sorted(tree(run)) == ["Data", "Data/Lane1", "Data/Lane1/b.bcl", "Data/Lane1/c.bcl", "Logs"]
    assert sorted(tree(tmp_path / "Logs.moved-away")) == ["x.log", "y.log"]

    # Once nothing unlisted is left, the folder goes too.
    os.unlink(run / "Logs")
    for rel in ("Data/Lane1/b.bcl", "Data/Lane1/c.bcl"):
        os.unlink(run / rel)
    assert remove_listed(run, listed) == []
    assert not run.exists()
