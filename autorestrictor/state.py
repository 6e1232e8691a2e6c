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
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, NamedTuple

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

#: Task states in which a pin still matters: the task has not run yet.
PENDING = frozenset({"released", "waiting", "no-worker", "queued", "processing"})

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
    n_wanted: int = 0  # roots released out of turn so far
    seq: int = 0

    def hold(self, addr: str, priority: tuple | None, key: Key) -> None:
        """Queue ``key`` for ``addr``; a later queue for the same key wins."""
        self.seq += 1
        heapq.heappush(self.held[addr], Held(priority or (), self.seq, key))
        self.held_at[key] = addr

    def owner(self, key: Key) -> str | None:
        return self.held_at.get(key)

    def drop_worker(self, addr: str) -> None:
        """Forget ``addr``'s queue (its keys are re-homed by the caller)."""
        for entry in self.held.pop(addr, ()):
            if self.held_at.get(entry.key) == addr:
                del self.held_at[entry.key]
        self.wanted.pop(addr, None)

    def clear(self) -> None:
        self.held.clear()
        self.held_at.clear()
        self.wanted.clear()


@dataclasses.dataclass
class State:
    """Everything the plugin keeps between hooks; any instance of the plugin adopts it."""

    options: Options
    runs: dict[str, list[Unit]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    queues: Queues = dataclasses.field(default_factory=Queues)
    learned: Learned = dataclasses.field(default_factory=Learned)
    slow: set[str] = dataclasses.field(default_factory=set)  # until their run is done
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

    def __post_init__(self) -> None:
        self.keep(self.options)

    def keep(self, options: Options) -> None:
        """Take ``options`` (a plugin registered again brings its own)."""
        self.options = options
        self.history = deque(self.history, maxlen=options.history)
        self.moves = deque(self.moves, maxlen=options.history)

    def forget_pins(self) -> None:
        self.runs.clear()
        self.queues.clear()


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
