"""murajax's module graph, read as a newcomer reads it: imports flow one way.

Every import counts, also one inside a function (it is a dependency all the same, only
later). The modules form layers (see README "Layout"): a module imports only modules below
it, so the graph has no cycle. An import inside a function is kept only for a heavy optional
dependency (matplotlib through `murajax.plots`, TensorFlow through the `tfds_mura` builders),
with a comment on its line saying why.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "murajax"

# Modules a function may import late, with a comment: matplotlib (directly or through
# murajax.plots), and the TFDS builders (TensorFlow; optional where only a source is read).
LATE_IMPORTS_ALLOWED = ("matplotlib", "murajax.plots", "tfds_mura", "jax2onnx", "onnx")
# A model package's standalone runtime: it imports the runtime of the format it runs (jax or
# onnxruntime) when it runs it, since a package's user has one of them, not both.
LATE_IMPORTS_ALLOWED_IN = {"murajax.export.runtime": ("jax", "onnxruntime")}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The full names an import statement imports (`from a import b` gives `a.b` when `b`
    is a module, else `a`)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join([*base, *([node.module] if node.module else [])])
    else:
        source = node.module or ""
    return [
        f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source
        for alias in node.names
    ]


def owning_module(name: str) -> str | None:
    """The murajax module that `name` (a module or a name in one) belongs to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def function_imports(tree: ast.Module) -> list[ast.stmt]:
    """The import statements inside functions (at any depth)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    found.append(inner)
    return found


def import_graph() -> dict[str, set[str]]:
    """murajax module -> the murajax modules it imports, anywhere in it."""
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for name in imported_names(node, module, path.name == "__init__.py"):
                    owner = owning_module(name)
                    if owner is not None and owner != module:
                        targets.add(owner)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_names_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"murajax.config", "murajax.train", "murajax.models.registry"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_config_and_errors_import_nothing_above_them():
    graph = import_graph()
    assert graph["murajax.errors"] == set()
    assert graph["murajax.config"] == {"murajax.errors"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_late_imports_are_heavy_optional_ones_with_a_reason(module):
    path = MODULES[module]
    source = path.read_text()
    lines = source.splitlines()
    for node in function_imports(ast.parse(source, str(path))):
        names = imported_names(node, module, path.name == "__init__.py")
        where = f"{path.name}:{node.lineno} imports {', '.join(names)} inside a function"
        allowed = LATE_IMPORTS_ALLOWED + LATE_IMPORTS_ALLOWED_IN.get(module, ())
        assert all(n.startswith(allowed) for n in names), (
            f"{where}: import it at the top (late imports are for {LATE_IMPORTS_ALLOWED})"
        )
        assert "#" in lines[node.lineno - 1], f"{where} without a comment saying why"
