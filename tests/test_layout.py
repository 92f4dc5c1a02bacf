"""The layout by concern (DESIGN.md §3): imports point down only, no import cycles, `channel/`
does no I/O, and every module says what it owns. Walks the package's imports with ast."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "condasync"

# Higher layers may import lower ones, never the other way round. Two packages on one layer
# (channel, storage) may not import each other either.
LAYERS = {
    "condasync": 0,
    "condasync.models": 0,
    "condasync.errors": 0,
    "condasync.channel": 1,
    "condasync.storage": 1,
    "condasync.engine": 2,
    "condasync.serve": 3,
    "condasync.cli": 4,
    "condasync.config": 4,
    "condasync.display": 4,
    "condasync.mirror_options": 4,
    "condasync.__main__": 4,
}
NO_IO_IN_CHANNEL = ("os", "asyncio", "httpx", "aiohttp", "rich", "obstore", "socket", "shutil")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Every module `name` imports, at any depth of its code (lazy imports count too)."""
    tree = ast.parse(MODULES[name].read_text())
    found: set[str] = set()
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else base)
    return found


def internal_imports(name: str) -> set[str]:
    return {m for m in imports_of(name) if m in MODULES and m != name}


CLI_LAYER = (
    "condasync.cli",
    "condasync.config",
    "condasync.display",
    "condasync.mirror_options",
    "condasync.__main__",
)


def layer(name: str) -> tuple[str, int]:
    """(the package or group a module belongs to, its rank). The CLI's modules are one group."""
    best = max((k for k in LAYERS if name == k or name.startswith(k + ".")), key=len)
    return ("cli" if best in CLI_LAYER else best), LAYERS[best]


def test_every_module_belongs_to_a_layer() -> None:
    for name in MODULES:
        assert layer(name)[0] != "condasync" or name == "condasync", f"{name} has no layer"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name: str) -> None:
    home, rank = layer(name)
    for target in internal_imports(name):
        there, target_rank = layer(target)
        if there == home:
            continue
        assert target_rank < rank, f"{name} imports {target}: {there} is not below {home}"


def test_no_import_cycles() -> None:
    graph = {name: internal_imports(name) for name in MODULES}
    for a, targets in graph.items():
        for b in targets:
            assert a not in graph[b], f"{a} and {b} import each other"
    # and no longer cycle either (depth-first search)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("condasync.channel")))
def test_channel_does_no_io(name: str) -> None:
    for target in imports_of(name):
        top = target.split(".")[0]
        assert top not in NO_IO_IN_CHANNEL, f"{name} imports {target}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_opens_with_a_docstring(name: str) -> None:
    doc = ast.get_docstring(ast.parse(MODULES[name].read_text()))
    assert doc and len(doc.strip()) > 10, f"{name} has no docstring saying what it owns"


def test_the_checker_catches_an_upward_import() -> None:
    assert layer("condasync.channel.repodata") == ("condasync.channel", 1)
    assert layer("condasync.engine.sync")[1] > layer("condasync.channel.cut")[1]
    assert "condasync.models" in internal_imports("condasync.channel.repodata")
