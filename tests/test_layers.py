"""The imports run one way (README, "Layout"): the engine imports nothing of
the rest but the leaf modules (errors, config, node); storage and network
import the engine and the leaves, never the runtime nor the tools; the
runtime imports the engine and only the storage and network *contracts*
(storage.base, network.base); kv, embed, the command line, the benchmarks
and testing import anything.

Every module of the installed package is read (ast for .py files; the
compiled modules' .pyx/.pxd sources in this checkout, by a regex over their
import lines), every import is resolved to a raftcore module, and each edge
is checked against the layer rules. Imports inside functions and under
TYPE_CHECKING count: they are dependencies all the same.
"""
from __future__ import annotations

import ast
import pathlib
import re

import pytest

import raftcore

PACKAGE = pathlib.Path(raftcore.__file__).resolve().parent
ROOT = pathlib.Path(__file__).resolve().parent.parent

#: The engine: pure, compiled, every module whose source is in raftcore/.
ENGINE = {path.stem for path in (ROOT / "raftcore").glob("*.pyx")}
#: Leaf modules any layer may import (they import nothing of raftcore).
LEAVES = {"errors", "config", "node"}
#: The contracts the runtime programs against.
CONTRACTS = {"storage.base", "network.base"}
#: Tools and applications (and bench*): they may import anything.
TOOLS = {"kv", "cli", "testing", "embed"}
#: What each layer may import besides itself, the engine and the leaves.
ALLOWED = {
    "engine": set(),
    "storage": set(),
    "network": set(),
    "runtime": CONTRACTS,
}


def layer(module: str) -> str:
    """The layer of a module named relative to the package ("storage.file")."""
    top = module.split(".")[0]
    if module in LEAVES:
        return "leaf"
    if module in ENGINE:
        return "engine"
    if top in ("storage", "network"):
        return top
    if top in TOOLS or top.startswith("bench") or module == "":
        return "tools"          # "": the package's __init__, which exports everything
    return "runtime"        # core, raft, member_changes, model and what splits from core


def may_import(importer: str, imported: str) -> bool:
    src, dst = layer(importer), layer(imported)
    if src == "tools" or dst == "leaf" or src == dst:
        return True
    if src == "engine":
        return False
    if dst == "engine":
        return True
    return imported in ALLOWED[src]


# ------------------------------------------------------------ reading imports

def _module_name(path: pathlib.Path, base: pathlib.Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(name: str) -> str:
    """`name` (a dotted path below raftcore) as the module it lands on: a
    name imported from a package that is not a submodule is the package."""
    parts = name.split(".")
    while parts:
        candidate = PACKAGE.joinpath(*parts)
        # A module: a package folder, or foo.py / foo.pyi / foo.cpython-311-....so
        if candidate.is_dir() or any(p.name.split(".")[0] == candidate.name
                                     for p in candidate.parent.glob(candidate.name + ".*")):
            return ".".join(parts)
        parts.pop()
    return ""


def _py_imports(path: pathlib.Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(["raftcore", *package[:len(package) - node.level + 1]])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {_resolve(n[len("raftcore."):]) for n in names if n.startswith("raftcore.")}
    return out


_CYTHON_IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+(raftcore(?:\.\w+)*)[ \t]+c?import[ \t]+(\([^)]*\)|[\w \t,]*)"
    r"|c?import[ \t]+(raftcore(?:\.\w+)*))", re.M)


def _cython_imports(path: pathlib.Path) -> set[str]:
    out = set()
    for m in _CYTHON_IMPORT.finditer(path.read_text()):
        if m.group(3):
            out.add(_resolve(m.group(3)[len("raftcore."):]))
            continue
        base = m.group(1)[len("raftcore."):]
        # "X as Y" names module X.
        names = [n for n in re.split(r"[\s,()]+", re.sub(r"\bas\s+\w+", "", m.group(2))) if n]
        for n in names or [""]:
            out.add(_resolve(f"{base}.{n}" if base else n))
    return out


def _cython_sources() -> dict[str, pathlib.Path]:
    """Module name -> .pyx/.pxd source in this checkout (raftcore/ holds the
    engine, python/ the rest of the package)."""
    out = {}
    for base in (ROOT / "raftcore", ROOT / "python"):
        for path in sorted([*base.rglob("*.pyx"), *base.rglob("*.pxd")]):
            out[_module_name(path, base) + path.suffix] = path
    return out


def import_edges() -> list[tuple[str, str, str]]:
    """(importer, imported, where) for every import of a raftcore module by
    a module of the package."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path, PACKAGE)
        for imported in _py_imports(path, module):
            edges.append((module, imported, str(path.relative_to(PACKAGE.parent))))
    for name, path in _cython_sources().items():
        module = name.rsplit(".", 1)[0]
        for imported in _cython_imports(path):
            edges.append((module, imported, str(path.relative_to(ROOT))))
    return [(a, b, w) for a, b, w in edges if a != b]


# ---------------------------------------------------------------------- tests

def test_every_import_runs_the_way_the_layers_allow():
    wrong = sorted(f"{where}: {layer(a)} module raftcore.{a} imports {layer(b)} raftcore.{b}"
                   for a, b, where in import_edges() if not may_import(a, b))
    assert not wrong, "imports against the layering (README, Layout):\n" + "\n".join(wrong)


def test_the_reader_sees_the_imports_the_rules_are_about():
    # The check above would pass vacuously if the reader found nothing: the
    # compiled engine's cimports, the runtime's use of the engine, and each
    # layer's use of the one below are known to exist.
    edges = {(a, b) for a, b, _ in import_edges()}
    for edge in [("engine", "log"), ("engine", "errors"), ("core", "engine"),
                 ("raft", "core"), ("identity", "storage.base")]:
        assert edge in edges, f"raftcore.{edge[0]} -> raftcore.{edge[1]} not found"
    layers = {(layer(a), layer(b)) for a, b in edges}
    for pair in [("storage", "engine"), ("network", "engine"), ("runtime", "engine"),
                 ("tools", "runtime"), ("tools", "network"), ("tools", "storage")]:
        assert pair in layers, f"no {pair[0]} module imports a {pair[1]} module"


@pytest.mark.parametrize("importer, imported, allowed", [
    ("engine", "errors", True),
    ("engine", "engine_election", True),
    ("engine", "commands", True),
    ("codec", "node", True),
    ("codec", "model", False),
    ("engine", "core", False),
    ("log", "storage.base", False),
    ("storage.file", "messages", True),
    ("storage.file", "config", True),
    ("storage.mem", "raft", False),
    ("network.tcp", "core", False),
    ("network.tcp", "storage.base", False),
    ("network.local", "kv", False),
    ("core", "storage.base", True),
    ("core", "network.base", True),
    ("core", "network.tcp", False),
    ("raft", "storage.mem", False),
    ("member_changes", "membership", True),
    ("kv", "network.tcp", True),
    ("testing.sim.cluster", "raft", True),
    ("cli", "kv", True),
    ("bench_node", "storage.file", True),
])
def test_the_rules(importer, imported, allowed):
    assert may_import(importer, imported) is allowed
