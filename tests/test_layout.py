"""The package's layout rules (docs/development.md, "Module map"): no import cycle between b2b's modules,
counting imports inside functions; every name imported from the b2b module that defines it; no module
over 500 lines and the Trainer's module at most 350."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "b2b"
MAX_LINES = 500
MAX_TRAINER_LINES = 350


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text()) for name, path in MODULES.items()}


def top_level_names(tree: ast.Module) -> set[str]:
    """Names a module defines (functions, classes, assignments), including under top-level if/try."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node in tree.body or any(node in getattr(s, "body", []) for s in tree.body):
                names.add(node.name)
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def imports(tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """(module, names, line) of every b2b import in the module, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "b2b" or node.module.startswith("b2b."):
                found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("b2b.")]
    return found


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, tree in TREES.items():
        for module, names, _ in imports(tree):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES] or [module]
            graph[name].update(t for t in targets if t in MODULES and t != name)
    return graph


def test_no_import_cycle():
    graph, state, cycles = edges(), {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_names_come_from_the_module_that_defines_them():
    defined = {name: top_level_names(tree) for name, tree in TREES.items()}
    wrong = []
    for name, tree in TREES.items():
        for module, names, line in imports(tree):
            if module not in MODULES:
                wrong.append(f"{name}:{line} imports from {module}, which is not a b2b module")
                continue
            for n in names:
                if f"{module}.{n}" not in MODULES and n not in defined[module]:
                    wrong.append(f"{name}:{line} imports {n} from {module}, which does not define it")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    lines = len(MODULES[name].read_text().splitlines())
    limit = MAX_TRAINER_LINES if name == "b2b.training.trainer" else MAX_LINES
    assert lines <= limit, f"{MODULES[name]} has {lines} lines (at most {limit})"


def test_the_checks_find_what_they_look_for(tmp_path):
    """The cycle finder on a planted cycle, the import check on a re-exported name."""
    a = ast.parse("from b2b.y import f\n\ndef g():\n    from b2b.z import h\n")
    assert [m for m, _, _ in imports(a)] == ["b2b.y", "b2b.z"]
    assert top_level_names(ast.parse("from b2b.y import f\nX = 1\ndef g(): pass\n")) == {"X", "g"}
