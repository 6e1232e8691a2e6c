"""Admission: when each worker's held roots are released, and which first.

Pinned roots wait on the scheduler, in a queue per worker (``Queues``), and
are released as the worker has free slots, the rule Dask's own queue uses
(``worker-saturation``). This module decides; the plugin reads the
scheduler's state into the arguments and :mod:`autorestrictor.actions`
carries the decision out. It never imports ``distributed``: tasks are read
through the attributes Dask's ``TaskState`` has (``state``, ``dependents``,
``waiting_on``, ``worker_restrictions``, ``key``), so hand-made objects do
in tests.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Hashable
from enum import Enum

from autorestrictor.state import Queues

#: Edges looked at, at most, per released root or finished task, to find
#: held roots that a reader is about to wait for from another worker (see
#: :func:`note_wanted`): a bound on the hook's cost on the event loop (a
#: broadcast operand has hundreds of readers).
WANTED_SCAN = 64

#: A reader is about to run when it waits for at most this many inputs: a
#: chunk and its weight, a block and its neighbour. One waiting for many (a
#: collection's final concatenation, a flat aggregate) is not, and pulling
#: its inputs would release every held root at once.
WANTED_MISSING = 2


def worth_holding(ts, max_readers: int) -> bool:
    """Whether a pinned root ``ts`` is held for admission.

    Holding a root back keeps its output out of memory until its worker
    has a free thread. A root read by ``max_readers`` tasks or more
    (counted through the one task that reads it, when it has one: a cast,
    a random array's generator) gains nothing from it: its output stays in
    memory until the last of those readers has run, whenever it runs. And
    while it waits, its worker runs whatever its other roots made ready:
    in a product ``x @ x.T``, every block pairs with every other, so a
    worker fed its blocks a few at a time computes the partial products
    of each block that arrived, and holds them until the blocks their sums
    also need arrive. Sent at once, such roots run in Dask's priority
    order on their worker, interleaved with their readers.

    Examples
    --------
    >>> from types import SimpleNamespace as T
    >>> cast = T(dependents=[T(dependents=[]) for _ in range(10)])
    >>> worth_holding(T(dependents=[cast]), max_readers=8)  # ten readers through a cast
    False
    >>> worth_holding(T(dependents=[cast, cast]), max_readers=8)  # two readers
    True
    """
    readers = ts.dependents
    if len(readers) == 1:
        (only,) = readers
        readers = only.dependents
    return len(readers) < max_readers


class Status(Enum):
    """What a held root's task is doing now."""

    READY = "ready"  # in no-worker with its inputs ready: may be released
    LATER = "later"  # pinned and pending, inputs not ready: stays queued
    GONE = "gone"  # cancelled, forgotten, done, or no longer held by us


class Memory:
    """The bytes a worker may still receive from released roots before it spills.

    Dask's workers spill managed memory to disk past a fraction of their
    ``memory_limit`` (``distributed.worker.memory.target``), and Dask's
    queue releases roots by threads alone. Held roots are released by
    threads and by bytes: a root whose expected output would take the
    worker's managed memory, plus what its running tasks are expected to
    produce, past that threshold waits while the worker has other work to
    finish (``busy``): finishing it frees the inputs it reads. A worker
    with nothing to do past its threshold takes one root only if it is
    the first of all held roots in priority order (``front``, see
    :meth:`autorestrictor.state.Queues.front`): the worker that holds that
    root always takes it, so the graph always moves on, in the order Dask's
    shared queue would, and a worker whose open results wait for other
    workers' roots does not run ahead of them.

    ``room``: bytes below the threshold; ``size(key)``: a root's expected
    output, negative when unknown (then counted as nothing).

    Examples
    --------
    >>> m = Memory(room=100.0, size=lambda key: 60.0, busy=True)
    >>> m.admit("a", (5,), taken=False), m.admit("b", (6,), taken=True), m.room
    (True, False, 40.0)
    >>> idle = Memory(room=-5.0, size=lambda key: 60.0, busy=False, front=(1,))
    >>> idle.admit("a", (1,), taken=False), idle.admit("b", (2,), taken=False)
    (True, False)
    """

    __slots__ = ("room", "size", "busy", "front")

    def __init__(self, room: float, size: Callable[[Hashable], float], busy: bool,
                 front: tuple | None = None):
        self.room = room
        self.size = size
        self.busy = busy
        self.front = front

    def admit(self, key: Hashable, priority: tuple, taken: bool) -> bool:
        """May ``key`` (of ``priority``) be released? ``taken``: whether
        roots were already taken now. If so, its bytes are counted."""
        need = max(self.size(key), 0.0)
        if need > self.room and (
            self.busy or taken or (self.front is not None and priority > self.front)
        ):
            return False
        self.room -= need
        return True

    def charge(self, key: Hashable) -> None:
        """Count the bytes of ``key``, released whatever the room: a small root
        that readers on other workers wait for (see :func:`note_wanted`),
        whose readers free memory there."""
        self.room -= max(self.size(key), 0.0)


def free_slots(nthreads: int, busy: int, saturation: float, queued: int,
               waiting_for_inputs: Callable[[], int] | None = None,
               stalled: int = 0) -> int:
    """How many held roots a worker may be sent now.

    Dask's queuing rule, ``ceil(saturation * nthreads)`` tasks processing
    (at least one), except that up to as many again may wait for inputs
    from other workers without counting: they hold no thread, so the worker
    computes its own chunks while the transfer runs, and each holds its
    local inputs in memory, hence the bound. ``busy`` is the worker's
    processing tasks that are not long-running; ``waiting_for_inputs``
    (``None`` when the worker fetches nothing) counts those still waiting,
    called only when the worker looks full. ``stalled`` counts the released
    roots that have run and whose readers there wait for an input not yet
    made elsewhere (:func:`stalled_readers`): not processing, so Dask's
    rule would not count them, but their results wait in memory just the
    same, and they take the same bound. A worker with nothing processing
    may always take one root: two workers whose readers wait for each
    other's held operands would otherwise wait for ever.

    Examples
    --------
    >>> free_slots(nthreads=2, busy=1, saturation=1.1, queued=10)
    2
    >>> free_slots(nthreads=1, busy=3, saturation=1.1, queued=10, waiting_for_inputs=lambda: 2)
    1
    >>> free_slots(nthreads=1, busy=1, saturation=1.1, queued=10, stalled=3)
    0
    >>> free_slots(nthreads=1, busy=0, saturation=1.1, queued=10, stalled=9)
    1
    >>> free_slots(nthreads=1, busy=9, saturation=float("inf"), queued=10)
    10
    """
    if math.isinf(saturation):
        return queued
    slots = max(math.ceil(saturation * nthreads), 1)
    idle = busy <= 0
    busy += stalled
    if busy >= slots and (stalled or waiting_for_inputs is not None):
        waiting = stalled + (waiting_for_inputs() if waiting_for_inputs is not None else 0)
        busy = max(busy - waiting, busy - slots)
    return max(slots - busy, 1) if idle else slots - busy


def stalled_readers(ts, here: set, held_at: dict) -> list:
    """The readers of the root ``ts``, released to ``here``, that will wait
    for an input made elsewhere once ``ts`` has run: a chunk whose column
    weight is another worker's. Pinned to ``here``, waiting, and reading a
    task that is neither pinned to ``here`` nor held in its queue
    (``held_at``), or that reads one. Looks at no more than
    :data:`WANTED_SCAN` edges.

    >>> from types import SimpleNamespace as T
    >>> w = T(key="w", worker_restrictions={"b"}, state="waiting", waiting_on=set())
    >>> x = T(key="x", worker_restrictions={"a"}, state="no-worker", waiting_on=set())
    >>> r = T(key="r", state="waiting", worker_restrictions={"a"}, waiting_on=[x, w])
    >>> x.dependents = [r]
    >>> stalled_readers(x, {"a"}, {})
    ['r']
    >>> stalled_readers(x, {"a"}, {"w": "a"})  # held in a's own queue
    []
    """
    def mine(t) -> bool:
        return (bool(t.worker_restrictions) and t.worker_restrictions <= here) \
            or held_at.get(t.key) in here

    out = []
    budget = WANTED_SCAN
    for reader in ts.dependents:
        if reader.state != "waiting" or not reader.worker_restrictions \
                or not reader.worker_restrictions <= here:
            continue
        for t in reader.waiting_on:
            if t is ts:
                continue
            inputs = t.waiting_on if t.state == "waiting" else ()
            budget -= 1 + len(inputs)
            if not mine(t) or not all(mine(u) for u in inputs):
                out.append(reader.key)
                break
        if budget <= 0:
            break
    return out


def take(queues: Queues, addr: str, free: int,
         status: Callable[[Hashable], Status],
         memory: Memory | None = None) -> list[Hashable]:
    """Take up to ``free`` held roots off ``addr``'s queue, and return them.

    First the roots that readers on other workers wait for
    (``queues.wanted[addr]``, see :func:`note_wanted`), ahead of the
    queue's order; then the queue in priority order. A root whose inputs
    are not ready stays queued; one that is gone is forgotten. With a
    ``memory`` budget, taking from the queue stops at the first root whose
    expected output does not fit in it (see :class:`Memory`); wanted roots
    are only counted. Taken keys leave ``held_at``: the caller releases
    them. O(taken + skipped) heap operations.

    Examples
    --------
    >>> q = Queues()
    >>> for p, key in [(3, "c"), (1, "a"), (2, "b")]:
    ...     q.hold("w1", (p,), key)
    >>> take(q, "w1", 2, lambda key: Status.READY)
    ['a', 'b']
    >>> q.wanted["w1"] = {"c": None}
    >>> take(q, "w1", 1, lambda key: Status.READY), dict(q.held_at)
    (['c'], {})
    """
    out: list = []
    held_at = queues.held_at
    wanted = queues.wanted.get(addr, {})
    while wanted and free > 0:
        key = next(iter(wanted))
        del wanted[key]
        if held_at.get(key) != addr or status(key) is not Status.READY:
            continue  # moved, released, done, or its inputs are not ready
        if memory is not None:
            memory.charge(key)
        del held_at[key]  # (its heap entry is skipped below)
        out.append(key)
        free -= 1
        queues.n_wanted += 1
    if not wanted:
        queues.wanted.pop(addr, None)
    heap = queues.held.get(addr)
    if heap is None:
        return out
    later = []
    while heap and free > 0:
        entry = heapq.heappop(heap)
        key = entry.key
        if held_at.get(key) != addr:
            continue  # moved to another worker's queue
        s = status(key)
        if s is Status.GONE:
            del held_at[key]
        elif s is Status.LATER:
            later.append(entry)
        elif memory is not None and not memory.admit(key, entry.priority, bool(out)):
            later.append(entry)
            queues.n_memory_waits += 1
            break
        else:
            del held_at[key]
            out.append(key)
            free -= 1
    for entry in later:
        heapq.heappush(heap, entry)
    if not heap:
        del queues.held[addr]
    return out


def note_wanted(queues: Queues, ts, here: set, missing: int,
                size: Callable[[object], float], fraction: float) -> None:
    """Note the small held roots that readers of ``ts`` on ``here`` wait for.

    Each worker's admission releases its own roots in priority order. A
    small operand that other workers' chunks read (a column's weight, a
    bias) may come late in its worker's order, and meanwhile the other
    workers keep computing their own chunks, whose results wait in memory
    for it. So when a root is released to a worker, or a task finishes
    there, each reader of it pinned to that worker and waiting for at most
    ``missing`` inputs is looked at: an input that is a root held on another
    worker (or waits for one, such as its ``getitem`` slice) takes that
    worker's next free slot, ahead of its own queue (:func:`take`), and is
    computed while this worker computes its own. Only a small one: its
    output (``size``: measured, else learned, else -1) at most ``fraction``
    of ``ts``'s. Computing a big input early (a product's block) would hold
    it on its own worker until that worker's own readers reach it, and not
    knowing the size, nothing jumps. Looks at no more than
    :data:`WANTED_SCAN` edges.
    """
    held_at = queues.held_at
    mine = size(ts)
    if mine <= 0:
        return
    small = fraction * mine
    budget = WANTED_SCAN
    for reader in ts.dependents:
        if reader.state != "waiting" or len(reader.waiting_on) > missing \
                or not reader.worker_restrictions or not reader.worker_restrictions <= here:
            continue
        for t in reader.waiting_on:
            if t is ts:
                continue
            budget -= 1
            inputs = t.waiting_on if t.state == "waiting" else (t,)
            for u in inputs:
                budget -= u is not t
                at = held_at.get(u.key)
                if at is None or at in here:
                    continue
                if 0 <= size(u) <= small:
                    queues.wanted.setdefault(at, {})[u.key] = None
                    queues.wanted_new = True
            if budget <= 0:
                return
