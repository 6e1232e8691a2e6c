"""Pictures of a plan: where a graph's data will live, and what Dask would move.

Pure, like the planner: a :class:`~autorestrictor.planner.Plan` in, plain
arrays out. The dashboard page (:mod:`autorestrictor.dashboard`) and
:func:`autorestrictor.explain` draw what this module computes, so both
show the same thing.

Two views of one plan:

* an array's **chunk grid**, each chunk coloured by the worker its task is
  pinned to, when the graph has keys named like a dask array's chunks
  (``("name", i, j)``);
* otherwise the pinned groups **in the order they will run**, as runs of one
  colour per worker.
"""

from __future__ import annotations

import html
import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from autorestrictor.graph import build_graph, slices
from autorestrictor.planner import (
    Plan,
    finish_per_worker,
    node_sizes,
    node_sizes_known,
    per_node,
    predicted_transfer,
)

Key = Hashable

#: Colours for workers, in the order of a plan's workers (repeated beyond
#: twelve workers). Chosen to stay apart from each other and from the grey
#: of :data:`LEFT_TO_DASK`.
PALETTE = (
    "#3b75af", "#ef8636", "#519e3e", "#c53a32", "#8d69b8", "#84584e",
    "#d57dbf", "#bcbc35", "#42bccd", "#f5b3c1", "#a5d395", "#fdd26e",
)

#: Colour of a chunk whose task the plan leaves to Dask.
LEFT_TO_DASK = "#d9d9d9"

#: Largest chunk grid drawn cell by cell; a larger grid is drawn every
#: ``step``-th chunk along each axis. A browser draws 40,000 rectangles in
#: well under a second; a notebook's inline SVG stays a few MB.
MAX_CELLS = 40_000


def worker_colour(i: int) -> str:
    """Colour of the ``i``-th worker of a plan; :data:`LEFT_TO_DASK` for -1."""
    return LEFT_TO_DASK if i < 0 else PALETTE[i % len(PALETTE)]


@dataclass(frozen=True)
class DataMap:
    """Where a plan puts a graph's data, ready to draw.

    Attributes
    ----------
    workers:
        The plan's workers; colours and worker indices refer to this order.
    name:
        The array drawn as a chunk grid, or ``None`` (then ``runs``).
    shape:
        That array's chunk grid (chunks per dimension).
    grid:
        2-D worker index per chunk, ``-1`` where the chunk's task is left to
        Dask. A 1-D array is one row; dimensions before the last are merged
        into rows. Only every ``step``-th chunk along each axis when the
        grid has more than :data:`MAX_CELLS` chunks.
    runs:
        ``(start, stop, worker index)``: the pinned tasks, group after group
        in the order each group's first task runs, cut where the worker
        changes.
    pieces:
        Groups (or pieces of split groups) in each run.
    load:
        Pinned tasks per worker.
    """

    workers: list[str]
    name: str | None = None
    shape: tuple[int, ...] = ()
    grid: np.ndarray | None = None
    step: int = 1
    runs: list[tuple[int, int, int]] = field(default_factory=list)
    pieces: list[int] = field(default_factory=list)
    load: list[int] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """``"chunks"``, ``"runs"``, or ``"empty"`` (nothing pinned)."""
        if self.grid is not None:
            return "chunks"
        return "runs" if self.runs else "empty"


def legend_html(m: DataMap) -> str:
    """HTML legend of ``m``'s colours: each worker and its pinned tasks."""
    swatch = "display: inline-block; width: 11px; height: 11px; background: {}"
    items = [
        f"<span style='white-space: nowrap; margin-right: 12px'><span style='"
        f"{swatch.format(worker_colour(i))}'></span> {html.escape(w)}: "
        f"{m.load[i] if m.load else 0:,} task(s)</span>"
        for i, w in enumerate(m.workers)
    ]
    if m.kind == "chunks" and (m.grid < 0).any():
        items.append(f"<span><span style='{swatch.format(LEFT_TO_DASK)}'></span> "
                     "left to Dask</span>")
    return "<div style='margin: 4px 0; line-height: 1.6'>" + " ".join(items) + "</div>"


def data_map(p: Plan) -> DataMap:
    """Draw ``p``: the chunk grid of its largest array, else its groups in run order.

    The array is the name with the most pinned chunk keys (ties: the one
    that runs first, usually the graph's input). Complexity: O(pinned keys)
    plus one sort.

    Examples
    --------
    >>> from autorestrictor import plan
    >>> deps = {("x", 0, j): [] for j in range(4)}
    >>> deps.update({("y", 0, j): [("x", 0, j)] for j in range(4)})
    >>> m = data_map(plan(deps, {"a": 1, "b": 1}, min_tasks=1))
    >>> m.kind, m.name, m.shape, m.grid.tolist()
    ('chunks', 'x', (1, 4), [[0, 0, 1, 1]])
    """
    n_workers = len(p.workers)
    worker_of = np.asarray(p.worker_of, dtype=np.int64)
    load = np.bincount(worker_of, minlength=n_workers).tolist() if n_workers else []
    if p.n_pinned == 0:
        return DataMap(workers=list(p.workers), load=load)
    rank = np.arange(p.n_pinned, dtype=float) if p.rank_of is None else np.asarray(p.rank_of)
    chunks = _chunk_keys(p.keys)
    if chunks:
        name = min(chunks, key=lambda n: (-len(chunks[n]), min(rank[chunks[n]])))
        members = chunks[name]
        index = np.array([p.keys[i][1:] for i in members], dtype=np.int64)
        shape = tuple(int(x) + 1 for x in index.max(axis=0))
        grid, step = _grid(index, shape, worker_of[members])
        return DataMap(workers=list(p.workers), name=name, shape=shape, grid=grid,
                       step=step, load=load)
    # groups (pieces) in the order their first task runs, each in run order
    piece = np.unique(np.asarray(p.piece_of), return_inverse=True)[1].ravel()
    first = np.full(piece.max() + 1, np.inf)
    np.minimum.at(first, piece, rank)
    order = np.lexsort((rank, piece, first[piece]))
    w, pc = worker_of[order], piece[order]
    cuts = np.flatnonzero(np.r_[True, w[1:] != w[:-1], True])
    new_piece = np.r_[1, (pc[1:] != pc[:-1]).astype(np.int64)]
    pieces = np.add.reduceat(new_piece, cuts[:-1]).tolist()
    runs = [(int(a), int(b), int(w[a])) for a, b in zip(cuts[:-1], cuts[1:])]
    return DataMap(workers=list(p.workers), runs=runs, pieces=pieces, load=load)


def _chunk_keys(keys: list) -> dict[str, list[int]]:
    """Positions of keys shaped like array chunks, ``(name, i, j, ...)``, per name.

    Only names with at least two chunks of one dimensionality count.
    """
    out: dict[tuple[str, int], list[int]] = {}
    for i, k in enumerate(keys):
        if (
            type(k) is tuple and len(k) >= 2 and isinstance(k[0], str)
            and all(type(x) is int and x >= 0 for x in k[1:])
        ):
            out.setdefault((k[0], len(k)), []).append(i)
    best: dict[str, list[int]] = {}
    for (name, _), members in out.items():
        if len(members) >= 2 and len(members) > len(best.get(name, ())):
            best[name] = members
    return best


def _grid(index: np.ndarray, shape: tuple[int, ...], worker: np.ndarray):
    """The chunk grid as 2-D worker indices (rows: all dimensions but the last)."""
    full = np.full(shape, -1, dtype=np.int64)
    full[tuple(index.T)] = worker
    flat = full.reshape(1, -1) if len(shape) == 1 else full.reshape(-1, shape[-1])
    step = max(1, math.ceil(math.sqrt(flat.size / MAX_CELLS)))
    return flat[::step, ::step], step


def default_transfer(
    dependencies: Mapping[Key, Iterable[Key]],
    workers: Mapping[str, int],
    *,
    nbytes: Mapping[Key, float] | None = None,
    priority: Mapping[Key, float] | None = None,
) -> float:
    """A simple estimate of the bytes Dask's default placement moves between workers.

    The model: roots (tasks without inputs) are handed to worker threads in
    priority order, one after the other, as Dask's queue hands them to the
    thread that frees up first (which knows nothing of where their results
    will meet); every other task runs on the worker holding most of its
    input bytes. Each output is then counted once per other worker that
    reads it, as :func:`autorestrictor.planner.predicted_transfer` counts
    the plugin's plan. Sizes are those given, else a typical output.

    It is an estimate: Dask also weighs how busy workers are, and steals
    work. On the bench's seed example (200 chunks of 10 MB) it predicts
    1,500 MB; Dask moved 1,390 MB there (median of 3 runs).

    Complexity: O(tasks + edges) per level of the graph (level by level,
    from the roots), plus a sort.

    Examples
    --------
    Two chains read by one sum: Dask's queue gives the two roots to two
    workers, and one of the two chain results travels to the sum.

    >>> deps = {"a": [], "b": [], "a2": ["a"], "b2": ["b"], "s": ["a2", "b2"]}
    >>> default_transfer(deps, {"w1": 1, "w2": 1}, nbytes=dict.fromkeys(deps, 10))
    10.0
    """
    g = build_graph(dependencies)
    size = node_sizes(g, nbytes)
    where = _default_placement(g, workers, size, priority)
    return predicted_transfer(g, where, np.full(g.n, -1, dtype=np.int64), size)


class Estimate(NamedTuple):
    """What :func:`default_estimate` predicts, per worker in the order given."""

    bytes: float  #: moved between workers under Dask's default (:func:`default_transfer`)
    finish: np.ndarray  #: seconds until each worker finishes, under Dask's default
    peak: np.ndarray  #: each worker's peak of open results, under Dask's default
    plan_peak: np.ndarray | None  #: the same under the plan given, if one was


def default_estimate(
    dependencies: Mapping[Key, Iterable[Key]],
    workers: Mapping[str, int],
    *,
    bandwidth: float,
    nbytes: Mapping[Key, float] | None = None,
    priority: Mapping[Key, float] | None = None,
    cost: Mapping[Key, float] | None = None,
    plan: Plan | None = None,
) -> Estimate:
    """What Dask's default placement of a graph moves (:func:`default_transfer`),
    when each worker finishes and the most each holds at once; the last
    also under ``plan``, if given. The graph is read once for all.

    *Finish*: by the plan's own model of time
    (:func:`autorestrictor.planner.predicted_finish`), compute over
    threads, or the seconds to receive what a worker reads from the others
    if longer.

    *Peak of open results*: a worker runs its tasks in priority order; all
    workers are taken to move through their own tasks at the same pace, so
    a task's time is its place in its worker's order, as a fraction of that
    worker's tasks. A result is open on its worker from the time its task
    runs until its last reader has run (a result nothing in the graph reads
    stays open to the end), and a copy received from another worker from
    the first of its readers there until the last. Tasks the plan leaves to
    Dask run where most of their input bytes are. Sizes as in
    :func:`default_transfer` (unknown: one each, so the peak is in results).

    Two pairs read by one sum, a second per task and five per result
    sent. Under Dask's default, as estimated, two results cross (20 bytes)
    and one worker waits ten seconds for what it receives, holding four
    results at its peak. The plan puts each pair on its own worker: at
    most three results open on either.

    >>> from autorestrictor.planner import plan as make_plan
    >>> deps = {"a": [], "b": [], "c": [], "d": [], "ab": ["a", "b"], "cd": ["c", "d"],
    ...         "s": ["ab", "cd"]}
    >>> workers = {"w1": 1, "w2": 1}
    >>> e = default_estimate(deps, workers, bandwidth=2.0, nbytes=dict.fromkeys(deps, 10),
    ...                      cost=dict.fromkeys(deps, 1.0),
    ...                      plan=make_plan(deps, workers, min_tasks=1))
    >>> e.bytes, e.finish.tolist(), e.peak.tolist(), e.plan_peak.tolist()
    (20.0, [10.0, 5.0], [40.0, 30.0], [30.0, 30.0])

    Complexity: O(edges log edges).
    """
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be a positive number of bytes per second, "
                         f"got {bandwidth!r}")
    g = build_graph(dependencies)
    size, known = node_sizes_known(g, nbytes)
    nowhere = np.full(g.n, -1, dtype=np.int64)
    moved = predicted_transfer(g, _default_placement(g, workers, size, priority), nowhere, size)
    # Ties spread for the time: with every tie to one worker (as for the
    # bytes), that worker would run every partial sum that reads one chunk
    # from each worker, where Dask's earliest-start rule spreads them.
    where = _default_placement(g, workers, size, priority, spread=True)
    threads = np.array([max(1, int(t)) for t in workers.values()], dtype=np.float64)
    finish = finish_per_worker(
        g, where, located=nowhere, size=size, known=known,
        cost=per_node(g, cost, default=1.0, name="cost"), busy=np.zeros(len(threads)),
        threads=threads, bandwidth=bandwidth,
    )
    rank = per_node(g, priority, default=np.inf, name="priority", nonnegative=False)
    plan_peak = None
    if plan is not None:
        planned = np.full(g.n, -1, dtype=np.int64)
        nodes = np.arange(len(plan.keys)) if plan.nodes is None else np.asarray(plan.nodes)
        planned[nodes] = np.asarray(plan.worker_of)
        _place_by_inputs(g, planned, size, len(workers), spread=True)
        plan_peak = _open_peaks(g, planned, rank, size, len(workers))
    return Estimate(moved, finish, _open_peaks(g, where, rank, size, len(workers)), plan_peak)


def peaks(
    dependencies: Mapping[Key, Iterable[Key]],
    workers: Mapping[str, int],
    assignment: Mapping[Key, str],
    priority: Mapping[Key, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each worker's peak of open results, in results (every size one), under
    ``assignment`` (key -> worker; the other tasks run where most of their
    inputs are) and under Dask's default: the two peaks of
    :func:`default_estimate`, without its bytes and times.

    A sum of sixteen chunks, two per combining task, on two workers,
    depth-first: each worker that runs eight neighbouring chunks holds an
    open partial sum at every level of its half of the tree, where under
    Dask's default both workers work on one branch at a time:

    >>> deps = {f"c{i}": [] for i in range(16)}
    >>> order = []  # depth-first, as dask.order runs a tree reduction
    >>> def combine(keys, level):
    ...     if len(keys) == 1:
    ...         order.append(keys[0])
    ...         return keys[0]
    ...     ins = [combine(keys[: len(keys) // 2], level - 1),
    ...            combine(keys[len(keys) // 2 :], level - 1)]
    ...     key = f"p{level}-{keys[0]}"
    ...     deps[key] = ins
    ...     order.append(key)
    ...     return key
    >>> top = combine([f"c{i}" for i in range(16)], 4)
    >>> priority = {k: i for i, k in enumerate(order)}
    >>> at = {f"c{i}": "a" if i < 8 else "b" for i in range(16)}
    >>> [p.tolist() for p in peaks(deps, {"a": 1, "b": 1}, at, priority)]
    [[5.0, 5.0], [4.0, 4.0]]

    Complexity: O(edges log edges).
    """
    g = build_graph(dependencies)
    size = np.ones(g.n)
    rank = per_node(g, priority, default=np.inf, name="priority", nonnegative=False)
    index = {w: i for i, w in enumerate(workers)}
    planned = np.full(g.n, -1, dtype=np.int64)
    for k, w in assignment.items():
        i = g.index.get(k)
        if i is not None and w in index:
            planned[i] = index[w]
    _place_by_inputs(g, planned, size, len(workers), spread=True)
    default = _default_placement(g, workers, size, priority, spread=True)
    return (_open_peaks(g, planned, rank, size, len(workers)),
            _open_peaks(g, default, rank, size, len(workers)))


def _open_peaks(g, where: np.ndarray, rank: np.ndarray, size: np.ndarray,
                n_w: int) -> np.ndarray:
    """Each worker's peak of open results under one placement (``where``
    per node, -1: nowhere), as :func:`default_estimate` predicts it."""
    placed = np.flatnonzero(where[: g.n_tasks] >= 0)
    clock = np.full(g.n, np.nan)
    order = placed[np.lexsort((placed, rank[placed], where[placed]))]
    w = where[order]
    starts = np.searchsorted(w, np.arange(n_w + 1))
    count = np.diff(starts)
    place = np.arange(len(order)) - starts[w]
    clock[order] = (place + 1) / count[w]
    # a result: open from its task to its last reader (the end, if none)
    e = (where[g.src] >= 0) & (where[g.dst] >= 0) & (g.src < g.n_tasks)
    src, dst = g.src[e], g.dst[e]
    last = np.zeros(g.n)
    np.maximum.at(last, src, clock[dst])
    end = np.where(np.isin(np.arange(g.n), src), last, 1.0)
    t0, t1, wk, b = [clock[placed]], [end[placed]], [where[placed]], [size[placed]]
    # a copy: open on the reader's worker from its first reader there to its last
    away = where[src] != where[dst]
    if away.any():
        pair = src[away] * n_w + where[dst[away]]
        uniq, inv = np.unique(pair, return_inverse=True)
        first = np.full(len(uniq), np.inf)
        final = np.zeros(len(uniq))
        np.minimum.at(first, inv, clock[dst[away]])
        np.maximum.at(final, inv, clock[dst[away]])
        t0.append(first)
        t1.append(final)
        wk.append(uniq % n_w)
        b.append(size[uniq // n_w])
    t0, t1, wk, b = map(np.concatenate, (t0, t1, wk, b))
    # a sweep per worker: opened before closed at one time (a task's
    # inputs are still held when its result appears)
    t = np.r_[t0, t1]
    delta = np.r_[b, -b]
    worker = np.r_[wk, wk]
    o = np.lexsort((-delta, t, worker))
    worker = worker[o]
    level = np.cumsum(delta[o])
    # each worker's own running total: less what the workers before it held
    seg = np.flatnonzero(np.r_[True, worker[1:] != worker[:-1]])
    level -= np.repeat(np.r_[0.0, level][seg], np.diff(np.r_[seg, len(level)]))
    peak = np.zeros(n_w)
    np.maximum.at(peak, worker, level)
    return peak


def _default_placement(g, workers: Mapping[str, int], size: np.ndarray,
                       priority: Mapping[Key, float] | None,
                       spread: bool = False) -> np.ndarray:
    """The worker index of every task under Dask's default, as
    :func:`default_transfer` models it (``spread``: see
    :func:`_place_by_inputs`)."""
    if not isinstance(workers, Mapping) or not workers:
        raise TypeError("workers must be a non-empty mapping of address -> thread count")
    slots = np.repeat(np.arange(len(workers)), [max(1, int(t)) for t in workers.values()])
    rank = per_node(g, priority, default=np.inf, name="priority", nonnegative=False)
    where = np.full(g.n, -1, dtype=np.int64)
    roots = np.flatnonzero(g.indegree[: g.n_tasks] == 0)
    roots = roots[np.argsort(rank[roots], kind="stable")]
    where[roots] = slots[np.arange(len(roots)) % len(slots)]
    _place_by_inputs(g, where, size, len(workers), spread)
    return where


def _place_by_inputs(g, where: np.ndarray, size: np.ndarray, n_workers: int,
                     spread: bool = False) -> None:
    """Place every unplaced task, level by level, where most of its input
    bytes are; ties go to the first tied worker, or with ``spread`` to one
    chosen by task number."""
    by_src = np.argsort(g.src, kind="stable")
    out_starts = np.searchsorted(g.src[by_src], np.arange(g.n + 1))
    in_starts = np.searchsorted(g.dst, np.arange(g.n + 1))  # dst is sorted
    left = g.indegree.copy()
    frontier = np.flatnonzero(left == 0)
    while len(frontier):
        dst = g.dst[by_src[slices(out_starts, frontier)]]
        np.subtract.at(left, dst, 1)
        ready = np.unique(dst[left[dst] == 0])
        todo = ready[where[ready] < 0]
        e = slices(in_starts, todo)
        e = e[where[g.src[e]] >= 0]
        if len(e):
            pair = g.dst[e] * n_workers + where[g.src[e]]
            uniq, inv = np.unique(pair, return_inverse=True)
            total = np.bincount(inv, weights=size[g.src[e]])
            node, worker = uniq // n_workers, uniq % n_workers
            o = np.lexsort((-total, node))
            starts = np.flatnonzero(np.r_[True, node[o][1:] != node[o][:-1]])
            tied = 1
            if spread:
                top = np.repeat(total[o][starts], np.diff(np.r_[starts, len(o)]))
                tied = np.add.reduceat((total[o] == top).astype(np.int64), starts)
            first = o[starts + node[o][starts] % tied]
            where[node[first]] = worker[first]
        frontier = ready
