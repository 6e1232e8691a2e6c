"""The shape of the package: what runs in the scheduler, and what it imports.

A scheduler plugin is installed on every scheduler of a cluster, so the
modules that run there stay small, readable and free of the tools'
dependencies.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "autorestrictor"

#: The pure policies and the planner: plain data in, decisions out.
PURE = ["planner.py", "graph.py", "rebalance.py", "datamap.py", "learning.py",
        "admission.py", "elastic.py", "recovery.py", "state.py", "spilling.py"]
#: Modules that run inside the scheduler: the pure core, and the adapter
#: that reads the scheduler, acts on it and records what it did.
CORE = [*PURE, "plugin.py", "planning.py", "intake.py", "actions.py", "balancing.py",
        "membership.py", "records.py", "compat.py", "config.py", "http.py"]
#: Modules outside the scheduler's hot path: the dashboard page (imported
#: only when the scheduler serves Bokeh's dashboard) and explain() (client
#: side). Their functions are kept short too.
VIEWS = ["dashboard.py", "explanation.py"]

MAX_FUNCTION_LINES = 80


def _tree(name: str) -> ast.Module:
    return ast.parse((PACKAGE / name).read_text(), filename=name)


def _imports(tree: ast.Module) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def _code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function, its docstring not counted."""
    lines = fn.end_lineno - fn.lineno + 1
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        if isinstance(body[0].value.value, str):
            lines -= body[0].end_lineno - body[0].lineno + 1
    return lines


@pytest.mark.parametrize("name", CORE + VIEWS)
def test_core_functions_are_short(name):
    tree = _tree(name)
    functions = [
        n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    assert functions, f"{name} has no functions: the list of core modules is stale"
    long = {f.name: _code_lines(f) for f in functions if _code_lines(f) > MAX_FUNCTION_LINES}
    assert not long, f"{name}: functions over {MAX_FUNCTION_LINES} lines (docstring excluded)"


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_do_not_import_the_scheduler(name):
    imported = _imports(_tree(name))
    assert imported, f"{name} imports nothing: the list of pure modules is stale"
    assert not {m for m in imported if m.split(".")[0] == "distributed"}
    assert not {m for m in imported if m.startswith("autorestrictor.tools")}


@pytest.mark.parametrize("name", CORE + ["__init__.py"])
def test_core_does_not_import_the_tools(name):
    imported = _imports(_tree(name))
    assert not {m for m in imported if m.startswith("autorestrictor.tools")}
    assert not imported & {"pandas", "pyarrow", "matplotlib", "bokeh", "psutil", "dask.array"}


@pytest.mark.parametrize("name", ["planner", "rebalance", "graph", "datamap", "explanation",
                                  "learning", "admission", "elastic", "recovery", "spilling"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    from autorestrictor.compat import EXPLAIN_MISSING

    if name == "explanation" and EXPLAIN_MISSING is not None:
        pytest.skip(f"explain() is switched off: this dask has no {EXPLAIN_MISSING}")
    module = importlib.import_module(f"autorestrictor.{name}")
    result = doctest.testmod(module)
    assert result.failed == 0
    if name != "graph":
        assert result.attempted > 0, f"{name} has no examples: the list is stale"


@pytest.mark.parametrize("name", CORE + ["__init__.py", "explanation.py", "datamap.py"])
def test_views_are_imported_lazily(name):
    """The dashboard page (Bokeh) is imported inside a function, only when a
    scheduler serves a dashboard; nothing else in the package imports it."""
    tree = _tree(name)
    top = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module)
            top.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            top.update(a.name for a in node.names)
    assert not {m for m in top if m.startswith(("autorestrictor.dashboard", "bokeh"))}
    if name != "http.py":
        assert "autorestrictor.dashboard" not in _imports(tree)
        assert not {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                    and n.module == "autorestrictor" for a in n.names} & {"dashboard"}


def test_plugin_import_pulls_in_no_view():
    import subprocess
    import sys

    code = ("import sys, autorestrictor, autorestrictor.plugin, autorestrictor.http; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'bokeh', 'matplotlib', 'pandas', 'pyarrow', 'selenium'} or m in "
            "{'dask.array', 'autorestrictor.dashboard', 'autorestrictor.explanation'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PACKAGE.parent, check=True).stdout.strip()
    assert out == "[]"


#: Size limits: a module of hooks, and classes a reader takes in at once.
MAX_PLUGIN_LINES = 400
MAX_CLASS_LINES = 400


def _package_modules() -> dict[str, ast.Module]:
    return {p.name: _tree(p.name) for p in sorted(PACKAGE.glob("*.py"))}


def test_every_module_is_classified():
    """A new module must be put in a list above, so that its rules apply."""
    known = set(CORE) | set(PURE) | set(VIEWS) | {"__init__.py", "__main__.py"}
    assert set(_package_modules()) <= known, set(_package_modules()) - known


def test_the_plugin_is_hooks_and_no_class_is_large():
    lines = len((PACKAGE / "plugin.py").read_text().splitlines())
    assert lines <= MAX_PLUGIN_LINES, f"plugin.py has {lines} lines"
    for name, tree in _package_modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                n = node.end_lineno - node.lineno + 1
                assert n <= MAX_CLASS_LINES, f"{name}: class {node.name} has {n} lines"


def test_only_actions_writes_restrictions():
    """Every assignment to a task's restrictions is in ``actions.py``: what
    the plugin can do to a scheduler is read in one place."""
    writers = set()
    for name, tree in _package_modules().items():
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Attribute) and sub.attr.endswith("_restrictions"):
                        writers.add(name)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "transitions" and name != "actions.py" \
                    and not (isinstance(node.func.value, ast.Name)
                             and node.func.value.id == "actions"):
                raise AssertionError(f"{name} calls transitions() at line {node.lineno}")
    assert writers == {"actions.py"}, writers


def _import_graph() -> dict[str, set[str]]:
    """``module -> package modules it imports``, at any depth of the module."""
    mods = _package_modules()
    names = {f"autorestrictor.{n[:-3]}" for n in mods}
    graph = {}
    for n, tree in mods.items():
        out = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "autorestrictor":
                    out |= {f"autorestrictor.{a.name}" for a in node.names} & names
                elif node.module in names:
                    out.add(node.module)
            elif isinstance(node, ast.Import):
                out |= {a.name for a in node.names} & names
        graph[f"autorestrictor.{n[:-3]}"] = out - {f"autorestrictor.{n[:-3]}"}
    return graph


def test_no_import_cycle():
    graph = _import_graph()
    graph.pop("autorestrictor.__init__")  # (it imports lazily, by name)
    for mods in graph.values():
        mods.discard("autorestrictor.__init__")
    done: set = set()
    for start in graph:  # iterative depth-first search for a back edge
        if start in done:
            continue
        path, on_path = [(start, iter(sorted(graph[start])))], {start}
        while path:
            node, it = path[-1]
            nxt = next(it, None)
            if nxt is None:
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif nxt in on_path:
                cycle = [n for n, _ in path][[n for n, _ in path].index(nxt):]
                raise AssertionError(f"import cycle: {' -> '.join([*cycle, nxt])}")
            elif nxt not in done and nxt in graph:
                path.append((nxt, iter(sorted(graph[nxt]))))
                on_path.add(nxt)


def test_views_never_import_the_plugin():
    graph = _import_graph()
    for view in ["http", "dashboard", "explanation", "datamap", "state"]:
        assert "autorestrictor.plugin" not in graph[f"autorestrictor.{view}"], view
