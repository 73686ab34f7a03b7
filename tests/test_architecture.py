"""The package's layers depend one way: an import graph built from the code (every ``import``, also inside
functions) has no cycle between top-level parts, and no part imports from a higher layer."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mtransfer"
LAYERS = [
    {"__init__", "errors", "files", "devices", "progress", "validation", "choices", "layouts"},  # base
    {"flows", "video", "video_flow", "diffusion", "estimators", "speed", "presets"},  # core
    {"guidance", "evaluation"},  # method
    {"app"},  # application
    {"pipeline", "ui", "cli", "bench", "__main__"},  # front ends
]
"""Lower layers first; a part may import its own layer's parts (without a cycle) and lower layers only."""


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_edges(package: Path = PACKAGE) -> dict[tuple[str, str], str]:
    """``(importing part, imported part)`` → one file that makes that import, for parts that differ."""
    edges: dict[tuple[str, str], str] = {}
    for path in package.rglob("*.py"):
        module = ".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__")
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                targets = [".".join(base + ([node.module] if node.module else []))]
            elif isinstance(node, ast.ImportFrom):
                targets = [node.module or ""]
            else:
                continue
            for target in targets:
                if target == "mtransfer" or target.startswith("mtransfer."):
                    edge = (_part(module), _part(target))
                    if edge[0] != edge[1]:
                        edges.setdefault(edge, str(path.relative_to(package.parent)))
    return edges


def _layer(part: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if part in layer)


def _cycles(edges: dict[tuple[str, str], str]) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    found, path = [], []

    def visit(node: str, seen: set[str]) -> None:
        if node in path:
            found.append(path[path.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, seen)
        path.pop()

    for start in sorted(graph):
        visit(start, set())
    return found


def test_every_top_level_part_has_a_layer() -> None:
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists() or p.is_dir() and any(p.glob("*.py"))}
    unplaced = sorted(parts - set().union(*LAYERS))
    assert not unplaced, f"parts with no layer in LAYERS: {unplaced}"


def test_no_part_imports_from_a_higher_layer() -> None:
    upward = [f"{a} -> {b} ({where})" for (a, b), where in import_edges().items() if _layer(b) > _layer(a)]
    assert not upward, "imports running up a layer:\n" + "\n".join(sorted(upward))


def test_no_cycle_between_top_level_parts() -> None:
    assert not _cycles(import_edges()), _cycles(import_edges())


def test_the_checks_see_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    """The checks above can fail: a package where guidance imports the pipeline and back."""
    package = tmp_path / "mtransfer"
    for part, source in {"guidance": "from mtransfer.pipeline.stages import x\n",
                         "pipeline": "def f():\n    from ..guidance import y\n"}.items():
        (package / part).mkdir(parents=True)
        (package / part / "__init__.py").write_text(source)
    edges = import_edges(package)
    assert set(edges) == {("guidance", "pipeline"), ("pipeline", "guidance")}
    assert _layer("pipeline") > _layer("guidance")
    assert _cycles(edges)
