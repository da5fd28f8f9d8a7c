"""The house: every module declares what it exports, and the README's module table
lists every module (a newcomer finds each stage by its file name)."""

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


def test_the_readme_module_table_lists_every_module() -> None:
    text = (REPO / "README.md").read_text()
    table = text[text.index("| module | concern |") :].split("\n\n", 1)[0]
    listed = set(re.findall(r"`(?:sruns_stream/)?([\w/]+\.py|sinks/)`", table))
    for name in MODULES:
        path = name.removeprefix("sruns_stream.").replace(".", "/")
        if path in ("__init__", "readback") or path.startswith("sinks"):
            continue  # the package itself; sinks/ is listed as a folder
        assert f"{path}.py" in listed, f"{path}.py is missing from the README's module table"
    assert "sinks/" in listed
