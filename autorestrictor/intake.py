"""Reading the scheduler: its state turned into the policies' plain inputs.

The plugin's hooks and ``explain()`` read the scheduler only through this
module: the planner's inputs for a new graph (:func:`read_graph`), the
workers and their pinned work, what a task is doing for admission, and what
the rebalancer and the seams need. Nothing here changes the scheduler (that
is :mod:`autorestrictor.actions`); nothing here decides (that is the pure
policies).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping

import dask.config
import numpy as np

from autorestrictor.admission import Status
from autorestrictor.compat import P2PBarrierTask, is_p2p_barrier, selects
from autorestrictor.learning import SELECTION_SECONDS, Learned, clashing, told_apart
from autorestrictor.planner import Sizes, estimate_sizes
from autorestrictor.state import HOLD, PENDING, Batch, State, Unit

logger = logging.getLogger("autorestrictor")

#: Processing tasks admission looks at, at most, on a worker that seems
#: full, to find those still waiting for inputs from other workers (see
#: :func:`fetching`); a worker with more than this many is busy anyway.
FETCH_SCAN = 32


@dataclasses.dataclass
class GraphInputs:
    """A new graph as the planner takes it (the keyword arguments of
    :func:`autorestrictor.plan`), and where its sizes came from."""

    dependencies: dict
    workers: dict[str, int]
    nbytes: dict
    priority: np.ndarray  # in the order of dependencies; NaN: unknown
    who_has: dict
    skip: list
    cost: np.ndarray  # in the order of dependencies
    busy: dict[str, float]
    placed_at_run_time: list
    bandwidth: float  # bytes per second between workers, as the scheduler measures it
    sizes: Sizes
    tasks: list  # the tasks of ``dependencies``, in its order

    def plan_kwargs(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del out["sizes"], out["tasks"]
        return out


def read_graph(scheduler, keys: Iterable[Hashable], annotations: dict,
               state: State, states: frozenset = frozenset({"released"})) -> GraphInputs:
    """The planner's inputs for a graph of ``keys``, from the scheduler's state.

    Touched tasks that must not move (already placed, restricted by the user
    or by P2P, actors, opted out, no longer ``released``) stay in the graph
    so its shape is right, as located or skipped nodes. Each task's cost is
    its kind's expected duration, and each worker's pinned work still
    waiting is passed as ``busy``, so that graphs submitted together spread
    over the cluster. ``states`` are the task states that may be pinned
    (a new graph's tasks are all ``released``; a late plan's may be queued
    or waiting). One pass over the new tasks and their inputs.
    """
    tasks = scheduler.tasks
    opted_out = annotations.get("autorestrict", {})
    held_at = state.queues.held_at
    unknown = unknown_duration(scheduler)
    # Per task, appended to lists in graph order: the planner takes ``cost``
    # and ``priority`` as arrays in the order of ``dependencies``, so no
    # dictionary of tuple keys (each store hashes the key anew) is built
    # for them.
    order: list = []
    tss: list = []
    deps_of: list = []
    kind_of: list = []  # per task: its group's index in ``kinds``
    priority: list = []
    nbytes: dict = {}  # measured
    who_has: dict = {}
    skip: list = []
    p2p: list = []  # P2P barriers: P2P places their outputs at run time
    by_group: dict = {}  # task group -> index in ``kinds`` (read once per group)
    kinds: list = []  # (size name, expected seconds, shape) per task group
    barrier = P2PBarrierTask
    nan = float("nan")
    for key in graph_order(keys):
        ts = tasks.get(key)
        if ts is None:
            continue
        order.append(key)
        tss.append(ts)
        deps = ts.dependencies
        deps_of.append([dts.key for dts in deps] if deps else ())
        group = ts.group
        run_spec = ts.run_spec
        i = by_group.get(group)
        if i is None:
            i = by_group[group] = len(kinds)
            kinds.append(_kind(group, state.learned, unknown, run_spec))
        kind_of.append(i)
        pr = ts.priority
        priority.append(pr[-1] if pr is not None else nan)
        if ts.nbytes >= 0:
            nbytes[key] = ts.nbytes
        if (isinstance(run_spec, barrier) if barrier is not None
                else is_p2p_barrier(key, run_spec)):
            p2p.append(key)
        # May the plugin pin it? (Inline: this loop runs once per task.)
        if not (
            ts.state in states
            and run_spec is not None
            # (a task the scheduler has not given a priority cannot be sent
            # by us: distributed asserts one when a task goes to a worker)
            and pr is not None
            and not ts.actor
            and not ts.worker_restrictions
            and not ts.host_restrictions
            and not ts.resource_restrictions
            and (not opted_out or opted_out.get(key, True) is not False)
            and (not ts.annotations or ts.annotations.get("autorestrict", True) is not False)
        ):
            where = bound_to(ts, held_at)
            if where is not None:
                who_has[key] = where
            else:
                skip.append(key)
    dependencies = dict(zip(order, deps_of))
    _read_outside(tasks, dependencies, who_has, nbytes, held_at)
    workers = running_workers(scheduler)
    kind_of = np.array(kind_of, dtype=np.intp)
    _tell_apart(kinds, by_group, order, kind_of, state.learned)
    names = [name for name, _, _ in kinds]
    sizes = _sizes(order, names, kind_of, nbytes, state.learned.sizes(),
                   _per_key(order, kind_of, [shape for _, _, shape in kinds], state.learned))
    return GraphInputs(
        dependencies=dependencies, workers=workers, nbytes=sizes.nbytes,
        priority=np.array(priority, dtype=np.float64), who_has=who_has, skip=skip,
        cost=np.array([sec for _, sec, _ in kinds], dtype=np.float64)[kind_of],
        busy=busy(state, workers, unknown),
        placed_at_run_time=p2p, bandwidth=float(scheduler.bandwidth), sizes=sizes,
        tasks=tss,
    )


def _read_outside(tasks, dependencies: dict, who_has: dict, nbytes: dict,
                  held_at: dict) -> None:
    """Where the graph's inputs from outside it are (in memory, or bound by
    an earlier plan), and the sizes of those in memory: into ``who_has``
    and ``nbytes``. Found with set operations on the keys, not a
    Python-level test per edge."""
    outside = set(itertools.chain.from_iterable(dependencies.values()))
    outside.difference_update(dependencies, who_has)
    for key in outside:
        dts = tasks[key]
        if dts.who_has:
            who_has[key] = [ws.address for ws in dts.who_has]
            nbytes[key] = dts.get_nbytes()
        else:  # in flight: bound to a worker by an earlier plan?
            where = bound_to(dts, held_at)
            if where is not None:
                who_has[key] = where


def _per_key(order: list, kind_of: np.ndarray, shapes: list, learned: Learned) -> dict:
    """``key -> bytes`` learned for the task at the same position (its key's
    indices) in its shape; looked at only in shapes that have them."""
    out: dict = {}
    having = [i for i, shape in enumerate(shapes) if learned.position_sizes(shape)]
    if not having:
        return out
    by_kind = np.argsort(kind_of, kind="stable")
    bounds = np.searchsorted(kind_of[by_kind], np.arange(len(shapes) + 1))
    for i in having:
        sizes = learned.position_sizes(shapes[i])
        for j in by_kind[bounds[i]:bounds[i + 1]].tolist():
            key = order[j]
            size = sizes.get(key[1:]) if type(key) is tuple else None
            if size is not None:
                out[key] = size
    return out


def _sizes(order: list, names: list, kind_of: np.ndarray, nbytes: dict,
           learned: dict, per_key: dict) -> Sizes:
    """:func:`autorestrictor.planner.estimate_sizes` for the graph's tasks
    (``order``; task ``i``'s size is learned under ``names[kind_of[i]]``, its
    shape or its prefix; ``None`` for no kind). Where nothing of these
    kinds was learned yet (a first graph), every task of a kind whose size
    is not measured is assumed, counted without a dictionary of the
    graph's keys."""
    if learned.keys() & set(names):
        prefix_of = {k: names[i] for k, i in zip(order, kind_of.tolist())
                     if names[i] is not None}
        return estimate_sizes(nbytes, prefix_of, learned, per_key)
    kindless = [i for i, name in enumerate(names) if name is None]
    kinded = len(order) - int(np.isin(kind_of, kindless).sum())
    measured = sum(1 for k, i in zip(order, kind_of.tolist())
                   if names[i] is not None and k in nbytes) if nbytes else 0
    return Sizes(dict(nbytes), len(nbytes), 0, kinded - measured)


def busy(state: State, workers: Iterable[str], unknown: float,
         tasks: Mapping | None = None) -> dict[str, float]:
    """Expected seconds of pinned work not yet done on each worker (for the next plan).

    Counts every task of the units still in its run, started or not: a
    chain whose root has run still has the rest of the chain to run. The
    plugin prunes finished units before it plans; a reader that does not
    (``explain()``) gives the scheduler's ``tasks``, and only units and
    plans with a task not yet run count.
    """
    typical = state.learned.typical(unknown)
    if tasks is None:
        pinned = state.pinned_tasks()
    else:
        pinned = state.pinned_tasks(lambda keys, a: pending(tasks, keys, a),
                                    lambda b: batch_pending(tasks, b))
    return {a: typical * pinned.get(a, 0) for a in workers}


def graph_order(keys) -> list:
    """A graph's keys in the order the planner is given them.

    The planner keeps groups in the order it is given them. Sorted keys are
    chunk order for Dask collections, ("x", 0, 9) before ("x", 0, 10), so
    neighbouring chunks land on one worker and a later graph combining them
    finds them together. Keys of different types are ordered by type name,
    then value; keys that do not compare keep the given order.
    """
    keys = list(keys)
    # Chunk keys are tuples, and a graph has few others (a finalize
    # string): tuples are sorted directly, without a key function.
    tuples = [k for k in keys if type(k) is tuple]
    try:
        if len(tuples) == len(keys):
            return sorted(tuples)
        others = sorted((k for k in keys if type(k) is not tuple), key=_by_type_then_value)
        tuples.sort()
    except TypeError:
        logger.debug("keys that do not compare: planning in the given order")
        return keys
    before = [k for k in others if type(k).__name__ < "tuple"]
    return before + tuples + others[len(before):]


def _by_type_then_value(key):
    # Dask graphs mix tuple keys (chunks) with a few string keys (finalize).
    return type(key).__name__, key


def running_workers(scheduler) -> dict[str, int]:
    """``address -> threads`` of the running workers, sorted by address.

    The planner deals work to workers in this order. Sorted, so that the
    same graph on the same workers gets the same plan whoever asks
    (``explain()`` reads the workers with this function too);
    ``scheduler.running`` is a set.
    """
    return {ws.address: ws.nthreads for ws in sorted(scheduler.running, key=_address)}


def _address(ws) -> str:
    return ws.address


def bound_to(ts, held_at: dict) -> list[str] | None:
    """Where a task we may not pin already is, or is bound to, if one place.

    A root held for admission is bound to the worker whose queue holds it.
    """
    if ts.who_has:
        return [ws.address for ws in ts.who_has]
    if ts.processing_on is not None:
        return [ts.processing_on.address]
    if len(ts.worker_restrictions or ()) == 1 and not ts.loose_restrictions:
        (addr,) = ts.worker_restrictions
        if addr != HOLD:
            return [addr]
        queue = held_at.get(ts.key)
        return [queue] if queue is not None else None
    return None


def _tell_apart(kinds: list, by_group: dict, order: list, kind_of: np.ndarray,
                learned: Learned) -> None:
    """Give the groups of this graph that share a shape one of their own
    (:func:`autorestrictor.learning.told_apart`), in ``kinds`` and for what
    their tasks will teach. Reads the keys of those groups only."""
    groups = {g.name: (g, i) for g, i in by_group.items() if g is not None}
    shapes = {name: kinds[i][2] for name, (_, i) in groups.items() if kinds[i][2] is not None}
    clash = clashing(shapes)
    if not clash:
        return
    index = {groups[name][1]: name for name in clash}
    positions: dict = {name: [] for name in clash}
    at = np.flatnonzero(np.isin(kind_of, list(index)))
    for j, i in zip(at.tolist(), kind_of[at].tolist()):
        key = order[j]
        if type(key) is tuple:
            positions[index[i]].append(key[1:])
    new = told_apart(shapes, positions)
    learned.name_groups(new)
    for name, shape in new.items():
        group, i = groups[name]
        _, seconds, _ = kinds[i]
        known = learned.shape_duration.get(shape)
        kinds[i] = (learned.size_kind(group.prefix.name, shape),
                    known.value if known is not None else seconds, shape)


def _kind(group, learned: Learned, unknown: float, run_spec=None) -> tuple:
    """A task group's name for sizes (its shape if learned, else its prefix
    name; see :mod:`autorestrictor.learning`), its tasks' expected seconds,
    and its shape. ``run_spec`` is one of its tasks': if that task only
    selects (:func:`selects`), a kind never seen is expected to take
    :data:`SELECTION_SECONDS`."""
    prefix = group.prefix if group is not None else None
    if selects(run_spec):
        unknown = SELECTION_SECONDS
    if prefix is None:
        return None, unknown, None
    shape = learned.shape(group.name, len(group))
    return (learned.size_kind(prefix.name, shape),
            expected_seconds(prefix, learned, unknown, shape), shape)


def shape(ts, learned: Learned) -> str | None:
    """The shape of ``ts``'s group (:meth:`autorestrictor.learning.Learned.shape`)."""
    group = ts.group
    return learned.shape(group.name, len(group)) if group is not None else None


def expected_seconds(prefix, learned: Learned, unknown: float,
                     shape: str | None = None) -> float:
    """Expected compute seconds of a task of ``prefix`` (a ``TaskPrefix`` or
    ``None``) and ``shape``: learned, else the scheduler's average, else
    ``unknown``."""
    if prefix is None:
        return unknown
    return learned.expected(prefix.name, fallback(prefix, unknown), shape)


def fallback(prefix, unknown: float) -> float:
    """The scheduler's own expected duration of a ``prefix``'s tasks."""
    if prefix is not None and prefix.duration_average > 0:
        return prefix.duration_average
    return unknown


def unknown_duration(scheduler) -> float:
    """The scheduler's expected duration of a task of a kind never seen."""
    return float(getattr(scheduler, "UNKNOWN_TASK_DURATION", 0.5))


def saturation(scheduler) -> float:
    """``worker-saturation`` as the scheduler runs it."""
    s = getattr(scheduler, "WORKER_SATURATION", None)
    if s is None:
        s = dask.config.get("distributed.scheduler.worker-saturation", 1.1)
    return float(s)


def fetching(ws) -> int:
    """Tasks processing on ``ws`` that still wait for an input from another worker.

    They hold no thread, so admission does not count up to a slot's worth
    of them per slot: a worker that waits for a reduction's partial results
    keeps computing its own chunks meanwhile, and the transfer is hidden
    behind that work. Looks at no more than :data:`FETCH_SCAN` tasks.
    """
    needs = ws.needs_what
    n = 0
    for ts in itertools.islice(ws.processing, FETCH_SCAN):
        if any(d in needs for d in ts.dependencies):
            n += 1
    return n


def stalled(tasks, stalled: dict, addr: str) -> int:
    """Of the readers noted in ``stalled[addr]``
    (:func:`autorestrictor.admission.stalled_readers`), how many still wait
    while their released root has run; those that no longer wait are
    forgotten. Linear in the readers noted for ``addr``."""
    noted = stalled.get(addr)
    if not noted:
        return 0
    n = 0
    for reader, root in list(noted.items()):
        r = tasks.get(reader)
        if r is None or r.state != "waiting":
            del noted[reader]
            continue
        t = tasks.get(root)
        n += t is not None and t.state == "memory"
    if not noted:
        del stalled[addr]
    return n


def spill_thresholds() -> tuple[float | None, float | None]:
    """The fractions of ``memory_limit`` past which Dask's workers write to
    disk, as this process's Dask config says (``None``: never): managed
    memory past ``distributed.worker.memory.target`` is spilled as it is
    stored, and while the process as a whole is past ``.spill`` the worker
    spills until it is back under ``target``."""
    def fraction(name: str) -> float | None:
        x = dask.config.get(f"distributed.worker.memory.{name}", None)
        return float(x) if x else None

    return fraction("target"), fraction("spill")


def memory_room(ws, thresholds: tuple[float | None, float | None], learned: Learned) -> float:
    """Bytes ``ws`` may still take before it spills (``thresholds`` from
    :func:`spill_thresholds`); ``math.inf`` without a limit or thresholds.

    Both of Dask's rules count: ``target`` of its ``memory_limit`` less the
    managed memory it holds (Dask's own measure, spilled data excluded),
    and ``spill`` of it less the same plus the memory the process holds
    beyond its data (``unmanaged_old``, Dask's long-term measure: on a
    worker whose libraries take a third of its limit, the second rule is
    the one met first). From either, less what its running tasks are
    expected to produce (at most :data:`FETCH_SCAN` of them looked at).
    """
    target, spill = thresholds
    if not ws.memory_limit or not (target or spill):
        return math.inf
    mem = ws.memory
    limit = math.inf
    if target:
        limit = target * ws.memory_limit
    if spill:
        limit = min(limit, spill * ws.memory_limit - mem.unmanaged_old)
    coming = 0.0
    for ts in itertools.islice(ws.processing, FETCH_SCAN):
        coming += max(output_bytes(ts, learned), 0.0)
    return limit - mem.managed - coming


def held_status(tasks, key) -> Status:
    """What a held root's task is doing, for :func:`autorestrictor.admission.take`."""
    ts = tasks.get(key)
    if ts is None or ts.worker_restrictions != {HOLD} or ts.state not in PENDING:
        return Status.GONE
    return Status.READY if ts.state == "no-worker" else Status.LATER


def output_bytes(ts, learned: Learned) -> float:
    """Bytes of ``ts``'s output: measured, else learned (for its position in
    its shape, its shape, or its kind); -1 when none is known."""
    if ts.nbytes >= 0:
        return float(ts.nbytes)
    sh = shape(ts, learned)
    key = ts.key
    if type(key) is tuple:
        size = learned.position_sizes(sh).get(key[1:])
        if size is not None:
            return size
    return learned.size(ts.prefix.name if ts.prefix is not None else None, sh)


def pinned_work(scheduler, runs: dict[str, list[Unit]]) -> tuple[dict, dict, dict, dict]:
    """The pinned tasks not yet run, for :func:`autorestrictor.datamap.peaks`:
    ``(dependencies, key -> worker, key -> rank in Dask's priority order,
    running worker -> threads)``. Inputs that are not pinned (in memory, or
    Dask's) appear only among the dependencies. Linear in the pinned tasks
    and their inputs, plus a sort of their priorities."""
    tasks = scheduler.tasks
    at: dict = {}
    for addr, units in runs.items():
        for u in units:
            for k in pending(tasks, u.keys, addr):
                at[k] = addr
    return _work(scheduler, [tasks[k] for k in at], at)


def planned_work(scheduler, tss: list, assignment: dict) -> tuple[dict, dict, dict, dict]:
    """The same as :func:`pinned_work` for a new graph's tasks ``tss`` and the
    plan's ``assignment`` (the tasks it leaves to Dask have no worker)."""
    return _work(scheduler, tss, assignment)


def _work(scheduler, tss: list, at: dict) -> tuple[dict, dict, dict, dict]:
    # in priority order, so that the estimate's ties fall the same way
    # whatever order the workers' runs were read in
    order = sorted(tss, key=lambda ts: ts.priority or ())
    deps = {ts.key: [d.key for d in ts.dependencies] for ts in order}
    rank = {ts.key: float(i) for i, ts in enumerate(order)}
    workers = {ws.address: ws.nthreads for ws in scheduler.running}
    return deps, at, rank, workers


def pending(tasks, keys: list, addr: str) -> list:
    """The keys of a unit still pinned by us (to ``addr`` or held) and not yet run."""
    mine = ({addr}, {HOLD})
    out = []
    for k in keys:
        ts = tasks.get(k)
        if ts is not None and ts.state in PENDING and ts.worker_restrictions in mine:
            out.append(k)
    return out


def batch_pending(tasks, batch: Batch) -> bool:
    """Has any task of a plan's unbuilt units not run yet (pinned by us, to its
    worker or held)?"""
    pins = [({a}, {HOLD}) for a in batch.workers]
    for k, w in zip(batch.keys, batch.worker_of.tolist()):
        ts = tasks.get(k)
        if ts is not None and ts.state in PENDING and ts.worker_restrictions in pins[w]:
            return True
    return False


def kinds(tss) -> dict[str, int]:
    """How many of the task states ``tss`` (``None`` skipped) are of each kind."""
    return dict(Counter(ts.prefix.name for ts in tss if ts is not None and ts.prefix))


def unit_kinds(tasks, u: Unit) -> dict[str, int]:
    """The kinds of a unit's tasks, counted once and kept on the unit."""
    if u.kinds is None:
        u.kinds = kinds(tasks.get(k) for k in u.keys)
    return u.kinds


def fallbacks(scheduler, names: Iterable[str]) -> dict[str, float]:
    """The scheduler's expected seconds for each kind in ``names``."""
    prefixes, unknown = scheduler.task_prefixes, unknown_duration(scheduler)
    return {name: fallback(prefixes.get(name), unknown) for name in names}


def seam_inputs(scheduler, addr: str, units: list[Unit], learned: Learned) -> dict:
    """The arguments of :func:`autorestrictor.elastic.seams` for ``addr``'s
    movable ``units``: their dependencies, which tasks outside them stay on
    ``addr`` (started there, or done and kept there), and sizes (measured,
    else learned; unknown sizes cost nothing). Linear in the units' tasks
    and their edges."""
    tasks = scheduler.tasks
    keys = [u.keys for u in units]
    inside = {k for ks in keys for k in ks}
    here = {addr}

    def stays(ts) -> bool:
        if ts.state == "memory":
            return any(ws.address == addr for ws in ts.who_has)
        return ts.worker_restrictions == here or (
            ts.processing_on is not None and ts.processing_on.address == addr)

    dependencies: dict = {}
    readers: dict = {}
    staying: set = set()
    nbytes: dict = {}
    for k in inside:
        ts = tasks.get(k)
        if ts is None:
            continue
        dependencies[k] = [d.key for d in ts.dependencies]
        nbytes[k] = max(output_bytes(ts, learned), 0.0)
        for d in ts.dependencies:
            if d.key not in inside and d.key not in nbytes and stays(d):
                staying.add(d.key)
                nbytes[d.key] = max(output_bytes(d, learned), 0.0)
        n = sum(1 for d in ts.dependents if d.key not in inside and stays(d))
        if n:
            readers[k] = n
    return {"units": keys, "dependencies": dependencies, "readers_staying": readers,
            "stays": staying, "nbytes": nbytes, "bandwidth": bandwidth(scheduler)}


def bandwidth(scheduler) -> float:
    """Bytes per second between workers, as the scheduler measures them."""
    return float(getattr(scheduler, "bandwidth", 100e6)) or 100e6
