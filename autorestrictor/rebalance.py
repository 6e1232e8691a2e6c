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
and ``speed`` its threads (divided by how much slower it is, for a slow
thief), every worker would finish together at ``sum(work) / sum(speed)``; a
thief takes units until it would finish then, from donors that would finish
later, latest first. A donor's moves are made only if together they bring
its finish earlier by more than ``min_gain`` seconds and by more than what
the cuts themselves cost (its ``seams``: the seconds to send what crosses
them), and each thief still finishes before the donor did. And the moves
of one call are made only if together they bring the last finish of all
workers earlier by more than ``min_gain``: a donor that finishes next to
another worker that cannot give (its work all started, or its cuts too
dear) gains the graph nothing by giving, and its seams would cost bytes.

A unit costs what it costs on its donor. Whether a worker that looks slow is
slow, or was dealt the expensive chunks, cannot be told apart from durations
alone; the first kind's units get cheaper when they move, the second's do
not. Costing units at the donor's pace never sends a thief more than it can
do in time: in the first case it runs out early and takes again, one more
seam each time.
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
        The worker's threads, divided by how much slower than the others it
        is (what it can take in as a thief).
    seams:
        Seconds that cutting the run before unit ``s`` costs (what the tasks
        on either side send each other), for ``s`` in ``range(len(units))``.
        A move starts where this is least, within reach of the cut that
        balances. Empty means unknown: every cut costs the same.
    """

    units: Sequence[float]
    pieces: Sequence[int] = ()
    started: float = 0.0
    speed: float = 1.0
    seams: Sequence[float] = ()

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
        Seconds by which a donor's moves, together, must bring its finish
        earlier; they must also save more than their cuts cost (``Run.seams``).
        All the moves together must also bring the last finish of all
        workers earlier by as much.

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
    per (thief, donor) pair; dealt again at most once per donor whose moves
    do not pay.
    """
    _check(runs)
    if idle is None:
        idle = [w for w, r in runs.items() if not len(r.units)]
    if not idle:
        return []
    # A donor's moves are judged together: three thieves that each take one
    # unit of a slow worker's last four gain together what none gains alone.
    # A donor whose moves do not pay for themselves keeps its run, and the
    # others are dealt again without it.
    frozen: set = set()
    while True:
        moves = _fill(runs, idle, frozen)
        poor = _not_worth_it(runs, moves, min_gain)
        if not poor:
            break
        frozen |= poor
    # What the graph gains is the last finish: taking from one of two
    # workers that would finish together gains nothing.
    last = max(r.finish for r in runs.values())
    work = _work_after(runs, moves)
    return moves if max(work[w] / r.speed for w, r in runs.items()) < last - min_gain else []


def _work_after(runs: Mapping[str, Run], moves: list[Move]) -> dict[str, float]:
    """Each worker's expected seconds of work once ``moves`` are made."""
    work = {w: r.work for w, r in runs.items()}
    for m in moves:
        work[m.donor] -= m.seconds
        work[m.thief] += m.seconds
    return work


def _fill(runs: Mapping[str, Run], idle: Sequence[str], frozen: set) -> list[Move]:
    """Water-filling: each idle worker, least loaded first, takes tails from
    the donors that would finish last, until it would finish at the target."""
    left = {w: len(r.units) for w, r in runs.items()}  # units a donor still has
    work = {w: r.work for w, r in runs.items()}
    speed = {w: r.speed for w, r in runs.items()}
    target = sum(work.values()) / sum(speed.values())
    moves: list[Move] = []
    for thief in sorted(idle, key=lambda w: work[w] / speed[w]):
        for donor in sorted(runs, key=lambda w: -work[w] / speed[w]):
            want = target * speed[thief] - work[thief]
            excess = work[donor] - target * speed[donor]
            if donor == thief or donor in frozen or want <= 0 or excess <= 0:
                continue
            r = runs[donor]
            start = _cut(r, left[donor], min(want, excess))
            count = left[donor] - start
            if count <= 0:
                continue
            seconds = float(sum(r.units[start : left[donor]]))
            before = work[donor] / speed[donor]
            after = (work[donor] - seconds) / speed[donor]
            if max(after, (work[thief] + seconds) / speed[thief]) >= before:
                continue  # it would only swap who finishes last
            moves.append(Move(donor, thief, start, count, seconds))
            left[donor] = start
            work[donor] -= seconds
            work[thief] += seconds
    return moves


def _not_worth_it(runs: Mapping[str, Run], moves: list[Move], min_gain: float) -> set:
    """Donors whose moves together bring their finish earlier by no more
    than ``min_gain``, or than the seconds to send what their cuts send."""
    work = _work_after(runs, moves)
    poor = set()
    for donor in {m.donor for m in moves}:
        r = runs[donor]
        mine = [m for m in moves if m.donor == donor]
        latest = max([work[donor] / r.speed]
                     + [work[m.thief] / runs[m.thief].speed for m in mine])
        # The seams' transfers overlap other work; the margin is for noise.
        cost = max(min_gain, sum(float(r.seams[m.start]) if len(r.seams) else 0.0 for m in mine))
        if r.work / r.speed - latest <= cost:
            poor.add(donor)
    return poor


def _cut(r: Run, n: int, amount: float) -> int:
    """Where the tail of ``r.units[:n]`` worth about ``amount`` seconds starts.

    The tail's cost is the nearest to ``amount`` that a whole unit allows.
    Within a quarter of that tail, the cut then moves to where what it sends
    (``r.seams``) plus how far its tail is from ``amount`` is least, in
    seconds. Without seams it moves to a change of
    piece if there is one (a whole group moves rather than a group being
    cut), or else next to the heaviest unit: a unit that carries more tasks closes
    (or opens) a larger subtree (the partial sums of a block follow one of
    the block's chunks), so a cut there leaves one transfer at the seam,
    not one per level of a reduction. A donor with nothing started keeps at
    least its first unit, the one it is about to start; one that is busy
    may give all it has not started (a slow worker's last units).
    """
    first = 0 if r.started > 0 else 1
    if n <= first or amount <= 0:
        return n
    taken, start = 0.0, n
    while start > first:
        u = float(r.units[start - 1])
        if taken + u / 2 > amount:
            break
        taken += u
        start -= 1
    if start == n:
        return start
    slack = max(1, (n - start) // 4)
    window = range(max(first, start - slack), min(n - 1, start + slack) + 1)
    if len(r.seams):
        # Off the balancing point only where the transfer saved is worth
        # more than the balance lost: both in seconds.
        tail, acc = {}, taken + float(sum(r.units[window.start : start]))
        for s in window:  # tail[s] = sum(r.units[s:n]), in one pass
            tail[s] = acc
            acc -= float(r.units[s])
        return min(window, key=lambda s: (
            float(r.seams[s]) + abs(tail[s] - amount), abs(s - start)))
    if len(r.pieces):
        changes = [s for s in window if s == 0 or r.pieces[s] != r.pieces[s - 1]]
        if changes:
            return min(changes, key=lambda s: abs(s - start))
    # The heaviest unit of a subtree comes first or last in run order,
    # depending on how the graph's keys and dask.order number it; the run's
    # own ends tell which (its first or last unit holds the group's top).
    last = float(r.units[n - 1]) >= float(r.units[0])

    def weight(s: int) -> float:
        if s == 0:  # all the donor has not started: no unit before it
            return 0.0
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
        if len(r.seams) and len(r.seams) != len(r.units):
            raise ValueError(f"worker {w!r}: {len(r.seams)} seams for {len(r.units)} units")
        if any(c < 0 for c in r.seams):
            raise ValueError(f"worker {w!r} has a negative seam cost")
