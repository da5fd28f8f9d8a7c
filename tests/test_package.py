"""The house: every module declares what it exports, the README's module table follows
the package's folders (a newcomer finds each stage by its folder and file name), and no
folder imports from one that comes after it."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

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


# The folders in the order they may import each other: each from those before it, and
# all from the shared modules at the top. config.py validates with three leaves of the
# folders (exclude patterns, places, price regions), which import nothing but errors.
LAYERS = ("runfolder", "storage", "state", "archiver", "readback", "daemon")
SHARED_MAY_USE = {"sruns_stream.runfolder.exclude", "sruns_stream.storage.layout", "sruns_stream.storage.prices"}


def _imports(name: str) -> set[str]:
    """The package's modules that module ``name`` imports (anywhere in it, lazily too)."""
    module = importlib.import_module(name)
    path = Path(module.__file__ or "")
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    # Imports for the type checker only (``if TYPE_CHECKING:``) make no runtime edge.
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                   for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.startswith("sruns_stream.") and m in MODULES}


def _layer(module: str) -> int | None:
    """The folder's place in LAYERS; None for the shared modules at the top."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) >= 2 and parts[1] in LAYERS else None


def test_no_folder_imports_from_a_later_one_and_no_module_cycles() -> None:
    graph = {name: _imports(name) for name in MODULES if name != "sruns_stream"}
    upward = []
    for name, deps in graph.items():
        mine = _layer(name)
        for dep in deps:
            theirs = _layer(dep)
            if theirs is None:
                continue
            if mine is None:
                if name not in ("sruns_stream.cli",) and dep not in SHARED_MAY_USE:
                    upward.append(f"{name} -> {dep}")
            elif theirs > mine:
                upward.append(f"{name} -> {dep}")
    assert not upward, "imports against the folders' order:\n" + "\n".join(sorted(upward))
    # No cycles between modules (a package's __init__ importing its own modules aside).
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            if dep == node or node.startswith(dep + "."):
                continue
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
