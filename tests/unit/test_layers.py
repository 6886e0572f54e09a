"""The package layout keeps data flowing one way (docs/ARCHITECTURE.md).

Every ``import`` of a visionops module (top-level or inside a function) is read from the source
with :mod:`ast`; a module may import its own layer or the layers below it, never above. The
layers, lowest first: the core modules, then data -> train -> evaluate -> export -> registry ->
inference -> serve, then orchestrate and the CLI. No module imports another stage's ``run``
except orchestrate and the CLI, and the module graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "visionops"
CORE = {
    "__init__", "config", "errors", "failpoints", "images", "io", "locks", "offline", "onnxrt",
    "paths", "stats", "tracking",
}  # fmt: skip
LAYERS = [
    "core",
    "data",
    "train",
    "evaluate",
    "export",
    "registry",
    "inference",
    "serve",
    "curate",
    "orchestrate",
    "stack",
    "cli",
]
TOP = {"orchestrate", "cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or (len(parts) == 2 and parts[1] in CORE):
        return "core"
    assert parts[1] in LAYERS, f"{module}: not in any layer; add it to LAYERS or CORE"
    return parts[1]


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """(visionops module imported, names taken from it, line) for every import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [
                (a.name, [], node.lineno) for a in node.names if a.name.startswith("visionops")
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("visionops"):
            names = [a.name for a in node.names]
            submodules = [n for n in names if f"{node.module}.{n}" in MODULES]
            found += [(f"{node.module}.{n}", [], node.lineno) for n in submodules]
            rest = [n for n in names if n not in submodules]
            if rest:
                found.append((node.module, rest, node.lineno))
    return found


def edges() -> list[tuple[str, str, list[str], int]]:
    return [
        (name, target, names, line)
        for name, path in sorted(MODULES.items())
        for target, names, line in imports_of(path)
    ]


def test_every_module_is_in_a_layer() -> None:
    assert {layer_of(m) for m in MODULES} == set(LAYERS)


def test_imports_only_point_down_the_layers() -> None:
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = [
        f"{src} (line {line}) imports {dst}: {layer_of(src)} -> {layer_of(dst)}"
        for src, dst, _, line in edges()
        if rank[layer_of(dst)] > rank[layer_of(src)]
    ]
    assert not upward, "\n".join(upward)


def test_only_orchestrate_and_cli_run_other_stages() -> None:
    calls = [
        f"{src} (line {line}) imports run from {dst}"
        for src, dst, names, line in edges()
        if "run" in names and layer_of(src) not in TOP and layer_of(src) != layer_of(dst)
    ]
    assert not calls, "\n".join(calls)


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for src, dst, _, _ in edges():
        if dst in MODULES and dst != src:
            graph[src].add(dst)
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from visionops.inference import Predictor\n", "visionops.inference"),
        ("def f():\n    from visionops.serve.app import create_app\n", "visionops.serve.app"),
        ("from visionops.data import split\n", "visionops.data.split"),
        ("import visionops.cli\n", "visionops.cli"),
    ],
)
def test_imports_are_found_top_level_and_lazy(tmp_path: Path, source: str, expected: str) -> None:
    path = tmp_path / "m.py"
    path.write_text(source)
    assert [target for target, _, _ in imports_of(path)] == [expected]
