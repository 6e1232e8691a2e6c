"""What differs between the dask and distributed releases the plugin supports.

Every difference between the oldest release pyproject.toml declares and the
newest is detected here, once, by what the installed release has (a module,
a class), never by comparing version numbers; the rest of the package asks
this module. A feature an old release cannot support is switched off here,
with one log line saying what is missing.

The differences, oldest first:

* ``dask._task_spec`` (dask 2024.9): graphs of task objects that know their
  dependencies. :func:`autorestrictor.explain` needs it to read a graph as
  the scheduler does; without it ``explain()`` is switched off
  (:data:`EXPLAIN_MISSING`). The plugin needs none of it.
* ``SchedulerPlugin.update_graph(stimulus_id=)`` (distributed 2024.11): the
  plugin's hook does not use it, and takes it when it is given.
* ``distributed.shuffle._core.P2PBarrierTask`` (distributed 2024.11): a P2P
  barrier is recognised by its class; before, by its key's prefix.
* ``dask._task_spec.Task`` as the scheduler's ``run_spec`` (distributed
  2024.11): :func:`task_function` reads the function a task calls from it;
  before, a task was a tuple headed by its function, and the scheduler kept
  most of them wrapped in ``execute_task``, so the function is seldom seen.
* ``dask._expr.FinalizeCompute`` with ``dask.base.collections_to_expr``
  (dask 2025.4): ``Client.compute`` sends an expression. Before, it sent the
  optimised graph (``collections_to_dsk``) and a ``finalize-`` task per
  collection; :func:`collection_graph` builds whichever the client sends.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("autorestrictor")

try:  # P2P's barrier task; its module is private, so a rename must not break us
    from distributed.shuffle._core import P2PBarrierTask
except ImportError:  # pragma: no cover - depends on the distributed release
    P2PBarrierTask = None
    logger.info(
        "distributed.shuffle._core.P2PBarrierTask not found: P2P barriers are "
        "recognised by their key prefix 'shuffle-barrier-'"
    )


def is_p2p_barrier(key, run_spec) -> bool:
    """A P2P shuffle's or rechunk's barrier. P2P reads its ``worker_restrictions``
    to choose the workers that take part, and pins each output where its
    partition is, at run time; the planner leaves it and all that follows
    it to Dask (``placed_at_run_time``)."""
    if P2PBarrierTask is not None:
        return isinstance(run_spec, P2PBarrierTask)
    return isinstance(key, str) and key.startswith("shuffle-barrier-")


def task_function(run_spec):
    """The function a task calls, if its ``run_spec`` says plainly (a task
    object's ``func``, an old-style tuple's head); else ``None``."""
    func = getattr(run_spec, "func", None)
    if func is None and type(run_spec) is tuple and run_spec and callable(run_spec[0]):
        func = run_spec[0]
    return func


#: Functions that select part of their input and compute nothing, by
#: module and name (``dask.array`` is not imported on the scheduler for them).
_SELECTIONS = frozenset({("_operator", "getitem"), ("operator", "getitem"),
                         ("dask.array.chunk", "getitem")})


def selects(run_spec) -> bool:
    """Does a task only select part of its input (``x[i]``: a slice of an
    array, an item of a tuple, a column of a frame)?"""
    func = task_function(run_spec)
    return (getattr(func, "__module__", None), getattr(func, "__name__", None)) in _SELECTIONS


def _explain_missing() -> str | None:
    try:
        import dask._task_spec  # noqa: F401
    except ImportError:
        return "dask._task_spec"
    return None


#: What this dask lacks for ``explain()`` (``None``: nothing, it works).
EXPLAIN_MISSING: str | None = _explain_missing()
_explain_logged = False


def explain_unavailable() -> str | None:
    """Why ``explain()`` is switched off on this release, or ``None``.

    Logs the reason once per process, on the first call that finds it.
    """
    global _explain_logged
    if EXPLAIN_MISSING is None:
        return None
    why = (f"explain() is switched off: this dask has no {EXPLAIN_MISSING} "
           "(the plugin itself works)")
    if not _explain_logged:
        _explain_logged = True
        logger.info(why)
    return why


def collection_graph(collections: list) -> tuple[dict, dict]:
    """The graph ``{key: task}`` and annotations ``Client.compute`` sends for ``collections``."""
    try:
        from dask._expr import FinalizeCompute
        from dask.base import collections_to_expr
    except ImportError:
        return _legacy_collection_graph(collections)
    # what Client.compute sends: the optimised expression, finalized
    expr = FinalizeCompute(collections_to_expr(list(collections), True)).optimize()
    return dict(expr.__dask_graph__()), dict(expr.__dask_annotations__())


def _legacy_collection_graph(collections: list) -> tuple[dict, dict]:
    """As ``Client.compute`` before distributed 2025.4 builds its graph: the
    optimised high-level graph, a ``finalize-`` task per collection whose result
    is not one of its keys (an old-style tuple: the caller converts the graph),
    and the annotations of the graph's layers."""
    from dask.base import collections_to_dsk, tokenize

    try:
        from dask.delayed import single_key
    except ImportError:  # pragma: no cover - as distributed.client
        from toolz import first as single_key

    hlg = collections_to_dsk(collections, True)
    dsk = dict(hlg)
    for v in collections:
        func, extra_args = v.__dask_postcompute__()
        keys = v.__dask_keys__()
        if not (func is single_key and len(keys) == 1 and not extra_args):
            dsk[f"finalize-{tokenize(v)}"] = (func, keys, *extra_args)
    annotations: dict = {}
    for layer in getattr(hlg, "layers", {}).values():
        for kind, value in (layer.annotations or {}).items():
            annotations.setdefault(kind, {}).update(
                {k: (value(k) if callable(value) else value) for k in layer})
    return dsk, annotations
