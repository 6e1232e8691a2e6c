"""What the plugin keeps on the scheduler, typed, and the one way to reach it.

The state hangs off the scheduler (``scheduler._autorestrictor``), not off a
plugin object, so that a plugin registered again (a notebook cell run twice)
adopts what the old one left. Views (the HTTP route, the dashboard page,
``explain()``, ``last_plans``) read it through :func:`state_of` and never
import the plugin module.

This module imports neither ``distributed`` nor the plugin.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import defaultdict, deque
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from autorestrictor.elastic import units_of
from autorestrictor.learning import Learned

if TYPE_CHECKING:
    from autorestrictor.config import Options
    from autorestrictor.planner import Plan

#: The name the plugin registers under (``scheduler.plugins[NAME]``), and the
#: topic of its structured events (``scheduler.log_event``).
NAME = TOPIC = "autorestrictor"

#: Where held roots are "restricted" to: no worker has this address, so the
#: scheduler keeps them in ``no-worker`` until admission releases them.
HOLD = "autorestrictor://held"

#: Task states in which a pin still matters: the task has not run yet and
#: is wanted. (Between the scheduler's transitions a ``released`` task is
#: one nobody wants now: it has run and its readers have too, or it was
#: cancelled. Were it wanted again, Dask would place it freely.)
PENDING = frozenset({"waiting", "no-worker", "queued", "processing"})

Key = Hashable


@dataclasses.dataclass(eq=False)
class Unit:
    """A task that starts a chain of work on its worker, and the tasks that follow it.

    ``keys[0]`` is the first task; if it is a held root, the unit has not
    started and can move whole to another worker. ``piece`` is the planner's
    piece (units of one piece move together when their worker leaves);
    ``priority`` is Dask's priority of the first task, the unit's place in
    its worker's run.
    """

    keys: list
    piece: int
    priority: tuple
    kinds: dict[str, int] | None = dataclasses.field(default=None, repr=False)

    @property
    def cost(self) -> float:
        """Work in tasks (for re-homing whole pieces; the rebalancer uses seconds)."""
        return float(len(self.keys))


def by_priority(u: Unit) -> tuple:
    return u.priority or ()


class Held(NamedTuple):
    """An entry of a worker's admission queue (a heap: lowest first)."""

    priority: tuple
    seq: int  # order of arrival, among equal priorities (keys may not compare)
    key: Key


@dataclasses.dataclass
class Queues:
    """Admission's queues: held roots per worker, and which queue owns each key.

    A key moved to another worker's queue keeps a stale entry in the old
    heap; ``held_at`` says which entry counts.
    """

    held: dict[str, list[Held]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    held_at: dict[Key, str] = dataclasses.field(default_factory=dict)
    #: worker -> held roots that readers on other workers wait for (key -> task)
    wanted: dict[str, dict[Key, Any]] = dataclasses.field(default_factory=dict)
    wanted_new: bool = False  # one was found since the last release
    #: worker -> readers there that wait for an input from elsewhere (reader
    #: key -> the released root of theirs that waits with them in memory)
    stalled: dict[str, dict[Key, Key]] = dataclasses.field(default_factory=dict)
    n_wanted: int = 0  # roots released out of turn so far
    n_memory_waits: int = 0  # releases that stopped short for memory (admission.Memory)
    seq: int = 0

    def hold(self, addr: str, priority: tuple | None, key: Key) -> None:
        """Queue ``key`` for ``addr``; a later queue for the same key wins."""
        self.seq += 1
        heapq.heappush(self.held[addr], Held(priority or (), self.seq, key))
        self.held_at[key] = addr

    def hold_tasks(self, addr: str, tss: Iterable) -> None:
        """Queue many tasks (objects with ``key`` and ``priority``) for ``addr`` at
        once, as :meth:`hold` would one by one: the heap is built once, in
        linear time."""
        held_at = self.held_at
        seq = self.seq
        make = tuple.__new__  # (a NamedTuple's own __new__ is a Python call)
        items = []
        for ts in tss:
            seq += 1
            key = ts.key
            items.append(make(Held, (ts.priority or (), seq, key)))
            held_at[key] = addr
        self.seq = seq
        if items:
            heap = self.held[addr]
            heap.extend(items)
            heapq.heapify(heap)

    def front(self) -> tuple | None:
        """The lowest priority of any held root on any queue (the root Dask's
        own queue would send next); ``None`` when nothing is held. Stale
        heads (keys moved to another queue or released) are dropped on the
        way: O(workers) plus those."""
        best = None
        for addr, heap in self.held.items():
            while heap and self.held_at.get(heap[0].key) != addr:
                heapq.heappop(heap)
            if heap and (best is None or heap[0].priority < best):
                best = heap[0].priority
        return best

    def drop_worker(self, addr: str) -> None:
        """Forget ``addr``'s queue (its keys are re-homed by the caller)."""
        for entry in self.held.pop(addr, ()):
            if self.held_at.get(entry.key) == addr:
                del self.held_at[entry.key]
        self.wanted.pop(addr, None)
        self.stalled.pop(addr, None)

    def clear(self) -> None:
        self.held.clear()
        self.held_at.clear()
        self.wanted.clear()
        self.stalled.clear()


@dataclasses.dataclass
class Batch:
    """A plan's units before they are built as :class:`Unit` objects.

    Building a unit per chain costs an object or two per task on the
    scheduler's event loop, and only the rebalancer, re-homing and the
    dashboard read them: a plan's units are recorded as its arrays and
    built the first time one of those asks (:attr:`State.runs`).
    """

    tasks: Any  # the scheduler's ``tasks`` (for each unit's priority)
    keys: list
    units: Any  # Plan.units: position of each task's unit's first task
    worker_of: Any  # Plan.worker_of
    piece_of: Any  # Plan.piece_of
    base: int  # the first piece number of this plan
    workers: list[str]

    def per_worker(self) -> dict[str, int]:
        """Pinned tasks per worker."""
        counts = np.bincount(self.worker_of, minlength=len(self.workers)).tolist()
        return {a: n for a, n in zip(self.workers, counts) if n}

    def build(self) -> dict[str, list[Unit]]:
        """Each worker's units, in priority order. One pass over plain lists."""
        keys, tasks = self.keys, self.tasks
        piece_of = self.piece_of.tolist()
        new: dict[str, list[Unit]] = defaultdict(list)
        for w, head, members in units_of(self.units, self.worker_of):
            unit = Unit([keys[i] for i in members], self.base + piece_of[head],
                        tasks[keys[head]].priority if keys[head] in tasks else ())
            new[self.workers[w]].append(unit)
        for units in new.values():
            units.sort(key=by_priority)
        return new


@dataclasses.dataclass
class Deferred:
    """A graph that arrived while fewer than two workers ran, kept to be
    planned once workers join (see :func:`autorestrictor.planning.late_plans`)."""

    keys: list
    annotations: dict
    id: int  # its record's ``id`` in the history


#: Graphs kept for a late plan, at most (the oldest is dropped).
MAX_DEFERRED = 16


@dataclasses.dataclass
class State:
    """Everything the plugin keeps between hooks; any instance of the plugin adopts it."""

    options: Options
    built: dict[str, list[Unit]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    batches: list[Batch] = dataclasses.field(default_factory=list)  # not built yet
    queues: Queues = dataclasses.field(default_factory=Queues)
    learned: Learned = dataclasses.field(default_factory=Learned)
    slow: set[str] = dataclasses.field(default_factory=set)  # until their run is done
    joined: set[str] = dataclasses.field(default_factory=set)  # dealt work on joining, same
    history: deque[dict] = dataclasses.field(default_factory=deque)  # plan records
    moves: deque[dict] = dataclasses.field(default_factory=deque)  # rebalancing records
    n_plans: int = 0
    n_pieces: int = 0
    last_rebalance: float = -math.inf
    unavailable: dict[str, float] = dataclasses.field(default_factory=dict)  # -> since
    faults: set[str] = dataclasses.field(default_factory=set)  # hooks that raised
    last_plan: Plan | None = None  # the newest applied plan (for the dashboard)
    last_plan_id: int = 0  # its ``id`` in ``history``
    admission: bool = True  # admission as it runs (off where Dask cannot hold roots)
    deferred: deque[Deferred] = dataclasses.field(
        default_factory=lambda: deque(maxlen=MAX_DEFERRED))
    joined_at: float = -math.inf  # monotonic time a worker last joined
    on_disk: dict[str, float] = dataclasses.field(default_factory=dict)  # spilled bytes
    memory_checked: int = -1  # n_plans when the pins' peak was last predicted

    def __post_init__(self) -> None:
        self.keep(self.options)

    def keep(self, options: Options) -> None:
        """Take ``options`` (a plugin registered again brings its own)."""
        self.options = options
        self.history = deque(self.history, maxlen=options.history)
        self.moves = deque(self.moves, maxlen=options.history)

    @property
    def runs(self) -> dict[str, list[Unit]]:
        """worker -> its pinned units, in run order (builds recorded batches)."""
        for batch in self.batches:
            for addr, units in batch.build().items():
                self.built[addr].extend(units)
        self.batches.clear()
        return self.built

    def has_runs(self) -> bool:
        return bool(self.built) or bool(self.batches)

    def run_workers(self) -> set[str]:
        """Workers with pinned units, without building any."""
        out = set(self.built)
        for b in self.batches:
            out.update(b.per_worker())
        return out

    def pinned_tasks(self, unit_live=None, batch_live=None) -> dict[str, int]:
        """Pinned tasks (of units not yet forgotten) per worker, without building any.

        ``unit_live(keys, worker)`` and ``batch_live(batch)``, if given, say
        which units and unbuilt plans still count (those with a task not
        yet run, for a reader that has not pruned the finished ones).
        """
        out = {a: sum(len(u.keys) for u in units
                      if unit_live is None or unit_live(u.keys, a))
               for a, units in self.built.items()}
        for b in self.batches:
            if batch_live is None or batch_live(b):
                for a, n in b.per_worker().items():
                    out[a] = out.get(a, 0) + n
        return out

    def forget_pins(self) -> None:
        self.built.clear()
        self.batches.clear()
        self.queues.clear()
        self.deferred.clear()


def state_of(scheduler) -> State | None:
    """The state of the plugin registered on ``scheduler``, or ``None``.

    ``None`` also when a state was left behind by a plugin that was
    unregistered (it is handed back on the plugin's next check).
    """
    st = getattr(scheduler, "_autorestrictor", None)
    plugin = scheduler.plugins.get(NAME)
    if st is None or plugin is None or getattr(plugin, "state", None) is not st:
        return None
    return st
