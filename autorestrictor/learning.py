"""What finished tasks teach: durations and output sizes per kind, and each worker's pace.

Pure: plain numbers in, plain numbers out; it never imports ``distributed``.
A task's *kind* is its prefix name (``"sum"``, ``"random_sample"``). Sizes
and durations are also learned per *shape* (:func:`shape_of`): one prefix
often makes outputs of very different sizes in one graph (a QR's
``getitem`` takes an 8 MB factor from one tuple and a 80 kB triangle from
another; a rechunk's merges make chunks of a new size), or takes very
different times (a tree reduction's combine of 30 partial results and of
2), and a later graph of the same kind has groups of the same shapes.
The plugin feeds :meth:`Learned.observe` from its ``transition`` hook and
asks the rest when it plans, admits and rebalances.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping

#: A worker counts as slow only when its tasks take this many times longer
#: than the same kind of task takes on the other workers: on a shared
#: machine, CPU-bound tasks on equal workers vary by a third or more from
#: one worker to the next (in the bench's vorticity, one worker once looked
#: five times slower for a while), and moving work on that noise costs
#: transfers for nothing.
PACE_NOISE = 2.0

#: Tasks of a kind a worker must have finished before its pace on that kind
#: counts. A run's first tasks pay for imports, page faults and a cold cache.
PACE_MIN_TASKS = 8

#: A worker's pace on a kind is the mean of about its last this many tasks
#: of it, so that it follows the worker into cheaper or dearer chunks.
PACE_WINDOW = 10

#: Durations and sizes per kind are running means over about this many
#: tasks: they keep following a drift.
KIND_WINDOW = 100

#: Shapes whose sizes are kept, at most; the oldest is forgotten first. (A
#: shape is a group name and a task count: a scheduler that runs graphs of
#: ever new sizes would otherwise keep one per graph.)
MAX_SHAPES = 4096

#: Output sizes kept per task position (the indices in its key) within a
#: shape, at most; the oldest shape's are forgotten first. Within one shape
#: sizes may still differ by position: the halos of an overlap (thin strips
#: and corners), the pieces of a rechunk.
MAX_POSITIONS = 100_000

#: Expected seconds of a task that only selects part of its input
#: (:func:`autorestrictor.compat.selects`) while its kind has never run:
#: the order of a task's own overhead on a worker, where any other unknown
#: kind is assumed to take ``unknown-task-duration`` (500 ms). Dask does
#: the same for the tasks that split chunks in a rechunk or a shuffle
#: (``distributed.scheduler.default-task-durations``, 1 us). Costed as
#: unknown, the 40 ``getitem`` tasks that slice a tall-and-skinny QR's
#: stacked R would weigh as much as 40 block QRs, and the worker that reads
#: them would be given half its share of the real work.
SELECTION_SECONDS = 1e-3

_TOKEN = re.compile(r"[0-9a-f]{8,}|[0-9]+")


@functools.lru_cache(maxsize=MAX_SHAPES)
def shape_of(group: str, n_tasks: int) -> str:
    """The *shape* of a task group, whose tasks' outputs share a size.

    Its name without the tokens Dask draws anew for every graph, and its
    number of tasks: the same step of the same computation on data of the
    same size has the same shape in the next graph.

    >>> shape_of("getitem-ce6dbc07367d-q1", 10)
    'getitem-q1[10]'
    >>> shape_of("rechunk-merge-7c9bf7650cd3", 144)
    'rechunk-merge[144]'
    """
    words = [w for w in group.split("-") if not _TOKEN.fullmatch(w)]
    return f"{'-'.join(words) or group}[{n_tasks}]"


def told_apart(shapes: Mapping[str, str],
               positions: Mapping[str, Iterable[tuple]]) -> dict[str, str]:
    """Shapes for the groups of one graph that share a shape with another.

    Two groups of one graph can have the same name without tokens and the
    same task count and yet different sizes at one position: a field's
    rechunk and its transpose's (the bench's vorticity), whose outputs at
    ``(1, 2)`` are 12.5 MB in one and 20 kB in the other. Learned in one
    shape, the last seen wins at each position and the next graph's
    prediction is off by that much. Such groups are told apart by their
    layout, the positions their tasks take (the indices of their keys), which
    the next graph of the same kind repeats. ``shapes`` gives each group's
    :func:`shape_of`, ``positions`` the positions of the tasks of the groups
    whose shape another group shares (the others are not read). Returns the
    new shapes of those groups; groups of one shape that all have one
    layout keep their shape. (Groups of one layout can still differ in
    size: nothing in their keys tells them apart.)

    >>> told_apart({"a-1f2e3d4c5b6a": "a[2]", "a-9f8e7d6c5b4a": "a[2]", "b-1f2e3d4c5b6a": "b[2]"},
    ...            {"a-1f2e3d4c5b6a": [(0, 1), (0, 2)], "a-9f8e7d6c5b4a": [(1, 0), (2, 0)]})
    {'a-1f2e3d4c5b6a': 'a[2]@15301e9a', 'a-9f8e7d6c5b4a': 'a[2]@320fed0d'}
    """
    named: dict = defaultdict(dict)  # shape -> {group: its shape with its layout}
    for group in clashing(shapes):
        shape = shapes[group]
        # repr: positions of keys that do not compare still sort
        layout = repr(sorted(map(repr, positions.get(group, ())))).encode()
        named[shape][group] = f"{shape}@{zlib.crc32(layout):08x}"
    out = {}
    for new in named.values():
        if len(set(new.values())) > 1:  # (one layout for all tells nothing apart)
            out.update(new)
    return out


def clashing(shapes: Mapping[str, str]) -> list[str]:
    """The groups whose shape another group in ``shapes`` shares."""
    count = Counter(shapes.values())
    return [g for g, s in shapes.items() if count[s] > 1]


@dataclasses.dataclass
class Mean:
    """A running mean over about the last ``window`` values added."""

    value: float = 0.0
    count: int = 0

    def add(self, x: float, window: int) -> None:
        self.count += 1
        self.value += (x - self.value) / min(self.count, window)


@dataclasses.dataclass
class Learned:
    """Durations and sizes per kind, and each worker's recent pace per kind.

    Examples
    --------
    >>> learned = Learned()
    >>> for _ in range(8):
    ...     learned.observe("sum", "a", seconds=1.0, nbytes=800)
    ...     learned.observe("sum", "b", seconds=3.0, nbytes=800)
    >>> learned.expected("sum", fallback=0.5), learned.sizes()
    (2.0, {'sum': 800.0})
    >>> {w: round(x, 2) for w, x in learned.slowdowns(["a", "b"]).items()}
    {'a': 0.33, 'b': 3.0}
    """

    duration: dict[str, Mean] = dataclasses.field(default_factory=dict)  # seconds
    nbytes: dict[str, Mean] = dataclasses.field(default_factory=dict)  # output bytes
    pace: dict[tuple[str, str], Mean] = dataclasses.field(default_factory=dict)
    #: output bytes and seconds per shape (:func:`shape_of`), at most
    #: MAX_SHAPES of each
    shape_nbytes: dict[str, Mean] = dataclasses.field(default_factory=dict)
    shape_duration: dict[str, Mean] = dataclasses.field(default_factory=dict)
    #: output bytes per shape and position (the indices of a task's key),
    #: at most MAX_POSITIONS in all
    position_nbytes: dict[str, dict[tuple, float]] = dataclasses.field(default_factory=dict)
    n_positions: int = 0
    #: group name -> its shape, for groups told apart from others of one
    #: shape (:func:`told_apart`), at most MAX_SHAPES
    group_shapes: dict[str, str] = dataclasses.field(default_factory=dict)

    def observe(self, kind: str, worker: str, seconds: float, nbytes: int | None,
                shape: str | None = None, position: tuple | None = None) -> None:
        """Learn from one task of ``kind`` (and ``shape``, at ``position`` in
        it) that computed for ``seconds`` on ``worker``."""
        if seconds <= 0:
            return
        if isinstance(nbytes, int) and nbytes >= 0:
            self.nbytes.setdefault(kind, Mean()).add(nbytes, KIND_WINDOW)
            if shape is not None:
                _add_bounded(self.shape_nbytes, shape, nbytes)
                if position is not None:
                    self._remember_position(shape, position, nbytes)
        self.duration.setdefault(kind, Mean()).add(seconds, KIND_WINDOW)
        if shape is not None:
            _add_bounded(self.shape_duration, shape, seconds)
        self.pace.setdefault((worker, kind), Mean()).add(seconds, PACE_WINDOW)

    def name_groups(self, shapes: Mapping[str, str]) -> None:
        """Learn the tasks of these groups under these shapes (see :func:`told_apart`)."""
        for group, shape in shapes.items():
            self.group_shapes.pop(group, None)
            self.group_shapes[group] = shape
        while len(self.group_shapes) > MAX_SHAPES:
            del self.group_shapes[next(iter(self.group_shapes))]

    def shape(self, group: str, n_tasks: int) -> str:
        """The shape a group's tasks are learned and predicted under."""
        return self.group_shapes.get(group) or shape_of(group, n_tasks)

    def _remember_position(self, shape: str, position: tuple, nbytes: int) -> None:
        sizes = self.position_nbytes.get(shape)
        if sizes is not None and position in sizes:
            sizes[position] = float(nbytes)
            return
        while self.n_positions >= MAX_POSITIONS:
            oldest = next(iter(self.position_nbytes))
            if oldest == shape:
                return  # one shape past the bound: its other positions go unlearned
            self.n_positions -= len(self.position_nbytes.pop(oldest))
        if sizes is None:
            sizes = self.position_nbytes[shape] = {}
        sizes[position] = float(nbytes)
        self.n_positions += 1

    def position_sizes(self, shape: str | None) -> dict[tuple, float]:
        """Learned output bytes per position in ``shape`` (empty if none)."""
        return self.position_nbytes.get(shape, {}) if shape is not None else {}

    def forget_worker(self, worker: str) -> None:
        for key in [k for k in self.pace if k[0] == worker]:
            del self.pace[key]

    def sizes(self) -> dict[str, float]:
        """Learned output bytes per kind and per shape (their names do not
        meet: a shape ends in its task count in brackets)."""
        out = {kind: m.value for kind, m in self.nbytes.items()}
        out.update((shape, m.value) for shape, m in self.shape_nbytes.items())
        return out

    def size_kind(self, kind: str | None, shape: str | None) -> str | None:
        """The name under which a task's size is looked up: its shape if
        learned, else its kind."""
        return shape if shape in self.shape_nbytes else kind

    def size(self, kind: str | None, shape: str | None = None) -> float:
        """Learned output bytes of a task of ``kind`` and ``shape`` (the
        shape's if learned, else the kind's); -1 when not known."""
        m = self.shape_nbytes.get(shape) if shape is not None else None
        if m is None and kind is not None:
            m = self.nbytes.get(kind)
        return m.value if m is not None else -1.0

    def expected(self, kind: str | None, fallback: float, shape: str | None = None) -> float:
        """Expected compute seconds of a task of ``kind`` (and ``shape``):
        learned for its shape, else for its kind, else ``fallback`` (the
        scheduler's own average, else its unknown-task duration)."""
        m = self.shape_duration.get(shape) if shape is not None else None
        if m is None and kind is not None:
            m = self.duration.get(kind)
        return m.value if m is not None else fallback

    def shape_seconds(self) -> dict[str, float]:
        """Learned compute seconds per shape."""
        return {shape: m.value for shape, m in self.shape_duration.items()}

    def typical(self, unknown: float) -> float:
        """A typical task's seconds so far: the mean over kinds (``unknown`` at first)."""
        if not self.duration:
            return unknown
        return sum(m.value for m in self.duration.values()) / len(self.duration)

    def seconds(self, worker: str, kinds: Mapping[str, int], own: bool,
                fallback: Mapping[str, float]) -> float:
        """Expected seconds of so many tasks of each kind on ``worker``.

        At the worker's own recent pace per kind if ``own`` (a slow worker)
        and it has seen :data:`PACE_MIN_TASKS` of that kind, else at the
        kind's average (``fallback[kind]`` where nothing was learned).
        """
        total = 0.0
        for kind, n in kinds.items():
            mine = self.pace.get((worker, kind)) if own else None
            if mine is not None and mine.count >= PACE_MIN_TASKS:
                total += n * mine.value
            else:
                total += n * self.expected(kind, fallback[kind])
        return total

    def slowdowns(self, workers: Iterable[str]) -> dict[str, float]:
        """How many times longer each worker's tasks take than the other workers'.

        Per kind, a worker's recent mean against the median of the workers'
        means (against the other worker's, when there are two); the
        geometric mean of those ratios, weighted by tasks seen. 1.0 where
        nothing compares yet. O(pairs of worker and kind seen).
        """
        order = list(dict.fromkeys(workers))  # (the answer in the order given)
        workers = set(order)
        by_kind: dict[str, list] = defaultdict(list)
        for (w, kind), m in self.pace.items():
            if w in workers and m.count >= PACE_MIN_TASKS and m.value > 0:
                by_kind[kind].append((w, m.value, min(m.count, KIND_WINDOW)))
        logs: dict[str, float] = defaultdict(float)
        weights: dict[str, float] = defaultdict(float)
        for rows in by_kind.values():
            if len(rows) < 2:
                continue
            middle = _median([r for _, r, _ in rows])
            for w, recent, seen in rows:
                if len(rows) == 2:
                    (other,) = [r for v, r, _ in rows if v != w]
                else:
                    other = middle
                logs[w] += seen * math.log(recent / other)
                weights[w] += seen
        return {w: math.exp(logs[w] / weights[w]) if weights[w] else 1.0 for w in order}


def _add_bounded(means: dict[str, Mean], name: str, x: float) -> None:
    """Add ``x`` to ``means[name]``, forgetting the oldest name past MAX_SHAPES."""
    m = means.get(name)
    if m is None:
        if len(means) >= MAX_SHAPES:
            del means[next(iter(means))]
        m = means[name] = Mean()
    m.add(x, KIND_WINDOW)


def compute_seconds(startstops: Iterable[Mapping] | None) -> float:
    """Seconds a task spent computing, from a worker's ``startstops``."""
    return sum(ss["stop"] - ss["start"] for ss in startstops or ()
               if ss.get("action") == "compute")


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2
