"""The planner: which tasks go to which worker.

Pure: plain mappings in, a :class:`Plan` out. It never imports
``distributed``, so it is tested in bulk and simulated at any scale.

It follows the six steps of the AutoRestrictor pull request
(dask/distributed#4864), each made linear in tasks plus edges and aware of
data sizes and balance:

1. roots: tasks with no dependencies;
2. terminals: tasks no other task needs;
3. the partition layer: walk down from the terminals until the layer is wide
   enough to give every worker thread work; tasks above it (the last steps
   of a reduction) are left to Dask, which places them next to their inputs;
4. groups: tasks below the layer that share inputs are one group
   (connected components),
5. except across *light* edges, whose data is cheap to send anywhere (a
   scalar, a global mean);
6. assignment: groups are laid out in priority order (dask.order keeps
   neighbours together) and dealt out to workers in contiguous runs
   weighted by threads; a group larger than a worker's share is split along
   that order; groups whose inputs are already in memory follow them; a
   group that cannot be split without moving most of its data (an
   all-to-all) is left to Dask.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import operator
from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from time import perf_counter
from typing import Any

import numpy as np
from scipy.sparse import csgraph

from autorestrictor.config import Options
from autorestrictor.graph import (
    Graph,
    adjacency,
    build_graph,
    distance_to_terminals,
    first_input_roots,
    slices,
    structural_rank,
)

logger = logging.getLogger("autorestrictor")

Key = Hashable

#: Items no larger than this fraction of the smallest worker share are dealt
#: out in one vectorised pass (each lands where its midpoint falls, so a
#: worker is off its share by at most half an item); larger items go through
#: the sequential pass that never splits them. Not an option: both passes
#: keep every worker within ``balance-tolerance``; this only picks the faster
#: one, and at 5% the vectorised pass errs by at most 2.5% of a share.
_SMALL_ITEM = 0.05

#: Pieces of the balanced alternative plan (see ``_fastest``), as a fraction
#: of a worker's share: small enough to be dealt in the vectorised pass, so
#: that contiguous runs of them end within a few percent of each share and
#: the seams fall only between workers' runs.
_FINE = _SMALL_ITEM

#: Deepest graph whose order is walked (see ``_run_order``).
_WALK_DEPTH = 64

#: A group is walked as a tree (``_run_order``, ``_settle_seams``) when no
#: task in it has more readers in the group than this: a reduction's
#: partials have one, a halo's neighbours two or three, a chunk read by a
#: climatology and its anomaly a few; a block of a product of 8 x 8 blocks
#: has 16, spread over the whole output, and the priority orders those
#: better. Not tuned beyond the bench.
_TREE_READERS = 8

#: A result read by more than this many tasks per worker reaches every
#: worker whatever the plan (a global mean, a coordinate array), so its pull
#: on a consumer shrinks with its fan-out (see ``_pull``). Twice rather than
#: once leaves a full pull to results read by a few tasks per worker (a
#: block of a product, a halo's neighbours); the factor was not tuned
#: beyond the bench.
_FANOUT_PER_WORKER = 2.0

#: At a seam a task moves to another piece only if that piece holds more
#: than this share of its inputs (by pull): with sizes unknown a plurality is
#: a guess, and a wrong guess moves a whole chunk.
_MAJORITY = 0.5

#: Rounds of ``_follow_majority``: each round looks one level further up.
#: Two settle a reduction's first two levels and a halo's overlap step; more
#: rounds changed no plan of the bench.
_MAJORITY_ROUNDS = 2


@dataclass(frozen=True)
class Plan:
    """What the planner decided for one graph.

    Attributes
    ----------
    workers:
        Worker addresses, in the order the planner dealt work to them.
    keys, worker_of:
        The pinned keys and, for each, an index into ``workers``.
    piece_of:
        For each pinned key, the piece (a group, or part of a split group)
        it belongs to. All keys of a piece are on one worker.
    n_tasks:
        Tasks in the graph (keys of ``dependencies``).
    n_groups:
        Groups formed (before any split), counting only pinned ones.
    predicted_bytes:
        Bytes the plan expects to cross workers: inputs of pinned tasks that
        live on another worker, plus, for each task left to Dask, its inputs
        not on the worker holding most of them.
    reason:
        ``None`` when the plan pins tasks; otherwise why it stepped back.
    notes:
        Decisions worth knowing (groups left to Dask as all-to-all, ...).
    plan_s:
        Seconds spent planning.
    nodes:
        For each pinned key, its position in ``dependencies``.
    finish:
        Predicted seconds until each worker (in the order of ``workers``)
        finishes its pinned work, when the planner was given a bandwidth
        (see :func:`predicted_finish`); otherwise ``None``.
    rank_of:
        For each pinned key, its place in the run order (dask.order's
        priority where given): sorting by it lists the pinned keys in the
        order they will run. Used to draw the plan (:mod:`autorestrictor.datamap`).
    """

    workers: list[str]
    keys: list[Key]
    worker_of: np.ndarray
    piece_of: np.ndarray
    n_tasks: int
    n_groups: int = 0
    predicted_bytes: int = 0
    reason: str | None = None
    notes: tuple[str, ...] = ()
    plan_s: float = 0.0
    cost_of: np.ndarray | None = field(default=None, repr=False)
    unit_of: np.ndarray | None = field(default=None, repr=False)
    sizes: dict | None = None
    rank_of: np.ndarray | None = field(default=None, repr=False)
    finish: tuple[float, ...] | None = None
    nodes: np.ndarray | None = field(default=None, repr=False)

    @property
    def units(self) -> np.ndarray:
        """For each pinned key, the position (in ``keys``) of its unit's first task.

        A unit is a task that starts a chain of work on its worker (a root,
        or a task whose inputs are all elsewhere) and the tasks that follow
        it: each task follows its first input in the same piece. Units are
        what the rebalancer moves between workers once the plan runs.
        """
        if self.unit_of is None:
            return np.arange(len(self.keys))
        return self.unit_of

    @property
    def applied(self) -> bool:
        """True when the plan pins at least one task."""
        return self.reason is None

    @property
    def n_pinned(self) -> int:
        return len(self.keys)

    @property
    def n_pieces(self) -> int:
        # (numbers may skip groups left to Dask; counted without a sort)
        return int(np.count_nonzero(np.bincount(self.piece_of))) if len(self.piece_of) else 0

    @cached_property
    def assignment(self) -> dict[Key, str]:
        """``key -> worker address`` for every pinned key; others are absent."""
        return dict(zip(self.keys, map(self.workers.__getitem__, self.worker_of.tolist())))

    @cached_property
    def load(self) -> dict[str, float]:
        """Pinned work (task count, or the given costs) per worker address."""
        per = np.bincount(self.worker_of, weights=self.cost_of, minlength=len(self.workers))
        return {w: float(x) for w, x in zip(self.workers, per)}

    def summary(self) -> dict[str, Any]:
        """A small JSON-able record of the plan."""
        return {
            "n_tasks": self.n_tasks,
            "n_pinned": self.n_pinned,
            "n_groups": self.n_groups,
            "n_pieces": self.n_pieces,
            "predicted_bytes": int(self.predicted_bytes),
            "pinned_per_worker": {w: x for w, x in self.load.items() if x},
            "plan_s": self.plan_s,
            "reason": self.reason,
            "notes": list(self.notes),
            "sizes": self.sizes,
            **({"predicted_finish_s": dict(zip(self.workers, self.finish))}
               if self.finish is not None else {}),
        }


def plan(
    dependencies: Mapping[Key, Iterable[Key]],
    workers: Mapping[str, int],
    *,
    nbytes: Mapping[Key, float] | None = None,
    priority: Mapping[Key, float] | None = None,
    who_has: Mapping[Key, str | Collection[str]] | None = None,
    skip: Collection[Key] = (),
    cost: Mapping[Key, float] | None = None,
    busy: Mapping[str, float] | None = None,
    placed_at_run_time: Collection[Key] = (),
    bandwidth: float | None = None,
    **options: Any,
) -> Plan:
    """Decide which tasks of a graph to pin to which worker.

    Parameters
    ----------
    dependencies:
        ``key -> keys it depends on``. Dependencies that are not keys of the
        mapping are results computed elsewhere (in memory, or by an earlier
        graph); they are never pinned.
    workers:
        ``address -> number of threads``.
    nbytes:
        Estimated output size of keys. Missing keys count as a typical task
        (the bytes-weighted median of the known sizes).
    priority:
        ``key -> number``, lower runs first (the last element of Dask's
        priority tuple, from ``dask.order``). Without it, a depth-first order
        from the outputs is used. Like ``cost``, it may instead be an array
        with one number per key of ``dependencies``, in its order (NaN where
        unknown): the scheduler plugin builds it so, without a dictionary
        of 200,000 tuple keys.
    who_has:
        ``key -> worker address`` (or addresses) for keys whose worker is
        already decided: results in memory, or tasks pinned by someone else.
        Work that consumes them follows them. A key held by several workers
        (replicated) is local to each of them and draws its readers to none.
    skip:
        Keys the planner must not pin and whose location is unknown (actors,
        tasks with resource or host restrictions, opted-out tasks).
    cost:
        ``key -> relative compute cost``; 1 per task when missing. Or an
        array in the order of ``dependencies``, as ``priority``.
    placed_at_run_time:
        Keys whose workers another party decides while the graph runs (a
        P2P shuffle's barrier, which picks where every output partition
        lives). They, and every task that depends on them, are left to
        Dask, which places each task next to its inputs.
    busy:
        ``address -> work already waiting on that worker``, in the units of
        ``cost`` (pinned work of earlier graphs). Work is dealt so that every
        worker finishes together: a busy worker gets less of this graph.
    bandwidth:
        Bytes per second between workers (the scheduler's measured
        bandwidth), with ``cost`` in seconds. Given, the plan predicts each
        worker's finish (its compute seconds, or the seconds to receive
        what it reads from other workers if longer, see
        :func:`predicted_finish`), and
        when the plan within ``balance-tolerance`` is uneven it is compared
        with one within ``balanced-tolerance``: the one predicted to finish
        first is taken.
    **options:
        Overrides of the configuration (each described in
        ``autorestrictor-schema.yaml``), e.g.
        ``min_tasks=1``, ``balance_tolerance=0.1``.

    Returns
    -------
    Plan

    Raises
    ------
    TypeError, ValueError
        For malformed inputs or options, naming what is wrong.

    Examples
    --------
    Two independent chains on two workers land whole, one per worker:

    >>> deps = {"a1": [], "b1": ["a1"], "a2": [], "b2": ["a2"]}
    >>> p = plan(deps, {"w1": 1, "w2": 1}, min_tasks=1)
    >>> p.assignment["a1"] == p.assignment["b1"] != p.assignment["a2"]
    True

    Notes
    -----
    Complexity: O(tasks + edges) array work plus O(tasks log tasks) for two
    sorts in C; Python-level loops run once per key (numbering) and once per
    piece of a split group, never per edge or recursively.
    """
    opts = Options.from_config(**options)
    if bandwidth is not None and not bandwidth > 0:
        raise ValueError(f"bandwidth must be a positive number of bytes per second, "
                         f"got {bandwidth!r}")
    start = perf_counter()
    addrs, threads = _check_workers(workers)
    g = build_graph(dependencies)

    def step_back(reason: str) -> Plan:
        return Plan(
            workers=addrs, keys=[], worker_of=np.zeros(0, np.int64),
            piece_of=np.zeros(0, np.int64), n_tasks=g.n_tasks, reason=reason,
            plan_s=perf_counter() - start,
        )

    if g.n_tasks < opts.min_tasks:
        return step_back(f"graph has {g.n_tasks} tasks, fewer than min-tasks={opts.min_tasks}")
    if len(addrs) < 2:
        return step_back(f"{len(addrs)} worker(s): nothing to choose between")
    a, pinnable, reason = analyse(
        g, threads, opts, nbytes=nbytes, priority=priority, who_has=who_has, addrs=addrs,
        skip=skip, cost=cost, busy=busy, placed_at_run_time=placed_at_run_time,
    )
    if reason is not None:
        return step_back(reason)
    if _one_entry_each(a, pinnable):
        return step_back("every group grows from one task and feeds steps left to Dask: "
                         "Dask keeps each on one worker by itself (a task runs where its "
                         "inputs are), nothing to save")
    worker_of, piece_of, notes = assign_all(a, pinnable, opts)
    finish = None
    if bandwidth is not None:
        worker_of, piece_of, notes, finish = _fastest(
            a, pinnable, opts, bandwidth, (worker_of, piece_of, notes))
    pinned = np.flatnonzero(worker_of >= 0)
    if len(pinned) < max(1, opts.min_tasks) and notes:
        # What is left after the all-to-all groups is not worth pinning.
        return step_back("; ".join(notes))
    if len(pinned) == 0:
        return step_back("no task could be pinned")
    moved_by_plan = _crossing_fraction(g, worker_of, a.located, a.size, a.heavy)
    if moved_by_plan > opts.max_cut_fraction:
        return step_back(
            f"best plan still moves {moved_by_plan:.0%} of what the graph's tasks read "
            f"(max-cut-fraction={opts.max_cut_fraction}): no partition helps"
        )
    keys = list(map(g.keys.__getitem__, pinned.tolist()))
    return Plan(
        workers=addrs, keys=keys, worker_of=worker_of[pinned],
        piece_of=piece_of[pinned], n_tasks=g.n_tasks,
        n_groups=len(np.unique(a.comp[pinned])),
        predicted_bytes=int(predicted_transfer(g, worker_of, a.located, a.size)),
        notes=tuple(notes), plan_s=perf_counter() - start,
        cost_of=None if cost is None else a.cost[pinned],
        unit_of=_units(g, worker_of, piece_of, pinned),
        rank_of=a.rank[pinned],
        finish=None if finish is None else tuple(finish.tolist()),
        nodes=pinned,
    )


@dataclass(frozen=True)
class Analysis:
    """What steps 1-5 learnt about every node of one graph; step 6 reads it.

    Per-node arrays have one entry per node of ``g`` (tasks, then external
    keys); ``heavy`` has one per edge.
    """

    g: Graph
    threads: np.ndarray  #: threads per worker, in the order of the plan's workers
    busy: np.ndarray  #: work already waiting per worker (units of ``cost``)
    size: np.ndarray  #: output bytes (known, or the typical size)
    known: np.ndarray  #: whether ``size`` was given (else assumed)
    cost: np.ndarray  #: relative compute cost (1 when not given)
    located: np.ndarray  #: worker index already holding the output, or -1
    rank: np.ndarray  #: run order, lower first (dask.order's priority)
    structural: np.ndarray  #: the graph's own order (see ``structural_rank``)
    depth: np.ndarray  #: fewest edges to a terminal
    comp: np.ndarray  #: group label (steps 4-5)
    heavy: np.ndarray  #: per edge: its data is heavy enough to glue groups
    pinnable: np.ndarray  #: nodes the planner may pin (step 3)

    @property
    def n_workers(self) -> int:
        return len(self.threads)

    @cached_property
    def walk(self) -> tuple[np.ndarray, np.ndarray]:
        """``(order key per node, per group label: walked as a tree)``, see
        ``_run_order``; made the first time a group is split, at most once
        per graph (a plan that splits nothing never pays for it)."""
        return _run_order(self.g, np.flatnonzero(self.pinnable), self.comp, self.rank,
                          self.structural)


def analyse(
    g: Graph,
    threads: np.ndarray,
    opts: Options,
    *,
    nbytes: Mapping[Key, float] | None,
    priority: Mapping[Key, float] | None,
    who_has: Mapping[Key, str | Collection[str]] | None,
    addrs: list[str],
    skip: Collection[Key],
    cost: Mapping[Key, float] | None,
    busy: Mapping[str, float] | None = None,
    placed_at_run_time: Collection[Key] = (),
) -> tuple[Analysis, np.ndarray, str | None]:
    """Steps 1 to 5: roots, terminals, the partition layer and the groups.

    Returns the analysis, the mask of nodes the planner may pin, and the
    reason to step back (``None`` when there is parallelism to spread).
    Complexity: O(tasks + edges) plus two sorts in C.
    """
    size, known = node_sizes_known(g, nbytes)
    located = _located(g, who_has, addrs)
    pinnable = np.zeros(g.n, dtype=bool)
    pinnable[: g.n_tasks] = True
    pinnable &= located < 0
    if who_has:  # placed, on one worker or several: never pinned
        pinnable[_indices(g, who_has)] = False
    if skip:
        pinnable[_indices(g, skip)] = False
    if placed_at_run_time:
        pinnable &= ~downstream(g, _indices(g, placed_at_run_time))

    # Steps 1 and 2.
    roots = find_roots(g)
    depth = distance_to_terminals(g, find_terminals(g))
    structural = structural_rank(g, depth)

    # Step 3.
    target = max(2, int(np.ceil(opts.partition_factor * threads.sum())))
    layer_depth, width = partition_layer(depth, roots, target)
    reason = None
    if width < 2:
        reason = f"widest layer of the graph has {width} task(s): no parallelism to spread"
    lower = (depth >= layer_depth) | roots | (depth < 0)
    pinnable &= lower

    # Steps 4 and 5.
    heavy = size[g.src] >= opts.light_edge_fraction * _typical_size(size)
    member = lower & (pinnable | (located >= 0))
    broadcast = find_broadcasts(g, len(threads))
    heavy &= ~broadcast[g.src]
    cost_arr = per_node(g, cost, default=1.0, name="cost")
    cost_arr[broadcast] = 0.0  # a small operand: not work to balance
    comp = find_groups(g, member, heavy)
    a = Analysis(
        g=g, threads=threads, busy=_busy(busy, addrs), size=size, known=known,
        cost=cost_arr, located=located, rank=_ranks(g, priority, structural),
        structural=structural, depth=depth, comp=comp, heavy=heavy, pinnable=pinnable,
    )
    return a, pinnable, reason


# ---------------------------------------------------------------------------
# The six steps
# ---------------------------------------------------------------------------


def _one_entry_each(a: Analysis, pinnable: np.ndarray) -> bool:
    """Whether every group grows from one task (the only one of its tasks
    with no input inside the group), nothing reads placed data and no
    task the planner would pin is a result the client asked for.

    Such a group (a chain of steps on one chunk, a pipeline per partition)
    crosses workers under Dask's default only if Dask moves it on purpose:
    each of its tasks has all its inputs on the worker that ran the first.
    Pinning it saves no byte and takes away Dask's freedom to balance. A
    group that ends in a result the client asked for is different: that
    result may outlive the graph (``persist``), and where it lands decides
    what a later graph combining neighbours must move.
    """
    g = a.g
    if (a.located >= 0).any():
        return False
    nodes = np.flatnonzero(pinnable)
    if find_terminals(g)[nodes].any():
        return False
    inside = pinnable[g.src] & pinnable[g.dst] & (a.comp[g.src] == a.comp[g.dst])
    fed = np.zeros(g.n, dtype=bool)
    fed[g.dst[inside]] = True
    first = nodes[~fed[nodes]]
    per_group = np.bincount(a.comp[first], minlength=int(a.comp.max()) + 1)
    return bool(per_group.max(initial=0) <= 1)


def downstream(g: Graph, sources: np.ndarray) -> np.ndarray:
    """Mask of ``sources`` and every node that depends on them, directly or not.

    Complexity: O(tasks + edges) (one breadth-first walk in C).
    """
    out = np.zeros(g.n, dtype=bool)
    if len(sources) == 0:
        return out
    super_node = g.n
    rows = np.concatenate([g.src, np.full(len(sources), super_node, dtype=np.int64)])
    cols = np.concatenate([g.dst, sources])
    order = csgraph.breadth_first_order(
        adjacency(g.n + 1, rows, cols), super_node, directed=True, return_predecessors=False
    )
    out[order[order < g.n]] = True
    return out


def find_roots(g: Graph) -> np.ndarray:
    """Step 1. Mask of nodes with no dependencies. O(edges)."""
    return g.indegree == 0


def find_terminals(g: Graph) -> np.ndarray:
    """Step 2. Mask of nodes no other node depends on. O(edges)."""
    return g.outdegree == 0


def partition_layer(depth: np.ndarray, roots: np.ndarray, target: int) -> tuple[int, int]:
    """Step 3. How far below the terminals the partition layer sits.

    The layer at depth ``d`` holds the tasks at distance ``d`` from the
    nearest terminal, plus the roots nearer than that (a root cannot move
    further down). It starts at the terminals and moves down until it holds
    ``target`` tasks; if it never does, the widest layer is used.

    Returns ``(depth of the layer, number of tasks in it)``.

    Complexity: O(tasks) (two ``bincount`` calls and a cumulative sum).
    """
    reached = depth >= 0
    if not reached.any():
        return 0, int(roots.sum())
    size = int(depth.max()) + 1
    at = np.bincount(depth[reached & ~roots], minlength=size)
    roots_at = np.bincount(depth[reached & roots], minlength=size)
    roots_above = np.concatenate([[0], np.cumsum(roots_at)[:-1]])
    width = at + roots_at + roots_above
    wide = np.flatnonzero(width >= target)
    d = int(wide[0]) if len(wide) else int(np.argmax(width))
    return d, int(width[d])


def find_groups(g: Graph, member: np.ndarray, heavy: np.ndarray) -> np.ndarray:
    """Steps 4 and 5. Label each node with its group.

    Two members are in one group when a path of heavy edges between members
    joins them, that is when they share (heavy) inputs, directly or through
    other members. This is the seed's "partition nodes sharing roots land in
    the same group", computed as connected components instead of root sets,
    so shared ancestors are visited once, not once per descendant.

    Complexity: O(tasks + edges) (scipy's connected components).
    """
    keep = heavy & member[g.src] & member[g.dst]
    _, labels = csgraph.connected_components(
        adjacency(g.n, g.src[keep], g.dst[keep]), directed=True, connection="weak"
    )
    return labels


#: Slices of slices followed when looking for broadcasts (``find_broadcasts``):
#: a broadcast operand reaches its consumers through at most a getitem and a
#: reshape; deeper single-input chains are a chunk's own pipeline.
_SLICE_DEPTH = 3

#: Fewest tasks a broadcast must reach. A broadcast operand meets every
#: chunk; a task read by a dozen others or fewer is as likely a busy task
#: inside one small subgraph, and treating it as a broadcast would split
#: that subgraph to save at most a dozen transfers.
_MIN_BROADCAST_READERS = 12

#: A broadcast is a pattern of few operands read by many: if consumers read
#: more distinct broadcast candidates than this, the candidates are the
#: inputs of an all-to-all (a rechunk, a transpose), not broadcasts.
_MAX_BROADCASTS_PER_CONSUMER = 2


def find_broadcasts(g: Graph, n_workers: int) -> np.ndarray:
    """Step 4, first: mask of nodes whose output is broadcast to the whole graph.

    A small operand used against every chunk (weights, a bias, a mask, a
    global mean) is read, directly or through slices (tasks with that one
    input, such as ``getitem``), by far more tasks than there are workers.
    Each worker fetches it once whatever the plan, so its edges must not glue
    its readers into one group, whether or not its size is known. Its slices
    are not broadcasts: each is glued to the tasks that read it, as a
    chunk's own input would be.

    a. A node is a candidate if it reaches more than ``_FANOUT_PER_WORKER``
       tasks per worker, more than the square root of the graph's size and
       more than ``_MIN_BROADCAST_READERS`` (so that, on few workers, a busy
       task inside one small subgraph is not taken for a broadcast; a
       broadcast reaches every chunk).
    b. If the tasks the candidates reach typically read several of them,
       the pattern is an all-to-all (a rechunk, a transpose), not a
       broadcast, and nothing is marked.

    Complexity: O(edges) per slice level (``_SLICE_DEPTH`` levels), plus one
    sort of the candidates' edges.
    """
    src, dst = g.src, g.dst
    is_slice = g.indegree == 1
    reach = np.ones(g.n)
    for _ in range(_SLICE_DEPTH):  # a reader counts once, a slice as what it reaches
        # (at least itself: a slice nobody reads is a reader too)
        through = np.where(is_slice[dst], np.maximum(reach[dst], 1.0), 1.0)
        reach = np.bincount(src, weights=through, minlength=g.n)
    candidate = reach > max(_FANOUT_PER_WORKER * n_workers, np.sqrt(g.n),
                            _MIN_BROADCAST_READERS)
    if not candidate.any():
        return candidate
    head = np.where(candidate, np.arange(g.n), -1)
    for _ in range(_SLICE_DEPTH):  # follow slices to the tasks they feed
        e = is_slice[dst] & (head[src] >= 0) & (head[dst] < 0)
        head[dst[e]] = head[src[e]]
    e = (head[src] >= 0) & ~is_slice[dst]
    pairs = np.unique(dst[e] * g.n + head[src[e]])
    per_reader = np.bincount(pairs // g.n)
    per_reader = per_reader[per_reader > 0]  # (none when every reader is a slice)
    if len(per_reader) and np.quantile(per_reader, 0.9) > _MAX_BROADCASTS_PER_CONSUMER:
        return np.zeros(g.n, dtype=bool)
    return candidate


#: Rounds of step 6. Each round leaves the groups found to be all-to-all to
#: Dask and deals the rest again. With fewer tasks left a worker's share
#: shrinks, so another group may now need a split that fails; three rounds
#: settled every graph of the tests and the bench. Not an option: it bounds
#: planning time, it does not trade one outcome for another.
_ASSIGN_ROUNDS = 3


def assign_all(a: Analysis, pinnable: np.ndarray, opts: Options, fine: bool = False) -> tuple[
    np.ndarray, np.ndarray, list[str]
]:
    """Step 6, repeated while groups turn out to be all-to-all (see ``assign``).

    Returns ``(worker per node, piece per node, notes)``; -1 where a node is
    left to Dask.
    """
    pinnable = pinnable.copy()
    notes: list[str] = []
    for _ in range(_ASSIGN_ROUNDS):
        worker_of, piece_of, all_to_all, note = assign(a, pinnable, opts, fine=fine)
        if note:
            notes.append(note)
        if not all_to_all.any():
            break
        pinnable &= ~all_to_all
        worker_of[all_to_all] = -1
    return worker_of, piece_of, notes


def assign(
    a: Analysis, pinnable: np.ndarray, opts: Options, spread: bool = False, fine: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str | None]:
    """Step 6. Give every pinnable node a worker (or -1 to leave it to Dask).

    a. Lay the pinnable nodes out in order: groups in the graph's own
       order (``structural_rank``: the order the keys were given), and
       within a group by priority. dask.order breaks ties between
       independent groups by key name, which scatters neighbouring chunks;
       the graph's order keeps them together, so that a later graph
       combining neighbours finds them on one worker.
    b. Split each group heavier than ``(1 + balance-tolerance)`` worker
       shares, or reading data in memory on several workers, and with more
       than one task side by side, into share-sized pieces (``_split``).
       A chain is never split: it runs one task after another.
    c. A piece that reads data already placed (in memory) goes where most of
       that data is.
    d. The other pieces are dealt out in order, in contiguous runs, each
       worker receiving its share of what is left weighted by its threads.
    e. A split group whose seams would carry more than ``max-cut-fraction``
       of its internal bytes is an all-to-all, to be left to Dask. A split
       group whose pieces could not be balanced (one root drags most of the
       group with it) is tried once more with ties between inputs spread
       (``spread``, see ``_tree_roots``), and left to Dask if still
       lopsided.

    Returns ``(worker per node, piece per node, mask of all-to-all nodes,
    a note saying why they are left to Dask or None)``.

    Complexity: O(tasks + edges) plus sorts in C and a Python loop over
    pieces only when pieces are large compared with a worker's share.
    """
    g, threads = a.g, a.threads
    worker_of = np.full(g.n, -1, dtype=np.int64)
    piece_of = np.full(g.n, -1, dtype=np.int64)
    nothing = np.zeros(g.n, dtype=bool)
    nodes = np.flatnonzero(pinnable)
    if len(nodes) == 0:
        return worker_of, piece_of, nothing, None

    # a. Order: groups in the graph's order, then tasks by priority.
    c = a.comp[nodes]
    first = np.full(a.comp.max() + 1, np.inf)
    np.minimum.at(first, c, a.structural[nodes])
    order = np.lexsort((a.rank[nodes], c, first[c]))
    nodes, c = nodes[order], c[order]
    total = float(a.cost[nodes].sum())
    share = total / threads.sum()  # fair work per thread
    whole = share * threads.mean()  # a worker's share
    piece_size = whole * (_FINE if fine else 1.0)

    # b. Split heavy groups with parallelism.
    split = _groups_to_split(a, nodes, c, len(first), share, opts,
                             at_least=piece_size if fine else None)
    sub = np.zeros(len(nodes), dtype=np.int64)
    if split.any():
        walk, tree = a.walk
        order = np.lexsort((walk[nodes], c, first[c]))
        nodes, c = nodes[order], c[order]
        sub = _split(a, nodes, c, split, piece_size, spread, tree if fine else None)
        order = np.lexsort((walk[nodes], sub, c, first[c]))
        nodes, c, sub = nodes[order], c[order], sub[order]
    boundary = np.r_[True, (c[1:] != c[:-1]) | (sub[1:] != sub[:-1])]
    piece = np.cumsum(boundary) - 1
    piece_load = np.bincount(piece, weights=a.cost[nodes])

    # c. Pieces that read placed data follow it.
    piece_worker = _follow_placed(a, nodes, piece, len(piece_load))

    # d. Deal the other pieces out in contiguous runs.
    free = piece_worker < 0
    placed_load = np.bincount(
        piece_worker[~free], weights=piece_load[~free], minlength=len(threads)
    )
    even = (total + a.busy.sum()) * threads / threads.sum()  # all finish together
    capacity = np.maximum(even - a.busy - placed_load, 0.0)
    piece_worker[free] = _deal(piece_load[free], capacity, opts.balance_tolerance,
                               round_within=opts.balance_tolerance if fine else None,
                               cut_cost=_cut_cost(a, nodes, piece, free) if fine else None)
    worker_of[nodes] = piece_worker[piece]
    piece_of[nodes] = piece
    if not split.any():
        return worker_of, piece_of, nothing, None
    crossed = _crossed(nodes, c, worker_of, split & a.walk[1])
    if crossed.any():
        _settle_seams(a, nodes[crossed[c]], worker_of, piece_of)

    # e. Leave all-to-all groups to Dask, and split groups whose pieces
    # could not be balanced (one root drags most of the group with it).
    bound = (1 + opts.balance_tolerance) * whole * threads.max() / threads.mean()
    big = _too_big(piece_load, piece, a.cost[nodes], bound)
    lopsided = np.zeros(len(split), dtype=bool)
    lopsided[c[boundary][big]] = True
    lopsided &= split
    if lopsided.any() and not spread:
        return assign(a, pinnable, opts, spread=True, fine=fine)
    frac = _cut_fractions(a, worker_of, split)
    cut = split & (frac > opts.max_cut_fraction)
    lopsided &= ~cut
    bad = cut | lopsided
    if not bad.any():
        return worker_of, piece_of, nothing, None
    drop = bad[a.comp] & (worker_of >= 0)
    return worker_of, piece_of, drop, _left_to_dask(cut, lopsided, frac, int(drop.sum()), opts)


def _run_order(g: Graph, nodes: np.ndarray, comp: np.ndarray, rank: np.ndarray,
               structural: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 6a: each node's place within its group, for cutting and dealing.

    A depth-first walk down each group from its last tasks: every task hangs
    under the reader that runs first (dask.order's priority), and a task's
    inputs are visited in the graph's own order. A reduction's subtrees then
    come out contiguous and in chunk order, a chunk next to the slice of a
    shared operand its product reads, and the end of one group meets the
    start of the next at neighbouring chunks, so that a worker's run is one
    stretch of the input. (dask.order's own priority starts a subtree
    part-way through and walks chunks from the last: cut into runs, its
    seams fall on every level of the tree.) Groups in which a task has more
    than ``_TREE_READERS`` readers, and graphs deeper than ``_WALK_DEPTH``
    (long chains, where nothing is cut), keep the priority.

    ``nodes`` are the nodes that may be pinned, ``comp`` their group labels.
    Returns the order key of every node (the priority outside ``nodes``)
    and, per group label, whether the group was walked as a tree. Made at
    most once per graph (``Analysis.walk``): dropping whole groups, as
    ``assign_all`` does, changes no other group's order.

    Complexity: O(edges log edges) for the sorts, plus array work once per
    level of the walk.
    """
    n_groups = int(comp.max()) + 1 if len(comp) else 1
    out = rank.astype(np.float64)
    tree = np.zeros(n_groups, dtype=bool)
    if len(nodes) == 0:
        return out, tree
    c = comp[nodes]
    rank = rank[nodes]
    local = np.full(g.n, -1, dtype=np.int64)
    local[nodes] = np.arange(len(nodes))
    e = (local[g.src] >= 0) & (local[g.dst] >= 0)
    src, dst = local[g.src[e]], local[g.dst[e]]
    same = c[src] == c[dst]
    src, dst = src[same], dst[same]
    n = len(nodes)
    # Only groups shaped like trees (no task read by more than
    # _TREE_READERS tasks of its group) are walked; elsewhere (a product of
    # blocks each read by many) the priority orders better.
    shared = np.bincount(src, minlength=n) > _TREE_READERS
    tree[np.unique(c)] = True
    tree[c[shared]] = False
    # Each task's reader that runs first: its parent in the walk.
    parent = np.full(n, -1, dtype=np.int64)
    if len(src):
        o = np.lexsort((rank[dst], src))
        firsts = o[np.r_[True, src[o][1:] != src[o][:-1]]]
        parent[src[firsts]] = dst[firsts]
    # Levels from the top (tasks no task of their group reads).
    frontier = np.flatnonzero(parent < 0)
    children_of = np.argsort(parent, kind="stable")
    counts = np.bincount(parent[parent >= 0], minlength=n)
    first_child = np.r_[0, np.cumsum(counts)][:-1] + int((parent < 0).sum())
    levels = [frontier]
    while True:
        if len(levels) > _WALK_DEPTH:
            return out, np.zeros(n_groups, dtype=bool)
        kids = _children(frontier, children_of, first_child, counts)
        if len(kids) == 0:
            break
        levels.append(kids)
        frontier = kids
    # Subtree sizes, bottom up.
    size = np.ones(n)
    for kids in reversed(levels[1:]):
        size += np.bincount(parent[kids], weights=size[kids], minlength=n)
    # Preorder, top down: each group's tops in the graph's order, then each
    # task's children in the graph's order.
    structural = structural[nodes]
    pre = np.zeros(n)
    tops = levels[0]
    tops = tops[np.lexsort((structural[tops], c[tops]))]
    starts = np.r_[True, c[tops][1:] != c[tops][:-1]]
    csum = np.cumsum(size[tops])
    group_start = np.maximum.accumulate(np.where(starts, csum - size[tops], 0.0))
    pre[tops] = csum - size[tops] - group_start
    for kids in levels[1:]:
        kids = kids[np.lexsort((structural[kids], parent[kids]))]
        par = parent[kids]
        first = np.r_[True, par[1:] != par[:-1]]
        csum = np.cumsum(size[kids])
        before = np.maximum.accumulate(np.where(first, csum - size[kids], 0.0))
        pre[kids] = pre[par] + 1 + (csum - size[kids] - before)
    out[nodes] = np.where(tree[c], pre, rank)
    return out, tree


def _children(frontier: np.ndarray, children_of: np.ndarray, first_child: np.ndarray,
              counts: np.ndarray) -> np.ndarray:
    """The children of every node in ``frontier``, in one array."""
    n_kids = counts[frontier]
    total = int(n_kids.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    base = np.repeat(first_child[frontier], n_kids)
    offset = np.arange(total) - np.repeat(np.cumsum(n_kids) - n_kids, n_kids)
    return children_of[base + offset]


def _groups_to_split(
    a: Analysis, nodes: np.ndarray, c: np.ndarray, n_groups: int, share: float, opts: Options,
    at_least: float | None = None,
) -> np.ndarray:
    """Step 6b, which groups: mask over group labels.

    A group is split when it is heavier than ``1 + balance-tolerance``
    shares of the largest worker, or reads data in memory on several workers
    (each part then runs where its own inputs are), and only when it has two
    tasks side by side (a chain runs one task after another). For the
    balanced plan (``at_least``: its piece size), every group heavier than a
    piece may be split: whole groups can be as lopsided as a share, and the
    runs dealt in order keep whole every group that a seam does not cross.
    """
    comp_load = np.bincount(c, weights=a.cost[nodes], minlength=n_groups)
    split = comp_load > (1 + opts.balance_tolerance) * share * a.threads.max()
    if at_least is not None:
        split |= comp_load > at_least
    loc = np.flatnonzero(a.located >= 0)
    if len(loc):
        w = a.n_workers
        pairs = np.unique(a.comp[loc].astype(np.int64) * w + a.located[loc])
        split |= np.bincount(pairs // w, minlength=n_groups)[:n_groups] > 1
    return split & _wide(c, a.depth[nodes], n_groups)


def _split(
    a: Analysis,
    nodes: np.ndarray,
    c: np.ndarray,
    split: np.ndarray,
    piece_size: float,
    spread: bool,
    single: np.ndarray | None = None,
) -> np.ndarray:
    """Step 6b, how: the piece number, within its group, of every node in ``nodes``.

    Every task follows its heaviest input down to a root (its "tree"); the
    group's roots, in priority order, are cut into runs of ``piece_size``
    work, counting the tasks that follow each root, and every tree goes with
    its root. Then, at the seams, a task moves to the piece holding most of
    its inputs (``_follow_majority``). Contiguous runs of priority tend to be
    neighbours, so halos and tree reductions get few seams, and a chunk's
    later steps stay with the chunk even when a global statistic sits in
    between. Trees rooted in placed data form one piece per worker holding
    it. Nodes of groups that are not split are in piece 0. In the groups
    marked in ``single`` (by group label) every tree is a piece of its own,
    so that a seam can fall between any two roots.
    """
    g = a.g
    member = np.zeros(g.n, dtype=bool)
    member[nodes] = True
    placed = a.located >= 0
    anchor = _tree_roots(
        g, member | placed, a.comp, a.heavy, a.size, a.rank, a.n_workers, spread
    )
    tree_load = np.bincount(anchor[nodes], weights=a.cost[nodes], minlength=g.n)
    in_split = split[c]
    is_root = in_split & (anchor[nodes] == nodes)
    r, rc = nodes[is_root], c[is_root]  # already in (group, priority) order
    rl = tree_load[r]
    starts = np.flatnonzero(np.r_[True, rc[1:] != rc[:-1]])[: len(rc)]
    before = np.repeat(np.cumsum(rl)[starts] - rl[starts], np.diff(np.r_[starts, len(rc)]))
    bucket = np.zeros(g.n, dtype=np.int64)
    bucket[r] = np.floor((np.cumsum(rl) - rl / 2 - before) / piece_size)
    if single is not None and single.any():
        one = single[rc]
        in_group = np.arange(len(r)) - np.repeat(starts, np.diff(np.r_[starts, len(rc)]))
        bucket[r[one]] = in_group[one]
    bucket[placed] = -1 - a.located[placed]
    split_nodes = nodes[in_split]
    bucket[split_nodes] = bucket[anchor[split_nodes]]
    movable = np.zeros(g.n, dtype=bool)
    movable[split_nodes[anchor[split_nodes] != split_nodes]] = True
    _follow_majority(g, bucket, movable, member | placed, a.comp, a.heavy, a.size, a.n_workers)
    sub = np.zeros(len(nodes), dtype=np.int64)
    sub[in_split] = bucket[split_nodes]
    return sub


def _too_big(piece_load: np.ndarray, piece: np.ndarray, cost: np.ndarray,
             bound: float) -> np.ndarray:
    """Mask over pieces heavier than ``bound`` beside their heaviest task.

    A single task heavier than a share is indivisible: no placement, Dask's
    included, balances it, so only the weight beside a piece's heaviest task
    counts (a kind never seen is priced at Dask's 0.5 s among
    sub-millisecond learned ones). ``piece`` and ``cost`` are per node.
    """
    big = piece_load > bound
    if big.any():
        heaviest = np.zeros(len(piece_load))
        in_big = big[piece]
        np.maximum.at(heaviest, piece[in_big], cost[in_big])
        big &= piece_load - heaviest > bound
    return big


def _crossed(nodes: np.ndarray, c: np.ndarray, worker_of: np.ndarray,
             among: np.ndarray) -> np.ndarray:
    """Mask over group labels: the groups of ``among`` whose tasks are on more
    than one worker (a seam crosses them). ``nodes`` are sorted by group, so
    each group is one slice."""
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    w = worker_of[nodes]
    out = np.zeros(len(among), dtype=bool)
    out[c[starts]] = np.minimum.reduceat(w, starts) < np.maximum.reduceat(w, starts)
    return out & among


def _settle_seams(a: Analysis, nodes: np.ndarray, worker_of: np.ndarray,
                  piece_of: np.ndarray) -> None:
    """Step 6d, at the seams: a task of a split group whose inputs are mostly
    (more than ``_MAJORITY``, by pull) on one other worker moves there, into
    the piece of its heaviest input on that worker.

    ``_follow_majority`` settles seams between pieces before they are dealt;
    between small pieces no piece holds a majority of a reduction's upper
    levels, though one worker does. Repeated while tasks move, one level
    further up each time (at most ``_WALK_DEPTH`` rounds). Updates
    ``worker_of`` and ``piece_of`` in place.

    Complexity: O(edges log edges) per round (one sort).
    """
    g = a.g
    movable = np.zeros(g.n, dtype=bool)
    movable[nodes] = True
    where = np.where(worker_of >= 0, worker_of, a.located)
    e = a.heavy & movable[g.dst] & (where[g.src] >= 0) & (a.comp[g.src] == a.comp[g.dst])
    src, dst = g.src[e], g.dst[e]
    if len(src) == 0:
        return
    pull = _pull(g, src, a.size, a.n_workers)
    n_w = a.n_workers
    for _ in range(_WALK_DEPTH):
        wk = where[src]
        uniq, inv = np.unique(dst * n_w + wk, return_inverse=True)
        sums = np.bincount(inv, weights=pull)
        owner, cand = uniq // n_w, uniq % n_w
        total = np.bincount(owner, weights=sums, minlength=g.n)
        best = np.lexsort((-sums, owner))
        best = best[np.r_[True, owner[best][1:] != owner[best][:-1]]]
        best = best[(sums[best] > _MAJORITY * total[owner[best]])
                    & (cand[best] != worker_of[owner[best]])]
        if len(best) == 0:
            return
        moving, to = owner[best], cand[best]
        # the piece of the heaviest input each moving task has on its new worker
        target = np.full(g.n, -1, dtype=np.int64)
        target[moving] = to
        mine = (target[dst] >= 0) & (where[src] == target[dst]) & (worker_of[src] >= 0)
        o = np.lexsort((-pull[mine], dst[mine]))
        d, s_ = dst[mine][o], src[mine][o]
        head = np.r_[True, d[1:] != d[:-1]]
        piece_from = np.full(g.n, -1, dtype=np.int64)
        piece_from[d[head]] = piece_of[s_[head]]
        ok = piece_from[moving] >= 0  # (an input only in memory there names no piece)
        moving, to = moving[ok], to[ok]
        if len(moving) == 0:
            return
        worker_of[moving] = to
        piece_of[moving] = piece_from[moving]
        where[moving] = to


def _follow_placed(
    a: Analysis, nodes: np.ndarray, piece: np.ndarray, n_pieces: int
) -> np.ndarray:
    """Step 6c: the worker of each piece that reads placed data (most bytes), else -1."""
    g, n_workers = a.g, a.n_workers
    piece_worker = np.full(n_pieces, -1, dtype=np.int64)
    node_piece = np.full(g.n, -1, dtype=np.int64)
    node_piece[nodes] = piece
    e = a.heavy & (a.located[g.src] >= 0) & (node_piece[g.dst] >= 0)
    if e.any():
        p, wk, b = node_piece[g.dst[e]], a.located[g.src[e]], a.size[g.src[e]]
        uniq, inv = np.unique(p * n_workers + wk, return_inverse=True)
        sums = np.bincount(inv, weights=b)
        best = np.lexsort((-sums, uniq // n_workers))  # per piece, most bytes first
        first_of_piece = np.r_[True, np.diff(uniq[best] // n_workers) != 0]
        chosen = uniq[best][first_of_piece]
        piece_worker[chosen // n_workers] = chosen % n_workers
    return piece_worker


def _cut_fractions(a: Analysis, worker_of: np.ndarray, split: np.ndarray) -> np.ndarray:
    """Step 6e: per split group, the share of its internal bytes that cross workers."""
    g, comp = a.g, a.comp
    inner = (comp[g.src] == comp[g.dst]) & (worker_of[g.src] >= 0) & (worker_of[g.dst] >= 0)
    inner &= split[np.minimum(comp[g.src], len(split) - 1)]
    ec = comp[g.src[inner]]
    b = a.size[g.src[inner]]
    crossing = worker_of[g.src[inner]] != worker_of[g.dst[inner]]
    return np.bincount(ec, weights=b * crossing, minlength=len(split)) / np.maximum(
        np.bincount(ec, weights=b, minlength=len(split)), 1e-300
    )


def _left_to_dask(
    cut: np.ndarray, lopsided: np.ndarray, frac: np.ndarray, n_tasks: int, opts: Options
) -> str:
    """Step 6e: the note saying which groups are left to Dask, and why."""
    why = []
    if cut.any():
        why.append(
            f"{int(cut.sum())} all-to-all (a balanced split moves up to "
            f"{float(frac[cut].max()):.0%} of what their tasks read; "
            f"max-cut-fraction={opts.max_cut_fraction})"
        )
    if lopsided.any():
        why.append(
            f"{int(lopsided.sum())} that no split balances (one root drags "
            f"most of the group with it)"
        )
    return (
        f"{int(cut.sum() + lopsided.sum())} group(s) of {n_tasks} tasks left to Dask: "
        + "; ".join(why)
    )


def _cut_cost(a: Analysis, nodes: np.ndarray, piece: np.ndarray,
              free: np.ndarray) -> np.ndarray:
    """Bytes a seam before each dealt item would send, were it the only seam.

    Items are the ``free`` pieces in the order they are dealt; entry ``j``
    (of ``len(items) + 1``) is the size of every output read across a seam
    between items ``j - 1`` and ``j``: an edge between items ``i < k`` is cut
    by every seam ``i < j <= k``. Edges to nodes outside ``nodes`` or in
    pieces that follow placed data cross no seam of the deal.

    Complexity: O(edges) with one cumulative sum.
    """
    n_items = int(free.sum())
    item = np.full(len(free), -1, dtype=np.int64)
    item[free] = np.arange(n_items)
    where = np.full(a.g.n, -1, dtype=np.int64)
    where[nodes] = item[piece]
    i, k = where[a.g.src], where[a.g.dst]
    e = (i >= 0) & (k >= 0) & (i != k)
    lo, hi, size = np.minimum(i[e], k[e]), np.maximum(i[e], k[e]), a.size[a.g.src[e]]
    step = np.zeros(n_items + 2)
    np.add.at(step, lo + 1, size)
    np.add.at(step, hi + 1, -size)
    return np.cumsum(step)[: n_items + 1]


def _deal(load: np.ndarray, capacity: np.ndarray, tolerance: float,
          round_within: float | None = None,
          cut_cost: np.ndarray | None = None) -> np.ndarray:
    """Deal items (in order) to workers in contiguous runs. Returns a worker per item.

    Each worker takes items until it reaches its share of what is left; it
    takes one more item only if that keeps it within ``1 + tolerance`` of its
    share and brings it closer to the share than stopping short would, and
    takes none when the next is more than twice its share.
    Shares are recomputed at each change of worker, so an early overshoot is
    absorbed by the rest. Small items are dealt in one
    vectorised pass: each goes to the worker whose share its midpoint falls in.
    Seams then move to round item numbers (``_round_seams``) within half the
    tolerance of a share, or within ``round_within`` of a share when given
    (the balanced plan, whose pieces are single trees: item numbers are
    then chunk numbers, give or take).

    Complexity: O(items) (vectorised), or one Python step per item when some
    item is large compared with a share (then items are few).
    """
    n_items = len(load)
    if n_items == 0:
        return np.zeros(0, dtype=np.int64)
    if load.sum() <= 0:  # nothing to balance (broadcast operands cost nothing)
        return np.full(n_items, int(np.argmax(capacity)), dtype=np.int64)
    if capacity.sum() <= 0:  # everyone is full with placed data: spread evenly
        capacity = np.ones_like(capacity)
    total = float(load.sum())
    capacity = capacity * (total / capacity.sum())
    positive = capacity[capacity > 0]
    if load.max() <= _SMALL_ITEM * positive.min():
        edges = np.cumsum(capacity)
        mid = np.cumsum(load) - load / 2
        out = np.minimum(np.searchsorted(edges, mid, side="right"), len(capacity) - 1)
        slack = tolerance / 2 if round_within is None else round_within
        return _round_seams(out, load, edges, capacity * slack, cut_cost)

    out = np.empty(n_items, dtype=np.int64)
    last = len(capacity) - 1
    cur, filled, left = 0, 0.0, total
    cap = capacity[0]
    loads = load.tolist()
    for i, x in enumerate(loads):
        # A worker moves on when it is full, when one more item would take
        # it further past its share than stopping short, or, still empty,
        # when the item is more than twice its share (a worker busy with an
        # earlier graph is better left with nothing than with a whole chain).
        while cur < last and (
            cap <= 0 or (filled > 0 and _better_without(filled, x, cap, tolerance))
            or (filled == 0 and x > 2 * cap)
        ):
            left -= filled
            cur, filled = cur + 1, 0.0
            cap = _share_of_rest(left, capacity, cur)
        out[i] = cur
        filled += x
        if cur < last and filled >= cap:
            left -= filled
            cur, filled = cur + 1, 0.0
            cap = _share_of_rest(left, capacity, cur)
    if round_within is not None:
        return _round_seams(out, load, np.cumsum(capacity), capacity * round_within, cut_cost)
    return out


def _share_of_rest(left: float, capacity: np.ndarray, cur: int) -> float:
    """Worker ``cur``'s share of ``left``, among the workers from ``cur`` on."""
    rest = float(capacity[cur:].sum())
    return left * float(capacity[cur]) / rest if rest > 0 else 0.0


def _round_seams(
    out: np.ndarray, load: np.ndarray, edges: np.ndarray, slack: np.ndarray,
    cut_cost: np.ndarray | None = None,
) -> np.ndarray:
    """Move each seam between two workers' runs to a cheaper item number nearby.

    ``out`` is the even deal; each seam moves within ``slack`` (in load) of
    the even cut, and each worker's run stays within its own slack of its
    share, so a worker stays within the balance tolerance of its share.
    Among those places the seams are chosen together (one pass of dynamic
    programming over the seams, a few candidates each) for the least
    ``cut_cost`` in all, the bytes a seam before each item would send.

    Without costs, or where costs tie, a seam goes to the item number with
    the most factors of two. Dask combines neighbouring chunks in aligned
    blocks: a tree reduction with ``split_every=4`` joins chunks 0-3, 4-7,
    then 0-15, ...; a coarser rechunk joins multiples of its factor. A seam
    at item 24 cuts no block of 4 or 8, a seam at 25 cuts one at every
    level, so where results are kept (``persist``) and combined later the
    round number saves one transfer per level.

    Complexity: O(items) to find the candidates, then O(seams x
    candidates^2) with at most ``_SEAM_CANDIDATES`` per seam.
    """
    n = len(out)
    before = np.r_[0.0, np.cumsum(load)]  # load of items [0, j)
    even = np.searchsorted(out, np.arange(1, len(edges)))  # first item of worker k + 1
    share = np.diff(np.r_[0.0, edges])
    options = []
    for k, s in enumerate(even.tolist()):
        h = min(slack[k], slack[k + 1])
        lo = max(int(np.searchsorted(before, edges[k] - h, side="left")), 1)
        hi = min(int(np.searchsorted(before, edges[k] + h, side="right")), n)
        cand = np.arange(lo, hi) if hi > lo else np.array([min(max(s, 1), n)])
        power = cand & -cand
        price = np.zeros(len(cand)) if cut_cost is None else cut_cost[cand]
        rank = np.lexsort((np.abs(cand - s), -power, price))[:_SEAM_CANDIDATES]
        options.append((cand[rank], price[rank], -np.log2(np.maximum(power[rank], 1)),
                        np.abs(cand[rank] - s)))
    seams = _cheapest_path(options, before, share, slack)
    if seams is None:  # no choice keeps every run within its slack: the even cut
        seams = even
    return np.searchsorted(seams, np.arange(n), side="right")


_SEAM_CANDIDATES = 24


def _cheapest_path(options: list, before: np.ndarray, share: np.ndarray,
                   slack: np.ndarray) -> np.ndarray | None:
    """One candidate per seam, each run within its slack of its share, least
    (price, then roundness, then distance) in all; ``None`` if none is.

    ``options[k]`` holds seam ``k``'s candidates and their three scores.
    Scores are summed along a path and compared in that order: per seam,
    each candidate takes the best feasible predecessor by its rank among
    the predecessors' totals (one array pass over candidates x candidates).
    """
    if not options:
        return np.zeros(0, dtype=np.int64)
    cand, *scores = options[0]
    totals = np.array(scores, dtype=np.float64)  # (3, candidates)
    totals[0, np.abs(before[cand] - share[0]) > slack[0]] = np.inf
    back = []
    for k in range(1, len(options)):
        prev = cand
        cand, *scores = options[k]
        rank = np.empty(len(prev), dtype=np.int64)
        rank[np.lexsort(totals[::-1])] = np.arange(len(prev))
        run = before[cand][:, None] - before[prev][None, :]
        ok = (np.abs(run - share[k]) <= slack[k]) & (prev[None, :] < cand[:, None])
        ok &= np.isfinite(totals[0])[None, :]
        pick = np.where(ok, rank[None, :], len(prev)).argmin(axis=1)
        totals = totals[:, pick] + np.array(scores, dtype=np.float64)
        totals[0, ~ok[np.arange(len(cand)), pick]] = np.inf
        back.append(pick)
    j = int(np.lexsort(totals[::-1])[0])
    if not np.isfinite(totals[0, j]):
        return None
    picks = [j]
    for pick in reversed(back):
        picks.append(int(pick[picks[-1]]))
    picks.reverse()
    return np.array([int(options[k][0][i]) for k, i in enumerate(picks)], dtype=np.int64)


def _tree_roots(
    g: Graph,
    member: np.ndarray,
    comp: np.ndarray,
    heavy: np.ndarray,
    size: np.ndarray,
    rank: np.ndarray,
    n_workers: int,
    spread: bool = False,
) -> np.ndarray:
    """For every node, the root reached by always following its heaviest input.

    An input's pull is its size, discounted when it feeds more tasks than
    there are workers (see ``_pull``), so a chunk follows its own data
    rather than a global mean.
    Ties go to the input fewer tasks read, a chunk's own data rather than an
    operand it shares with other chunks (sizes are often unknown before a
    first run), then to the input whose own inputs fewer tasks read (a
    block's own factor rather than its slice of a factor all blocks share,
    as in a tall-and-skinny QR), then to the input that runs first, which keeps the tasks
    reading one block together; with ``spread``, to the tied input numbered by the
    task's own number modulo the number of ties, for graphs where always the
    first hangs every task on one tree (the outputs of a two-stage rechunk
    each read one slice of every intermediate). Only heavy edges between
    members of one group count; a node without such an input is a root (its
    own).

    Complexity: O(edges log edges) for one sort, then O(tasks log depth) for
    pointer jumping; no recursion.
    """
    parent = np.arange(g.n, dtype=np.int64)
    e = heavy & member[g.src] & member[g.dst] & (comp[g.src] == comp[g.dst])
    src, dst = g.src[e], g.dst[e]
    if len(src):
        pull = _pull(g, src, size, n_workers)
        # An input made from an output that many tasks read (a slice of a
        # shared factor) is shared one step up: its own inputs' readers.
        up = np.zeros(g.n, dtype=np.int64)
        np.maximum.at(up, g.dst, g.outdegree[g.src])
        order = np.lexsort((rank[src], up[src], g.outdegree[src], -pull, dst))
        d, p = dst[order], pull[order]
        starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
        pick = starts
        if spread:
            top = np.repeat(p[starts], np.diff(np.r_[starts, len(d)]))
            tied = np.add.reduceat((p == top).astype(np.int64), starts)
            pick = starts + d[starts] % tied
        parent[d[pick]] = src[order[pick]]
    while True:
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            return parent
        parent = nxt


def _pull(g: Graph, src: np.ndarray, size: np.ndarray, n_workers: int) -> np.ndarray:
    """How strongly each input draws its consumer to its worker.

    Its size, unless it feeds more than ``_FANOUT_PER_WORKER`` tasks per
    worker: such a result (a global mean, a coordinate array) ends up on
    every worker whatever the plan, so its pull shrinks with its fan-out.
    """
    fanout = g.outdegree[src].clip(min=1)
    return size[src] * np.minimum(1.0, _FANOUT_PER_WORKER * n_workers / fanout)


def _follow_majority(
    g: Graph,
    bucket: np.ndarray,
    movable: np.ndarray,
    member: np.ndarray,
    comp: np.ndarray,
    heavy: np.ndarray,
    size: np.ndarray,
    n_workers: int,
    rounds: int = _MAJORITY_ROUNDS,
) -> None:
    """Move each non-root task of a split group to the piece most of its inputs are in.

    Following one input (``_tree_roots``) is right inside a piece; at a seam
    a task reading three inputs from one piece and one from the next should
    not follow the one. A task moves only to a piece that holds more than
    ``_MAJORITY`` of its inputs (weighted by pull). Each round looks one
    level further up. Updates ``bucket`` in place.

    Complexity: O(edges log edges) per round (one sort).
    """
    e = heavy & movable[g.dst] & member[g.src] & (comp[g.src] == comp[g.dst])
    src, dst = g.src[e], g.dst[e]
    if len(src) == 0:
        return
    pull = _pull(g, src, size, n_workers)
    for _ in range(rounds):
        b = bucket[src]
        low = int(b.min())
        span = int(b.max()) - low + 1
        key = dst * span + (b - low)
        uniq, inv = np.unique(key, return_inverse=True)
        sums = np.bincount(inv, weights=pull)
        owner = uniq // span
        candidate = uniq % span + low
        total = np.bincount(owner, weights=sums)
        best = np.lexsort((-sums, owner))
        first = best[np.r_[True, owner[best][1:] != owner[best][:-1]]]
        # move only to a piece holding a majority of the task's inputs
        first = first[sums[first] > _MAJORITY * total[owner[first]]]
        new = candidate[first]
        if np.array_equal(bucket[owner[first]], new):
            return
        bucket[owner[first]] = new


def _better_without(filled: float, x: float, cap: float, tolerance: float) -> bool:
    over = filled + x - cap
    return over > tolerance * cap or over > cap - filled


def _wide(c: np.ndarray, depth: np.ndarray, n_comp: int) -> np.ndarray:
    """Which groups have two tasks at one depth (a chain has none).

    By the pigeonhole principle a group has two tasks at one depth exactly
    when it has more tasks than depths between its shallowest and deepest.

    Complexity: O(tasks), no sort.
    """
    lo = np.full(n_comp, np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full(n_comp, -1, dtype=np.int64)
    np.minimum.at(lo, c, depth)
    np.maximum.at(hi, c, depth)
    return np.bincount(c, minlength=n_comp) > hi - lo + 1


def _crossing_fraction(
    g: Graph, worker_of: np.ndarray, located: np.ndarray, size: np.ndarray, heavy: np.ndarray
) -> float:
    """Share of the bytes on heavy edges between placed tasks that cross workers.

    Edges are weighted by their input's size, the measure the all-to-all
    test of ``assign`` uses for one group. Light edges (small results,
    broadcasts) cost little wherever their ends are, and are not counted.
    O(edges).
    """
    where = np.where(worker_of >= 0, worker_of, located)
    s, d = where[g.src], where[g.dst]
    both = (s >= 0) & (d >= 0) & heavy
    b = size[g.src[both]]
    return float((b * (s[both] != d[both])).sum() / max(float(b.sum()), 1e-300))


def _fastest(a: Analysis, pinnable: np.ndarray, opts: Options, bandwidth: float,
             first: tuple) -> tuple:
    """Step 6, with time: the plan within ``balance-tolerance`` (``first``, the
    result of :func:`assign_all`) or, if its predicted finish is uneven, the
    one within ``balanced-tolerance``, whichever is predicted to finish
    first. Returns ``(worker_of, piece_of, notes, finish per worker)``.

    Splitting groups for balance adds seams; where sending is cheap next to
    computing the balanced plan wins, where it is dear the plan with fewer
    seams does. A second assignment is made only for an uneven plan. The
    first plan with whole subtrees moved (:func:`_shed`) takes the balanced
    plan's place when every worker is predicted to finish within
    ``subtree-tolerance`` of an even finish and it sends fewer bytes: each
    of its moves sends one result, so it is allowed to be a little less
    even than a plan whose seams cut runs of chunks (on the README's
    example, 7 partial sums cross at 3.8% over an even finish, where
    within 3% the fewest it finds is 9).
    """
    worker_of, piece_of, notes = first
    finish = predicted_finish(a, worker_of, bandwidth)
    tight = opts.balanced_tolerance
    if tight >= opts.balance_tolerance or finish.max() <= (1 + tight) * _even_finish(a, finish):
        return worker_of, piece_of, notes, finish
    alt = assign_all(a, pinnable, dataclasses.replace(opts, balance_tolerance=tight), fine=True)
    alt_finish = predicted_finish(a, alt[0], bandwidth)
    loose = opts.subtree_tolerance
    shed = _shed(a, worker_of, piece_of, loose)
    if shed is not None:
        shed_finish = predicted_finish(a, shed[0], bandwidth)
        if shed_finish.max() <= (1 + loose) * _even_finish(a, shed_finish) and (
                predicted_transfer(a.g, shed[0], a.located, a.size)
                < predicted_transfer(a.g, alt[0], a.located, a.size)):
            alt, alt_finish = (*shed, notes), shed_finish
    # (a plan that leaves more to Dask predicts nothing of what it leaves)
    if (alt[0] >= 0).sum() >= (worker_of >= 0).sum() and alt_finish.max() < finish.max():
        return (*alt, alt_finish)
    return worker_of, piece_of, notes, finish


def _shed(a: Analysis, worker_of: np.ndarray, piece_of: np.ndarray,
          tolerance: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The plan ``worker_of``, with whole subtrees moved from its fullest
    workers to its emptiest until every worker is within ``tolerance`` of
    its share; ``None`` if nothing moved.

    A subtree is a task and every task that reaches the rest of the graph
    only through it (each has one reader), all on one worker, reading
    nothing heavy from outside: a partial sum and its chunks. Moving one
    sends one result, its top's, to its reader; moving instead the far end
    of a run of chunks, as dealing in runs does, cuts every level of the
    tree that the seam crosses. On a sum of 200 chunks in subtrees of 64,
    64, 64 and 8 on four workers, the fourth takes a sixteen-chunk subtree
    from each of the others, and a few smaller moves even out the rest: 7
    results cross where three seams between runs cross 9
    (``test_a_balanced_column_sum_moves_whole_subtrees``). Each move takes,
    from the fullest worker, the subtree whose work is nearest to half the
    gap between it and the emptiest worker, and never one that would take
    the emptiest past the fullest. O(nodes) array work, then at most
    ``4 x workers`` moves, each looking at one worker's subtrees; graphs
    deeper than ``_WALK_DEPTH`` are not looked at.
    """
    g, n_w, depth = a.g, a.n_workers, a.depth
    if depth.max() > _WALK_DEPTH:
        return None
    one = (g.outdegree[g.src] == 1) & (g.src < g.n_tasks)
    parent = np.full(g.n, -1, dtype=np.int64)
    parent[g.src[one]] = g.dst[one]
    worker_of, piece_of = worker_of.copy(), piece_of.copy()
    fixed = (worker_of < 0) | (parent < 0)  # cannot move, nor can a subtree holding it
    fixed[g.dst[a.heavy & ~one]] = True  # (reads a heavy input from outside)
    load = a.cost.copy()
    up = np.flatnonzero(parent >= 0)
    up = up[np.argsort(-depth[up], kind="stable")]  # deepest first: children before parents
    bounds = np.flatnonzero(np.r_[True, depth[up][1:] != depth[up][:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        v = up[lo:hi]
        np.add.at(load, parent[v], load[v])
        np.logical_or.at(fixed, parent[v], fixed[v] | (worker_of[v] != worker_of[parent[v]]))
    kids = up[np.argsort(parent[up], kind="stable")]
    starts = np.searchsorted(parent[kids], np.arange(g.n + 1))
    movable = np.flatnonzero(~fixed)
    movable = movable[np.argsort(worker_of[movable], kind="stable")]
    on = np.searchsorted(worker_of[movable], np.arange(n_w + 1))
    pinned = worker_of >= 0
    work = np.bincount(worker_of[pinned], weights=a.cost[pinned], minlength=n_w) + a.busy
    even = work.sum() * a.threads / a.threads.sum()
    first_new = next_piece = int(piece_of.max()) + 1  # (a moved subtree is a piece)
    for _ in range(4 * n_w):
        ratio = work / even
        w, u = int(ratio.argmax()), int(ratio.argmin())
        if ratio[w] <= 1 + tolerance:
            break
        most = even[u] * ratio[w] - work[u]  # takes u no further than w was
        target = most * even[w] / (even[u] + even[w])  # (the two meet)
        cand = movable[on[w]:on[w + 1]]
        cand = cand[~fixed[cand] & (load[cand] < most)]
        if len(cand) == 0:
            break
        top = cand[np.argmin(np.abs(load[cand] - target))]
        tree, frontier = [], np.array([top])
        while len(frontier):
            tree.append(frontier)
            frontier = kids[slices(starts, frontier)]
        tree = np.concatenate(tree)
        worker_of[tree] = u
        piece_of[tree] = next_piece
        next_piece += 1
        fixed[tree] = True  # (moved once)
        p = parent[top]
        while p >= 0 and not fixed[p]:
            fixed[p] = True
            p = parent[p]
        work[w] -= load[top]
        work[u] += load[top]
    return (worker_of, piece_of) if next_piece > first_new else None


def _even_finish(a: Analysis, finish: np.ndarray) -> float:
    """The finish if every worker had the same share of threads' work."""
    work = float((finish * a.threads).sum())
    return work / float(a.threads.sum())


def predicted_finish(a: Analysis, worker_of: np.ndarray, bandwidth: float) -> np.ndarray:
    """Predicted seconds until each worker finishes its part of the plan.

    Its work already waiting (``busy``) and its pinned compute (``cost``, in
    seconds), over its threads, or, if longer, the seconds to receive each
    output it reads that is made or held on another worker (once per
    output): a Dask worker fetches its inputs while it computes, so the
    longer of the two sets its finish. An output's seconds are its size
    over ``bandwidth`` bytes per second, and where its size is assumed, at
    least the seconds its task takes to compute (an unknown output is taken
    to be as dear to send as to make, so that a plan does not win on sizes
    nobody measured). Tasks left to Dask count on no worker. O(edges log
    edges).
    """
    return finish_per_worker(a.g, worker_of, located=a.located, size=a.size, known=a.known,
                             cost=a.cost, busy=a.busy, threads=a.threads, bandwidth=bandwidth)


def finish_per_worker(
    g: Graph, worker_of: np.ndarray, *, located: np.ndarray, size: np.ndarray,
    known: np.ndarray, cost: np.ndarray, busy: np.ndarray, threads: np.ndarray,
    bandwidth: float,
) -> np.ndarray:
    """:func:`predicted_finish` of any placement: ``worker_of`` per node (-1:
    on no worker), ``located`` per node (where a result already is, or -1),
    the rest as in :class:`Analysis`. Used for the plan and for an estimate
    of Dask's default placement of the same graph
    (:func:`autorestrictor.datamap.default_estimate`).
    """
    n_w = len(threads)
    pinned = worker_of >= 0
    compute = np.bincount(worker_of[pinned], weights=cost[pinned], minlength=n_w)
    where = np.where(pinned, worker_of, located)
    src_w, dst_w = where[g.src], worker_of[g.dst]
    cross = (src_w >= 0) & (dst_w >= 0) & (src_w != dst_w)
    pairs = np.unique(g.src[cross] * n_w + dst_w[cross])
    src = pairs // n_w
    seconds = size[src] / bandwidth
    guessed = ~known[src]
    seconds[guessed] = np.maximum(seconds[guessed], cost[src[guessed]])
    received = np.bincount(pairs % n_w, weights=seconds, minlength=n_w)
    return np.maximum((busy + compute) / threads, received)


def predicted_transfer(
    g: Graph, worker_of: np.ndarray, located: np.ndarray, size: np.ndarray
) -> float:
    """Bytes the plan expects to cross workers.

    An output is sent once to each other worker that needs it. A task left to
    Dask is assumed to run where most of its (placed) inputs are.

    Complexity: O(edges log edges) (one ``np.unique`` over edges).
    """
    where = np.where(worker_of >= 0, worker_of, located)
    n_w = int(where.max()) + 1 if (where >= 0).any() else 1
    src_w, dst_w = where[g.src], where[g.dst]
    known = src_w >= 0
    # Pinned destinations: send each output once per other worker.
    cross = known & (dst_w >= 0) & (src_w != dst_w)
    pairs = np.unique(g.src[cross] * n_w + dst_w[cross])
    total = float(size[pairs // n_w].sum())
    # Destinations left to Dask: everything but the largest local share moves.
    free = known & (dst_w < 0) & (g.dst < g.n_tasks)
    if free.any():
        d, wk, b = g.dst[free], src_w[free], size[g.src[free]]
        uniq, inv = np.unique(d * n_w + wk, return_inverse=True)
        per = np.bincount(inv, weights=b)
        owner = uniq // n_w
        best = np.zeros(int(owner.max()) + 1)
        np.maximum.at(best, owner, per)
        total += float(per.sum() - best[np.unique(owner)].sum())
    return total


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


def _units(
    g: Graph, worker_of: np.ndarray, piece_of: np.ndarray, pinned: np.ndarray
) -> np.ndarray:
    """For each pinned node, the position in ``pinned`` of its unit's first task.

    Every pinned task follows its first input (lowest node number) that is
    pinned in the same piece, down to a task with no such input.

    Complexity: O(edges) plus O(tasks log depth) pointer jumping.
    """
    e = (worker_of[g.src] >= 0) & (piece_of[g.src] == piece_of[g.dst]) & (worker_of[g.dst] >= 0)
    first = first_input_roots(g, e)
    position = np.full(g.n, -1, dtype=np.int64)
    position[pinned] = np.arange(len(pinned))
    return position[first[pinned]]


def _busy(busy: Mapping[str, float] | None, addrs: list[str]) -> np.ndarray:
    out = np.zeros(len(addrs))
    if not busy:
        return out
    if not isinstance(busy, Mapping):
        raise TypeError(f"busy must be a mapping of address -> work, got {type(busy).__name__}")
    for i, addr in enumerate(addrs):
        x = busy.get(addr, 0.0)
        if not isinstance(x, (int, float, np.number)) or not np.isfinite(x) or x < 0:
            raise ValueError(f"busy[{addr!r}] is {x!r}; expected a finite number >= 0")
        out[i] = float(x)
    return out


@dataclass(frozen=True)
class Sizes:
    """Output sizes for a graph, and where each came from."""

    nbytes: dict  #: key -> bytes, for every key whose size is measured or learned
    measured: int  #: results in memory: their real size
    learned: int  #: tasks not run yet: the mean size of their prefix's earlier results
    assumed: int  #: neither: the planner assumes a typical size

    def counts(self) -> dict[str, int]:
        return {"measured": self.measured, "learned": self.learned, "assumed": self.assumed}


def estimate_sizes(
    measured: Mapping[Key, float],
    prefix_of: Mapping[Key, str],
    learned: Mapping[str, float],
    per_key: Mapping[Key, float] | None = None,
) -> Sizes:
    """Sizes in order of trust: measured, learned per key, learned per
    prefix, else unknown.

    Parameters
    ----------
    measured:
        ``key -> bytes`` of results in memory.
    per_key:
        ``key -> bytes`` learned for the task itself (the task at the same
        place in an earlier graph of the same shape).
    prefix_of:
        ``key -> task prefix`` for the graph's tasks (``"sum"`` for
        ``("sum-<token>", 0, 3)``).
    learned:
        ``prefix -> mean bytes`` of results of that prefix seen before
        (earlier graphs on the same scheduler).

    Examples
    --------
    >>> s = estimate_sizes({"a": 8}, {"a": "x", "b": "x", "c": "y"}, {"x": 80.0})
    >>> s.nbytes, s.counts()
    ({'a': 8, 'b': 80.0}, {'measured': 1, 'learned': 1, 'assumed': 1})
    """
    nbytes = dict(measured)
    if not learned or not learned.keys() & set(prefix_of.values()):
        # nothing of these kinds learned yet (a first graph): set operations
        # in C, not a loop over the keys
        return Sizes(nbytes, len(measured), 0, len(prefix_of.keys() - nbytes.keys()))
    learned_n = assumed = 0
    per_key = per_key or {}
    for key, prefix in prefix_of.items():
        if key in nbytes:
            continue
        size = per_key.get(key)
        if size is None:
            size = learned.get(prefix)
        if size is None:
            assumed += 1
        else:
            nbytes[key] = size
            learned_n += 1
    return Sizes(nbytes, len(measured), learned_n, assumed)


def _check_workers(workers: Mapping[str, int]) -> tuple[list[str], np.ndarray]:
    if not isinstance(workers, Mapping):
        raise TypeError(
            f"workers must be a mapping of address -> thread count, got {type(workers).__name__}"
        )
    addrs = list(workers)
    threads = []
    for a, t in workers.items():
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1:
            raise ValueError(f"worker {a!r} has {t!r} threads; expected an integer >= 1")
        threads.append(int(t))
    return addrs, np.asarray(threads, dtype=np.float64)


def _positions(g: Graph, keys: Collection[Key]) -> np.ndarray:
    """Node number of each key, -1 for keys not in the graph. O(len(keys)), in C."""
    if len(keys) == g.n_tasks and all(map(operator.is_, keys, g.keys)):
        return np.arange(g.n_tasks, dtype=np.int64)  # the very same keys, same order
    return np.fromiter(
        map(g.index.get, keys, itertools.repeat(-1)), dtype=np.int64, count=len(keys)
    )


def _indices(g: Graph, keys: Collection[Key]) -> np.ndarray:
    idx = _positions(g, list(keys))
    return idx[idx >= 0]


def per_node(
    g: Graph,
    values: Mapping[Key, float] | None,
    default: float,
    name: str,
    nonnegative: bool = True,
) -> np.ndarray:
    """Spread ``key -> number`` over the nodes; ``default`` where absent or None.

    ``values`` may also be an array with one number per task, in the order
    of the graph's ``dependencies`` (nodes ``0 .. n_tasks - 1``; NaN where
    absent).
    """
    out = np.full(g.n, np.nan)
    if isinstance(values, np.ndarray):
        if values.shape != (g.n_tasks,):
            raise ValueError(
                f"{name} given as an array must have one value per key of dependencies "
                f"({g.n_tasks}), got shape {values.shape}")
        arr = values.astype(np.float64, copy=False)
        bad = np.isinf(arr) | (arr < 0 if nonnegative else False)
        if bad.any():
            raise ValueError(
                f"{name} values must be finite numbers{' >= 0' if nonnegative else ''}")
        out[: g.n_tasks] = arr
    elif values:
        if not isinstance(values, Mapping):
            raise TypeError(f"{name} must be a mapping of key -> number")
        idx = _positions(g, values)
        try:
            arr = np.fromiter(values.values(), dtype=np.float64, count=len(values))
        except (TypeError, ValueError):
            try:  # None for unknown values, or sequences (rejected below)
                arr = np.asarray(list(values.values()), dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{name} values must be numbers (or None)") from e
        if arr.ndim != 1:
            raise ValueError(f"{name} values must be numbers, not sequences")
        bad = np.isinf(arr) | (arr < 0 if nonnegative else False)
        if bad.any():
            raise ValueError(
                f"{name} values must be finite numbers{' >= 0' if nonnegative else ''}"
            )
        hit = idx >= 0
        out[idx[hit]] = arr[hit]
    out[np.isnan(out)] = default
    return out


def node_sizes(g: Graph, nbytes: Mapping[Key, float] | None) -> np.ndarray:
    """Output bytes per node: given, else the typical given size, else 1."""
    return node_sizes_known(g, nbytes)[0]


def node_sizes_known(g: Graph, nbytes: Mapping[Key, float] | None) -> tuple[
    np.ndarray, np.ndarray
]:
    """:func:`node_sizes`, and the mask of the nodes whose size was given."""
    size = per_node(g, nbytes, default=np.nan, name="nbytes")
    known = ~np.isnan(size)
    size[~known] = _typical_size(size[known]) if known.any() else 1.0
    return size, known


def _typical_size(size: np.ndarray) -> float:
    """The bytes-weighted median: half of all bytes are in outputs at least this big.

    Unlike the plain median it is not dragged down by many tiny outputs (a
    tree of scalars), and unlike the maximum one huge output cannot move it.
    """
    size = size[size > 0]
    if len(size) == 0:
        return 1.0
    s = np.sort(size)
    cum = np.cumsum(s)
    return float(s[np.searchsorted(cum, cum[-1] / 2)])


def _located(
    g: Graph, who_has: Mapping[Key, str | Collection[str]] | None, addrs: list[str]
) -> np.ndarray:
    located = np.full(g.n, -1, dtype=np.int64)
    if not who_has:
        return located
    if not isinstance(who_has, Mapping):
        raise TypeError("who_has must be a mapping of key -> worker address(es)")
    widx = {a: i for i, a in enumerate(addrs)}
    for k, where in who_has.items():
        i = g.index.get(k)
        if i is None:
            continue
        holders = [where] if isinstance(where, str) else list(where)
        known = [widx[h] for h in holders if h in widx]
        if len(known) == 1:
            located[i] = known[0]
        # held by several workers (replicated, scattered with broadcast=True):
        # local to each of them, so it draws its readers to none
    return located


def _ranks(g: Graph, priority: Mapping[Key, float] | None, fallback: np.ndarray) -> np.ndarray:
    """A run-order value for every node (lower first), used only to sort.

    The given priorities where known; nodes without one come after all of
    them, in the ``fallback`` order.
    """
    p = per_node(g, priority, default=np.nan, name="priority", nonnegative=False)
    unknown = np.isnan(p)
    if unknown.any():
        base = np.nanmax(p) + 1 if not unknown.all() else 0.0
        p[unknown] = base + fallback[unknown]
    return p
