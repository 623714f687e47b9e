"""The package's shape (docs/ARCHITECTURE.md): imports between lmcore's modules form no cycle (every
import counts, a lazy one inside a function too; only ``if TYPE_CHECKING:`` ones do not), neither do
they between its subpackages, and no module is over 400 lines. Read from the source, nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "lmcore"
MODULES = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
           for p in PACKAGE.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """The lmcore modules ``path`` imports (``from lmcore import cli`` imports lmcore.cli, not lmcore)."""
    found: set[str] = set()

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                names = [f"{child.module}.{a.name}" for a in child.names]
                found.update(names)
                if not all(n in MODULES or n == "lmcore._core" for n in names):
                    found.add(child.module)
            walk(child)

    walk(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in MODULES}


GRAPH = {name: imports(path) - {name} for name, path in MODULES.items()}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = "open", path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node], _ = "done", path.pop()
        return None

    return next((found for node in sorted(graph) if node not in state and (found := visit(node))), None)


def subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else module


def test_no_import_cycle_between_modules() -> None:
    assert len(GRAPH) > 40 and sum(map(len, GRAPH.values())) > 100  # (the scan sees the package)
    assert cycle(GRAPH) is None


def test_no_import_cycle_between_subpackages() -> None:
    packages: dict[str, set[str]] = {}
    for module, deps in GRAPH.items():
        packages.setdefault(subpackage(module), set()).update(subpackage(d) for d in deps)
    assert cycle({p: deps - {p} for p, deps in packages.items()}) is None


def test_no_module_over_400_lines() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in sizes.items() if n > 400} == {}
