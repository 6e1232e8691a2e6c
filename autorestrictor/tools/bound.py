"""``python -m autorestrictor bound``: the fewest bytes a balanced plan must move.

Balance and locality pull against each other: a graph whose groups do not
divide evenly over the workers can only be balanced by cutting some groups,
and every cut edge is a transfer. This tool answers, for a bench workload,
*how many bytes must any placement move if no worker may do more than a
given share of the compute?* It solves that as a small integer programme
(scipy's ``milp``, HiGHS) over the workload's optimized graph:

- ``x[t, w] = 1`` if task ``t`` runs on worker ``w``; each task runs once;
- ``z[t, w] = 1`` if worker ``w`` needs ``t``'s output without having made it,
  i.e. ``z[t, w] >= x[d, w] - x[t, w]`` for every dependent ``d`` of ``t``;
- minimise ``sum nbytes[t] * z[t, w]`` subject to
  ``sum cost[t] * x[t, w] <= share * sum cost`` for every worker.

Task sizes and costs come from running the graph once in this process
(``dask``'s synchronous scheduler). The answer is a lower bound for the
bench's ``bytes_moved`` at that balance (the bench also counts results sent
to the client); when HiGHS stops at its time limit, the proven bound is
reported, not the best placement found.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def measure_graph(workload: str, scale: float) -> tuple[dict, dict, dict]:
    """Run a bench workload once, synchronously; return its graph and sizes.

    Returns
    -------
    deps : dict
        ``key -> list of keys`` it depends on (the optimized graph).
    nbytes : dict
        ``key -> bytes`` of each task's output (``dask.sizeof``).
    cost : dict
        ``key -> seconds`` each task took in this process.
    """
    import dask
    from dask.callbacks import Callback
    from dask.core import get_dependencies
    from dask.sizeof import sizeof

    from autorestrictor.tools.workloads import WORKLOADS

    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; known: {', '.join(WORKLOADS)}")
    collections = dask.optimize(*WORKLOADS[workload].build(scale, None))
    graph: dict = {}
    for c in collections:
        graph.update(dict(c.__dask_graph__()))
    deps = {k: [d for d in get_dependencies(graph, k) if d in graph] for k in graph}
    nbytes: dict = {}
    cost: dict = {}
    started: dict = {}

    class _Sizes(Callback):
        def _pretask(self, key, dsk, state):
            started[key] = time.perf_counter()

        def _posttask(self, key, result, dsk, state, worker_id):
            cost[key] = time.perf_counter() - started.pop(key)
            nbytes[key] = sizeof(result)

    with _Sizes(), dask.config.set(scheduler="sync"):
        dask.compute(*collections, optimize_graph=False)
    return deps, nbytes, cost


def min_transfer(
    deps: Mapping[Any, Sequence],
    nbytes: Mapping[Any, float],
    cost: Mapping[Any, float],
    n_workers: int,
    share: float,
    time_limit: float = 120.0,
) -> dict[str, Any]:
    """The fewest bytes any placement moves with no worker above ``share``.

    Parameters
    ----------
    deps : mapping
        ``key -> keys`` it depends on.
    nbytes, cost : mapping
        Output size and compute cost of every key.
    n_workers : int
        Workers to place on.
    share : float
        Largest share of the total cost one worker may carry.
    time_limit : float
        Seconds HiGHS may search.

    Returns
    -------
    dict
        ``bound`` (proven minimum bytes), ``best`` (bytes of the best
        placement found, ``None`` if none), ``optimal`` and ``shares`` (each
        worker's share of the cost in that placement).

    Examples
    --------
    Two independent pairs fit two workers without a transfer; one chain of
    four split in halves moves the middle task's output once:

    >>> pairs = {"a": [], "b": ["a"], "c": [], "d": ["c"]}
    >>> ones = dict.fromkeys(pairs, 1.0)
    >>> min_transfer(pairs, ones, ones, 2, 0.5)["bound"]
    0.0
    >>> chain = {"a": [], "b": ["a"], "c": ["b"], "d": ["c"]}
    >>> min_transfer(chain, {"a": 1, "b": 10, "c": 100, "d": 1}, ones, 2, 0.5)["bound"]
    10.0
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share!r}")
    keys = list(deps)
    index = {k: i for i, k in enumerate(keys)}
    n, w = len(keys), n_workers
    x = np.arange(n * w).reshape(n, w)  # variable numbers
    z = x + n * w
    size = np.array([float(nbytes[k]) for k in keys])
    work = np.array([float(cost[k]) for k in keys])
    edges = np.array([(index[d], index[k]) for k in keys for d in deps[k]], dtype=int)
    edges = edges.reshape(-1, 2)

    rows, cols, vals, lo, hi = [], [], [], [], []

    def add(row_cols, row_vals, low, high):
        r = len(lo)
        rows.extend([r] * len(row_cols))
        cols.extend(row_cols)
        vals.extend(row_vals)
        lo.append(low)
        hi.append(high)

    for t in range(n):  # each task runs once
        add(list(x[t]), [1.0] * w, 1.0, 1.0)
    for j in range(w):  # no worker above its share
        add(list(x[:, j]), list(work), 0.0, share * work.sum())
    for src, dst in edges:  # z[src, j] >= x[dst, j] - x[src, j]
        for j in range(w):
            add([z[src, j], x[dst, j], x[src, j]], [1.0, -1.0, 1.0], 0.0, np.inf)
    a = coo_matrix((vals, (rows, cols)), shape=(len(lo), 2 * n * w)).tocsr()
    upper = np.ones(2 * n * w)
    if n:
        upper[x[0, 1:]] = 0  # workers are interchangeable: the first task goes to 0
    objective = np.concatenate([np.zeros(n * w), np.repeat(size, w)])
    res = milp(
        objective,
        constraints=LinearConstraint(a, lo, hi),
        integrality=np.ones(2 * n * w),
        bounds=Bounds(np.zeros(2 * n * w), upper),
        options={"time_limit": time_limit},
    )
    if res.x is None:
        raise RuntimeError(f"no placement within share {share}: {res.message}")
    placed = res.x[: n * w].reshape(n, w).round()
    return {
        "bound": float(getattr(res, "mip_dual_bound", res.fun)),
        "best": float(res.fun),
        "optimal": res.status == 0,
        "shares": [float(placed[:, j] @ work / work.sum()) for j in range(w)],
    }


def per_prefix(cost: Mapping[Any, float]) -> dict:
    """Each key's cost replaced by the mean cost of its prefix (``key_split``).

    A scheduler knows costs at that grain before a task runs: Dask's task
    prefixes keep average durations, and the plugin learns its costs per
    prefix. The bound over these costs is the fewest bytes for a plan made
    with what can be known in advance; the bound over each task's own
    measured cost is one that only hindsight could reach.

    >>> per_prefix({("sum-ab", 0): 1.0, ("sum-ab", 1): 3.0, "x-1": 5.0})
    {('sum-ab', 0): 2.0, ('sum-ab', 1): 2.0, 'x-1': 5.0}
    """
    from dask.utils import key_split

    total: dict = {}
    for k, c in cost.items():
        s, n = total.get(key_split(k), (0.0, 0))
        total[key_split(k)] = (s + c, n + 1)
    return {k: total[key_split(k)][0] / total[key_split(k)][1] for k in cost}


def main(args: argparse.Namespace) -> int:
    for name in args.workloads.split(","):
        deps, nbytes, cost = measure_graph(name, args.scale)
        if args.costs == "prefix":
            cost = per_prefix(cost)
        out = min_transfer(deps, nbytes, cost, args.workers, args.share, args.time_limit)
        status = "optimal" if out["optimal"] else "time limit; bound proven"
        print(
            f"{name}: {len(deps)} tasks, {args.costs} costs, share <= {args.share}: at least "
            f"{out['bound'] / 1e6:,.0f} MB moved ({status}); best placement found "
            f"{out['best'] / 1e6:,.0f} MB, shares "
            + " ".join(f"{s:.2f}" for s in sorted(out["shares"], reverse=True))
        )
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workloads", default="seed-sum", help="comma-separated workloads")
    parser.add_argument("--share", type=float, default=0.27, help="largest share per worker")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per workload")
    parser.add_argument(
        "--costs", choices=("task", "prefix"), default="task",
        help="each task's own measured cost (hindsight), or its prefix's mean "
             "(what a scheduler knows before it runs)")
