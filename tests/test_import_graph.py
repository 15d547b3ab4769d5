"""The modules of ``dipair_rerank`` import each other one way: no import cycle, not even through an import inside a
function.

Why: a cycle that holds only because one side imports inside a function breaks as soon as someone moves that import
to the top of the file, and makes the modules impossible to understand (or test) one at a time.

What counts as an edge ``A -> B`` (A, B modules of the package, ``B`` a package meaning its ``__init__.py``):
    - every ``import``/``from ... import`` statement in A, at module level or inside a function or class, with
      relative imports resolved against A's package; ``from P import name`` is an edge to ``P.name`` where that is a
      module (a submodule imported by name), else to ``P`` (a name defined or re-exported by ``P/__init__.py``);
    - the packages above B that are not also above A: importing ``dipair_rerank.model.lexical`` from
      ``dipair_rerank.texts`` runs ``dipair_rerank/model/__init__.py`` first, which is a real dependency (and the
      way a re-export in an ``__init__`` closes a cycle), while a package that contains A is already being imported
      (it counts only when A imports it by name: ``from . import name`` reads its ``__init__``).
What does not count:
    - imports under ``if TYPE_CHECKING:``. They never run, so they cannot make an import cycle, and they are how a
      lower module that is handed a model names its type (``encoding.encode_documents(model: DiPairModel, ...)``,
      called by ``DiPairModel.rank``); counting them would force a structural copy of ``DiPairModel``'s interface
      into every such module;
    - ``importlib.import_module`` with a computed name (the package's lazy exports), which no parser can follow;
    - a module importing itself (``_java`` runs itself as a script).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "dipair_rerank"
ROOT = Path(__file__).resolve().parents[1]


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``package_dir`` (a package is its ``__init__.py``)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those in the body of an ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_edges(name: str, source: str, modules: set[str], *, is_package: bool) -> set[str]:
    """The package modules that module ``name`` (whose code is ``source``) imports, by the rules above."""
    package = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()

    def nearest_module(dotted: str) -> str | None:  # "a.b.Name" -> "a.b"
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in _imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found = nearest_module(alias.name)
                if found is not None:
                    targets.add(found)
            continue
        if node.level:
            base = package.split(".")
            if node.level > 1:
                base = base[: -(node.level - 1)]
            base_name = ".".join(base + ([node.module] if node.module else []))
        else:
            base_name = node.module or ""
        for alias in node.names:
            submodule = f"{base_name}.{alias.name}"
            found = submodule if submodule in modules else nearest_module(base_name)
            if found is not None:
                targets.add(found)
    own = {*_ancestors(name), name}
    edges = {target for target in targets if target != name}
    for target in targets:
        edges.update(above for above in _ancestors(target) if above in modules and above not in own)
    return edges


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    files = module_names(package_dir)
    modules = set(files)
    return {name: import_edges(name, path.read_text(encoding="utf-8"), modules, is_package=path.name == "__init__.py")
            for name, path in files.items()}


def cycle_groups(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module: each module in one reaches every other (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:  # recursion depth is bounded by the number of modules (~100)
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """A shortest cycle (``[a, b, ..., a]``) through each module of each cycle group, without repeats."""
    cycles: list[list[str]] = []
    for component in cycle_groups(graph):
        for start in sorted(component):
            cycle = _cycle_in(graph, component, start)
            if not any(set(cycle) == set(seen) and len(cycle) == len(seen) for seen in cycles):
                cycles.append(cycle)
    return cycles


def _cycle_in(graph: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    """A shortest cycle through ``start``, found breadth-first inside its component."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"{start} is in no cycle of {sorted(component)}")


def test_the_package_has_no_import_cycle():
    graph = import_graph(ROOT / PACKAGE)
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in dipair_rerank (a -> b: a imports b):\n" + "\n".join(
        " -> ".join(cycle) for cycle in cycles)


def test_the_graph_sees_the_package_imports():
    """The check above is not vacuous: known imports, an ``__init__`` and a function-level import, are edges."""
    graph = import_graph(ROOT / PACKAGE)
    assert "dipair_rerank.model.modeling" in graph["dipair_rerank.model"]
    assert "dipair_rerank.model" in graph["dipair_rerank.rerank"]
    assert "dipair_rerank.model.onnx_head" in graph["dipair_rerank.rerank"]  # imported inside a method
    assert "dipair_rerank.model" in graph["dipair_rerank.indexer"]


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_relative_imports_and_package_inits_resolve(tmp_path):
    package = _write(tmp_path, {
        "pkg/__init__.py": "from pkg.sub import thing\n",
        "pkg/a.py": "from . import b\nfrom .sub import c as _c\nfrom .sub.c import name\n",
        "pkg/b.py": "from pkg.sub import thing\n",
        "pkg/sub/__init__.py": "from .c import thing\n",
        "pkg/sub/c.py": "from .. import b\nfrom ..b import x\nthing = 1\n",
        "pkg/sub/d.py": "from . import thing\nimport pkg.sub.d\n",
    })
    graph = import_graph(package)
    assert graph["pkg"] == {"pkg.sub"}
    assert graph["pkg.a"] == {"pkg.b", "pkg.sub", "pkg.sub.c"}  # importing pkg.sub.c runs pkg/sub/__init__.py
    assert graph["pkg.b"] == {"pkg.sub"}  # a name re-exported by pkg/sub/__init__.py
    assert graph["pkg.sub"] == {"pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.b"}  # pkg itself is already being imported: no edge
    assert graph["pkg.sub.d"] == {"pkg.sub"}  # its own package by name counts; itself does not
    assert find_cycles(graph) == [["pkg.b", "pkg.sub", "pkg.sub.c", "pkg.b"]]


def test_function_level_imports_count_and_type_checking_ones_do_not(tmp_path):
    package = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.high import High\n"
                      "else:\n    import pkg.other\n",
        "pkg/high.py": "def f():\n    from pkg.low import g\n",
        "pkg/other.py": "import typing\nif typing.TYPE_CHECKING:\n    import pkg.high\n",
    })
    graph = import_graph(package)
    assert graph["pkg.low"] == {"pkg.other"} and graph["pkg.high"] == {"pkg.low"} and graph["pkg.other"] == set()
    assert find_cycles(graph) == []
    (package / "other.py").write_text("def f():\n    import pkg.high\n")
    assert find_cycles(import_graph(package)) == [["pkg.high", "pkg.low", "pkg.other", "pkg.high"]]

