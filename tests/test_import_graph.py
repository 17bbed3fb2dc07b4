"""kerascv_app has no import circles.

The graph is read from the source with ``ast``, not by importing it: every ``import`` and
``from ... import`` counts, at module level or inside a function (a function-level import
that closes a circle only defers it), relative ones resolved. ``from package import name``
is an edge to ``package.name`` when that is a module. Importing ``a.b.c`` also runs the
``__init__`` of ``a`` and ``a.b``, but those implicit parent-package imports are not edges:
every submodule has them, and a package's ``__init__`` importing its own submodules is how
packages are built.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

import kerascv_app

pytestmark = pytest.mark.backend_independent

PACKAGE = "kerascv_app"


def module_files(package_dir: Path) -> dict[str, Path]:
    """Every module of the package by dotted name; a package is named by its __init__.py."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The package's modules that ``name`` imports, each with the line of its first import."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        # "import a.b.c" where c is a function or a missing module: the nearest module.
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.setdefault(target, line)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            if source.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                add(submodule if submodule in modules else source, node.lineno)
    return found


def import_graph(package_dir: Path) -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    modules = module_files(package_dir)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}, modules


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = lowest[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                lowest[module] = min(lowest[module], lowest[target])
            elif target in on_stack:
                lowest[module] = min(lowest[module], index[target])
        if lowest[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(components)


def one_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, within the component."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        for target in sorted(graph[module]):
            if target == start:
                path = [module]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if target in members and target not in came_from:
                came_from[target] = module
                queue.append(target)
    raise AssertionError(f"{component} is not a circle")


def describe(graph: dict[str, dict[str, int]], modules: dict[str, Path], component: list[str]) -> str:
    cycle = one_cycle(graph, component)
    root = modules[PACKAGE].parent.parent
    steps = [
        f"    {source} -> {target}  ({modules[source].relative_to(root)}:{graph[source][target]})"
        for source, target in zip(cycle, cycle[1:])
    ]
    return f"  {len(component)} modules: {', '.join(component)}\n" + "\n".join(steps)


def test_kerascv_app_has_no_import_circles():
    graph, modules = import_graph(Path(kerascv_app.__file__).parent)
    found = circles(graph)
    assert not found, "import circles in kerascv_app:\n" + "\n".join(
        describe(graph, modules, component) for component in found
    )


def test_the_graph_counts_function_level_relative_and_from_package_imports(tmp_path):
    """The detector itself: each kind of import closes a circle it must find."""
    package = tmp_path / PACKAGE
    (package / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "top.py": "def late():\n    from kerascv_app.sub import leaf\n",  # function level, from package import module
        "sub/__init__.py": "from kerascv_app.sub.middle import thing\n",  # a package importing its submodule
        "sub/middle.py": "thing = 1\n",
        "sub/leaf.py": "from .. import top\nimport kerascv_app.sub.middle\n",  # relative
        "alone.py": "import kerascv_app.sub.middle\n",  # its parents' implicit imports are not edges
    }
    for name, text in files.items():
        (package / name).write_text(text)
    graph, modules = import_graph(package)
    assert graph["kerascv_app.top"] == {"kerascv_app.sub.leaf": 2}
    assert graph["kerascv_app.sub.leaf"] == {"kerascv_app.top": 1, "kerascv_app.sub.middle": 2}
    assert graph["kerascv_app.alone"] == {"kerascv_app.sub.middle": 1}
    # middle's own implicit import of its parent package is no edge back: no circle there.
    assert circles(graph) == [["kerascv_app.sub.leaf", "kerascv_app.top"]]
    assert describe(graph, modules, circles(graph)[0]).splitlines()[1:] == [
        "    kerascv_app.sub.leaf -> kerascv_app.top  (kerascv_app/sub/leaf.py:1)",
        "    kerascv_app.top -> kerascv_app.sub.leaf  (kerascv_app/top.py:2)",
    ]
