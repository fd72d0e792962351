"""Imports point one way: the command line -> the stages -> the core. Read from the source with `ast` (nothing is
imported), every import counted, including those inside functions (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "eikd_edge"

CLI, STAGE, CORE = 2, 1, 0

# A module's layer is that of the longest entry its dotted name starts with; any other module is CORE (models, data,
# config, runtime, ui, ...). A CORE entry takes a module out of its package's layer.
LAYERS = {
    "eikd_edge.__main__": CLI,
    "eikd_edge.cli": CLI,
    "eikd_edge.commands": CLI,
    "eikd_edge.distill": STAGE,  # the package, its stage.py, loop.py (the training loop) and the loop's modules
    # the training step's pieces, the losses and the method registry sit below every stage (config.py reads the
    # registry, selection.py the methods' selection strategies)
    "eikd_edge.distill.step": CORE,
    "eikd_edge.distill.losses": CORE,
    "eikd_edge.distill.methods": CORE,
    "eikd_edge.selection": STAGE,  # select
    "eikd_edge.novel": STAGE,  # select --novel
    "eikd_edge.synthesis": STAGE,  # synthesize
    "eikd_edge.export": STAGE,
    "eikd_edge.validate": STAGE,
    "eikd_edge.device_result": STAGE,  # validate's on-device half (validate --device-result)
    "eikd_edge.bench": STAGE,
    "eikd_edge.run_results": STAGE,  # what bench and report read back from export.json and validate.json
    "eikd_edge.report": STAGE,
}

# The package root is the Python API: it re-exports the stages' entry points (lazily), so it sits on top like the
# command line. What the rest of the package imports from it is `__version__`, which it defines itself.
PUBLIC_API = "eikd_edge"

# Upward imports that stay for now, each with the reason it is not yet moved down: (importer, imported).
ALLOWED_UPWARD: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    if module == PUBLIC_API:
        return CLI
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else CORE


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The eikd_edge modules `module` imports: `from eikd_edge.x import y` counts as eikd_edge.x.y when that is a
    module (a submodule import), else as eikd_edge.x."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in found if name == "eikd_edge" or name.startswith("eikd_edge.")}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def upward_imports() -> set[tuple[str, str]]:
    edges = graph().items()
    return {(src, dst) for src, targets in edges for dst in targets if dst != PUBLIC_API and layer(dst) > layer(src)}


def top_level(module: str) -> str:
    return ".".join(module.split(".")[:2])


def stage_cycles() -> list[list[str]]:
    """Cycles among the stage layer's top-level modules (a package such as eikd_edge.export counts as one)."""
    edges: dict[str, set[str]] = {}
    for src, targets in graph().items():
        if layer(src) != STAGE:
            continue
        for dst in targets:
            a, b = top_level(src), top_level(dst)
            if layer(dst) == STAGE and a != b:
                edges.setdefault(a, set()).add(b)
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == path[0]:
                cycles.append([*path, nxt])
            elif nxt not in path and nxt > path[0]:  # each cycle once: from its smallest member
                walk(nxt, [*path, nxt])

    for start in sorted(edges):
        walk(start, [start])
    return cycles


def test_the_table_names_real_modules() -> None:
    known = modules()
    assert [prefix for prefix in LAYERS if prefix not in known] == []
    assert {(a, b) for a, b in ALLOWED_UPWARD if a not in known or b not in known} == set()


def test_no_import_points_up_a_layer() -> None:
    found = upward_imports()
    upward = sorted(found - ALLOWED_UPWARD)
    assert not upward, "imports up a layer: " + ", ".join(f"{src} -> {dst}" for src, dst in upward)
    stale = sorted(ALLOWED_UPWARD - found)
    assert not stale, "allowed but no longer imported (take off ALLOWED_UPWARD): " + ", ".join(map(str, stale))


def test_the_stages_import_each_other_without_cycles() -> None:
    cycles = stage_cycles()
    assert not cycles, "import cycles between stages: " + "; ".join(" -> ".join(c) for c in cycles)
