"""The elastic plan: units of a worker's run, what cutting a run costs, and
which tasks of a moved unit stay behind.

When a worker runs out of unstarted work, the rebalancer
(:func:`autorestrictor.rebalance.rebalance`) moves the far end of a busier
worker's run to it, whole units at a time. This module gives it the plain
data it needs, and says how a move is carried out:

* :func:`units_of`: a plan's tasks grouped into units, per worker;
* :func:`split_move`: the stay rule, which tasks of moving units stay with
  the donor (those that read more from the donor's side than from the
  moving side: the top of a reduction whose last block moves);
* :func:`seams`: the seconds of transfer each possible cut costs, with the
  stay rule applied.

Pure: plain mappings of keys in, lists out; it never imports ``distributed``.
"""

from __future__ import annotations

from collections.abc import Container, Hashable, Iterator, Mapping, Sequence

import numpy as np

Key = Hashable


def units_of(units: np.ndarray, worker_of: np.ndarray) -> Iterator[tuple[int, int, list[int]]]:
    """A plan's units: ``(worker, first, members)`` as positions in the plan.

    ``units[i]`` is the position of the first task of task ``i``'s unit
    (:attr:`autorestrictor.Plan.units`); ``members`` starts with ``first``,
    then the unit's other tasks in plan order. One pass over plain lists:
    on a scheduler receiving 100,000 units, numpy's split into as many
    small arrays cost more than the rest.

    Examples
    --------
    >>> list(units_of(np.array([0, 0, 2, 2, 0]), np.array([1, 1, 0, 0, 1])))
    [(1, 0, [0, 1, 4]), (0, 2, [2, 3])]
    """
    order = np.argsort(units, kind="stable")
    heads = units[order]
    starts = np.flatnonzero(np.r_[True, heads[1:] != heads[:-1]]).tolist()
    starts.append(len(order))
    order_l, heads_l, worker_l = order.tolist(), heads.tolist(), worker_of.tolist()
    for a, b in zip(starts, starts[1:]):
        head = heads_l[a]
        members = [head]
        members.extend(i for i in order_l[a:b] if i != head)
        yield worker_l[head], head, members


def split_move(units: Sequence[Sequence[Key]], dependencies: Mapping[Key, Sequence[Key]]
               ) -> tuple[list[list[Key]], list[Key]]:
    """Which tasks of the moving ``units`` go, and which stay with the donor.

    A unit's first task always goes. Any other task goes if at least half
    of its inputs go too; otherwise it stays with the donor (the top of a
    reduction whose last block moves): at the seam, the smaller side's
    result travels, as the planner's seams do. Decided inputs first, so a
    chain whose head stays stays whole, in whatever order a unit lists it
    (:func:`seams` prices the same rule). ``dependencies`` lacks keys that
    no longer exist (they go with their unit).

    Returns
    -------
    (going, staying): each unit's keys that go, and the keys that stay.

    Examples
    --------
    A reduction's top ``t`` reads two blocks; only ``b`` moves::

        a   b
         \\ /
          t

    >>> split_move([["b", "t"]], {"b": [], "t": ["a", "b"]})
    ([['b', 't']], [])
    >>> split_move([["b", "t"]], {"b": [], "t": ["a", "b", "c"]})
    ([['b']], ['t'])
    """
    reach = _reach(units, dependencies)
    going = [[k for k in u if reach[k] >= 0] for u in units]
    staying = [k for u in units for k in u if reach[k] < 0]
    return going, staying


def _reach(units: Sequence[Sequence[Key]], dependencies: Mapping[Key, Sequence[Key]]
           ) -> dict:
    """For each task of ``units``, the last cut that moves it (-1: none does).

    A cut before unit ``s`` moves units ``s..``; a task moves with it if it
    is its unit's first task, or if at least half of its inputs move (an
    input outside ``units`` never does). So a task moves for the cuts up to
    its unit's index, or up to the cut that still moves half its inputs,
    whichever is smaller. Inputs before readers (depth-first), so the order
    within a unit does not matter. Linear in the tasks and their edges.
    """
    pos = {k: i for i, u in enumerate(units) for k in u}
    firsts = {u[0] for u in units if len(u)}
    reach: dict = {}
    for k in pos:
        stack = [k]
        while stack:
            key = stack[-1]
            if key in reach:
                stack.pop()
                continue
            deps = dependencies.get(key)
            if key in firsts or not deps:  # (no longer exists: goes with its unit)
                reach[key] = pos[key]
                stack.pop()
                continue
            todo = [d for d in deps if d in pos and d not in reach]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            ins = sorted((reach[d] if d in pos else -1 for d in deps), reverse=True)
            reach[key] = min(pos[key], ins[(len(ins) + 1) // 2 - 1])
    return reach


def seams(units: Sequence[Sequence[Key]], dependencies: Mapping[Key, Sequence[Key]],
          readers_staying: Mapping[Key, int], stays: Container[Key],
          nbytes: Mapping[Key, float], bandwidth: float) -> list[float]:
    """Seconds that cutting a donor's movable ``units`` before each one costs.

    A cut before unit ``s`` moves units ``s..`` to the thief, except the
    tasks :func:`split_move` keeps with the donor. Each task therefore
    moves for the cuts up to its *reach*: its unit's index for a unit's
    first task, else the smaller of that index and the cut up to which half
    its inputs move. An edge between tasks of reach ``a < b`` crosses every
    cut in ``(a, b]``; an input outside the units that ``stays`` on the
    donor has reach -1, and so does each of a task's ``readers_staying``
    (readers outside the units that stay on the donor). Inputs outside the
    units that do not stay cost nothing here: they are fetched wherever the
    task runs. Bytes are ``nbytes`` (unknown: 0), sent at ``bandwidth``.
    ``dependencies`` holds the units' keys that still exist. Linear in the
    units' tasks and their edges.

    Examples
    --------
    Two units, ``x`` then ``y``; ``y`` reads ``x`` (100 bytes)::

        x -> y

    >>> seams([["x"], ["y"]], {"x": [], "y": ["x"]}, {}, set(), {"x": 100.0}, 100.0)
    [0.0, 1.0]
    """
    n = len(units)
    pos = {k: i for i, u in enumerate(units) for k in u}
    reach = _reach(units, dependencies)  # key -> last cut that moves it

    diff = [0.0] * (n + 1)

    def cross(a: int, b: int, nb: float) -> None:
        if a != b:
            diff[min(a, b) + 1] += nb
            diff[max(a, b) + 1] -= nb

    for k, b in reach.items():
        for d in dependencies.get(k, ()):  # inputs: from the run, or from what stays
            if d in pos:
                cross(reach[d], b, nbytes.get(d, 0.0))
            elif d in stays:
                cross(-1, b, nbytes.get(d, 0.0))
        for _ in range(readers_staying.get(k, 0)):  # the top of a reduction
            cross(-1, b, nbytes.get(k, 0.0))
    out, acc = [], 0.0
    for s in range(n):
        acc += diff[s]
        # (a running sum of learned, fractional sizes that cancel can end a
        # hair below zero; nothing crosses there)
        out.append(max(acc, 0.0) / bandwidth)
    return out
