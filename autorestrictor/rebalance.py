"""The rebalancer: who takes which unstarted part of a plan when reality differs.

Pure: plain data in, a list of :class:`Move` out. It never imports
``distributed``; the plugin describes each worker's pinned work and applies
the moves.

A plan is made once, from task counts, when a graph arrives. Then a worker
turns out slow, some chunks cost five times the others, a worker joins, or
another graph arrives. Each worker's pinned work is a *run*: units (a root
task and the tasks that follow it) in the order the worker will reach them.
When a worker has run out of units it has not started, it takes units from
the far end of the run that will finish last: the part furthest from where
that worker is working, so runs stay contiguous and only one seam is cut.
This is delay scheduling (Zaharia et al., EuroSys 2010: wait for locality
while there is local work, then run elsewhere) made locality-preserving.

How much it takes is water-filling on expected finish times: with ``work``
the expected seconds of a worker's pending units plus what it has started,
and ``speed`` its observed pace against the cluster's average, every worker
would finish together at ``sum(work) / sum(speed)``; a thief takes units
until it would finish then, from donors that would finish later, latest
first. A move is made only if it brings the donor's finish earlier by more
than ``min_gain`` seconds and the thief still finishes before the donor did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Run:
    """One worker's pinned work, as the rebalancer sees it.

    Attributes
    ----------
    units:
        Expected seconds of each unit not yet started, in the order the
        worker will start them (first = next).
    pieces:
        For each unit, the piece (group, or part of a split group) it
        belongs to; a move prefers to start at a change of piece, so that
        whole groups move before a group is cut. Empty means all different.
    started:
        Expected seconds of pinned work the worker has started or been sent
        (not movable).
    speed:
        Observed pace against the cluster's average (2.0: twice as fast),
        times the worker's threads.
    """

    units: Sequence[float]
    pieces: Sequence[int] = ()
    started: float = 0.0
    speed: float = 1.0

    @property
    def work(self) -> float:
        return self.started + float(sum(self.units))

    @property
    def finish(self) -> float:
        return self.work / self.speed


@dataclass(frozen=True)
class Move:
    """Move the units ``[start, start + count)`` of ``donor``'s run to ``thief``.

    Indices refer to the donor's run as given to :func:`rebalance`; moves of
    one call never overlap, and each takes the tail of what the donor has
    left after the moves before it.
    """

    donor: str
    thief: str
    start: int
    count: int
    seconds: float = field(default=0.0, compare=False)


def rebalance(
    runs: Mapping[str, Run],
    *,
    idle: Sequence[str] | None = None,
    min_gain: float = 0.0,
) -> list[Move]:
    """Moves that even out the expected finish times of the workers' runs.

    Parameters
    ----------
    runs:
        ``worker -> Run``. Workers with no pinned work at all are included
        with an empty run (a worker that just joined).
    idle:
        The workers that may take work. Default: those with no unit left to
        start (they have run out, or are about to).
    min_gain:
        Seconds by which a move must bring its donor's finish earlier.

    Returns
    -------
    list of Move
        In the order to apply them.

    Raises
    ------
    ValueError
        For a negative cost or a speed that is not positive, naming the worker.

    Examples
    --------
    A worker that just joined takes the far half of the only run:

    >>> rebalance({"a": Run([1.0] * 4), "b": Run([])})
    [Move(donor='a', thief='b', start=2, count=2, seconds=2.0)]

    Notes
    -----
    Complexity: O(units + workers log workers) per move; at most one move
    per (thief, donor) pair.
    """
    _check(runs)
    if idle is None:
        idle = [w for w, r in runs.items() if not len(r.units)]
    if not idle:
        return []
    left = {w: len(r.units) for w, r in runs.items()}  # units a donor still has
    work = {w: r.work for w, r in runs.items()}
    speed = {w: r.speed for w, r in runs.items()}
    target = sum(work.values()) / sum(speed.values())
    moves: list[Move] = []
    for thief in sorted(idle, key=lambda w: work[w] / speed[w]):
        for donor in sorted(runs, key=lambda w: -work[w] / speed[w]):
            want = target * speed[thief] - work[thief]
            excess = work[donor] - target * speed[donor]
            if donor == thief or want <= 0 or excess <= 0:
                continue
            r = runs[donor]
            start = _cut(r, left[donor], min(want, excess))
            count = left[donor] - start
            if count <= 0:
                continue
            seconds = float(sum(r.units[start : left[donor]]))
            before = work[donor] / speed[donor]
            after = (work[donor] - seconds) / speed[donor]
            thief_after = (work[thief] + seconds) / speed[thief]
            if before - max(after, thief_after) <= min_gain:
                continue
            moves.append(Move(donor, thief, start, count, seconds))
            left[donor] = start
            work[donor] -= seconds
            work[thief] += seconds
    return moves


def _cut(r: Run, n: int, amount: float) -> int:
    """Where the tail of ``r.units[:n]`` worth about ``amount`` seconds starts.

    The tail's cost is the nearest to ``amount`` that a whole unit allows.
    Within a quarter of that tail, the cut then moves to a change of piece
    if there is one (a whole group moves rather than a group being cut), or
    else next to the heaviest unit: a unit that carries more tasks closes
    (or opens) a larger subtree (the partial sums of a block follow one of
    the block's chunks), so a cut there leaves one transfer at the seam,
    not one per level of a reduction. The donor keeps at least its first unit, the one
    it is about to start.
    """
    if n <= 1 or amount <= 0:
        return n
    taken, start = 0.0, n
    while start > 1:
        u = float(r.units[start - 1])
        if taken + u / 2 > amount:
            break
        taken += u
        start -= 1
    if start == n:
        return start
    slack = max(1, (n - start) // 4)
    window = range(max(1, start - slack), min(n - 1, start + slack) + 1)
    if len(r.pieces):
        changes = [s for s in window if r.pieces[s] != r.pieces[s - 1]]
        if changes:
            return min(changes, key=lambda s: abs(s - start))
    # The heaviest unit of a subtree comes first or last in run order,
    # depending on how the graph's keys and dask.order number it; the run's
    # own ends tell which (its first or last unit holds the group's top).
    last = float(r.units[n - 1]) >= float(r.units[0])

    def weight(s: int) -> float:
        return float(r.units[s - 1] if last else r.units[s])

    return max(window, key=lambda s: (weight(s), -abs(s - start)))


def _check(runs: Mapping[str, Run]) -> None:
    if not isinstance(runs, Mapping):
        raise TypeError(f"runs must be a mapping of worker -> Run, got {type(runs).__name__}")
    for w, r in runs.items():
        if not isinstance(r, Run):
            raise TypeError(f"runs[{w!r}] must be a Run, got {type(r).__name__}")
        if not r.speed > 0:
            raise ValueError(f"worker {w!r} has speed {r.speed!r}; expected a number > 0")
        if r.started < 0 or any(u < 0 for u in r.units):
            raise ValueError(f"worker {w!r} has a negative expected cost")
        if len(r.pieces) and len(r.pieces) != len(r.units):
            raise ValueError(
                f"worker {w!r}: {len(r.pieces)} pieces for {len(r.units)} units"
            )
