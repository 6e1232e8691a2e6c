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

#: Modules that run inside the scheduler (or are the pure core it calls).
CORE = ["planner.py", "graph.py", "rebalance.py", "plugin.py", "config.py", "http.py"]
#: Modules that must import neither ``distributed`` nor the tools.
PURE = ["planner.py", "graph.py", "rebalance.py", "datamap.py"]
#: Modules outside the scheduler's hot path: the dashboard page (imported
#: only when the scheduler serves Bokeh's dashboard) and explain() (client
#: side). Their functions are kept short too.
VIEWS = ["dashboard.py", "explanation.py", "datamap.py"]

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


@pytest.mark.parametrize("name", ["planner", "rebalance", "graph", "datamap", "explanation"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

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
