"""The house: every module declares what it exports, the README's module table follows
the package's folders (a newcomer finds each stage by its folder and file name), and no
folder imports from one that comes after it."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest
from helpers import REPO

import sruns_stream

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(sruns_stream.__path__, "sruns_stream.") if not m.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_each_module_says_what_it_exports_and_exports_it(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert module.__doc__, f"{name} has no docstring saying what it does"
    for member in exported:
        assert hasattr(module, member), f"{name}.__all__ names {member!r}, which it does not define"


def test_the_readme_module_table_follows_the_folders() -> None:
    """Each folder of the package has its row, and each module is listed under its own
    folder's row: the table reads as the tree does."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("| module | concern |") :].split("\n\n", 1)[0]
    folder = ""
    listed: dict[str, set[str]] = {}
    for row in table.splitlines()[2:]:
        first = row.split("|")[1]
        names = re.findall(r"`([\w/]+(?:\.py|/))`", first)
        if len(names) == 1 and names[0].startswith("sruns_stream/") and names[0].endswith("/"):
            folder = names[0].removeprefix("sruns_stream/")
            listed.setdefault(folder, set())
            continue
        for name in names:
            listed.setdefault(folder, set()).add(name)
    packages = {m.removeprefix("sruns_stream.").replace(".", "/") + "/" for m in MODULES
                if (REPO / m.replace(".", "/") / "__init__.py").exists() and m != "sruns_stream"}
    top = {p.split("/")[0] + "/" for p in packages}
    assert top <= set(listed), f"folders without a row of their own: {sorted(top - set(listed))}"
    for name in MODULES:
        path = name.removeprefix("sruns_stream").removeprefix(".").replace(".", "/")
        if not path or f"{path}/" in packages:
            continue  # a package: its folder's row says what it is
        parts = path.split("/")
        here = "" if len(parts) == 1 else parts[0] + "/"
        names = listed.get(here, set())
        short = parts[-1] + ".py"
        rel = "/".join(parts) + ".py"
        sub = "/".join(parts[:-1]) + "/"
        assert rel in names or short in names or sub in names, (
            f"{rel} is not listed under sruns_stream/{here} in the README's module table")
