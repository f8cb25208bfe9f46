"""The layer rules of docs/architecture.md, checked statically on every import statement.

Every ``import``/``from ... import`` in the project's packages counts, also those inside
functions: a lazy import of a higher layer is still a dependency on it. The higher
layers' CLI subcommands reach ``tfrs-cosine`` through entry points (pyproject.toml),
never through an import from ``training``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("tfrs_cosine", "training", "export", "serving")
# What each layer may import of the project (prefixes of module names).
MAY_IMPORT = {
    "tfrs_cosine": ("tfrs_cosine",),
    "training": ("tfrs_cosine", "training"),
    "export": ("tfrs_cosine", "training", "export"),
    "serving": ("serving", "tfrs_cosine.errors", "export.contract", "export.errors",
                "export.scann_ops", "export.verify"),
}
# What loads an export (the server's side of it): none of the training stack.
LOADERS = ("export.contract", "export.errors", "export.scann_ops", "export.verify")
LOADER_MAY_IMPORT = ("tfrs_cosine.errors", *LOADERS)
TRAINING_STACK = ("tensorflow_recommenders", "tf_keras")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def imports(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """``(imported module, line)`` for every import statement of a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield (candidate if candidate in ALL else base), node.lineno


ALL = modules()


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def project_imports() -> list[tuple[str, str, int]]:
    return [
        (name, target, line)
        for name, path in ALL.items()
        for target, line in imports(name, path)
    ]


def test_the_scan_sees_the_project():
    names = set(ALL)
    assert {"training.cli", "export.savedmodel", "serving.cli", "tfrs_cosine.heads"} <= names
    edges = project_imports()
    assert ("training.train", "training.modeling", ) in {(a, b) for a, b, _ in edges}


@pytest.mark.parametrize("layer", PACKAGES)
def test_no_layer_imports_a_higher_one(layer):
    bad = [
        f"{name}:{line} imports {target}"
        for name, target, line in project_imports()
        if name.split(".")[0] == layer
        and target.split(".")[0] in PACKAGES
        and not within(target, MAY_IMPORT[layer])
    ]
    assert not bad, bad


def test_loading_an_export_needs_no_training_stack():
    bad = [
        f"{name}:{line} imports {target}"
        for name, target, line in project_imports()
        if within(name, LOADERS)
        and (
            (target.split(".")[0] in PACKAGES and not within(target, LOADER_MAY_IMPORT))
            or within(target, TRAINING_STACK)
        )
    ]
    assert not bad, bad


def test_the_module_graph_has_no_cycle():
    graph: dict[str, set[str]] = {name: set() for name in ALL}
    for name, target, _ in project_imports():
        if target in ALL and target != name and not name.startswith(target + "."):
            graph[name].add(target)
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_the_docs_show_the_export_contract():
    from export.contract import markdown_table

    for doc in ("docs/architecture.md", "README.md"):
        assert markdown_table() in (ROOT / doc).read_text(), f"{doc}: regenerate the table"
