"""``autorestrictor.explain``: the plan for a computation, before running it.

It builds the graph a ``client.compute`` would send, asks the same planner
(:func:`autorestrictor.plan`) with the same inputs the scheduler plugin would
give it, and returns an :class:`Explanation`: the plan, a picture of where
the data will live, the bytes the plan expects to move against an estimate
for Dask's default placement, and why the plugin would step back, if it
would. Nothing runs.

With ``client=``, the inputs come from that cluster: its running workers, the
plugin's options, the sizes and durations it has learned, the pinned work
already waiting, and the results already in memory. Without it, from
``workers=`` and the local configuration, as on a fresh cluster.

The plugin core never imports this module; it imports only ``dask``.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import dask
import numpy as np
from dask.utils import key_split, parse_bytes, parse_timedelta

from autorestrictor.config import Options
from autorestrictor.datamap import (
    DataMap,
    data_map,
    default_estimate,
    legend_html,
    worker_colour,
)
from autorestrictor.learning import SELECTION_SECONDS
from autorestrictor.planner import Plan, estimate_sizes, plan

logger = logging.getLogger("autorestrictor")

#: Annotations that make the scheduler restrict a task: the plugin leaves it alone.
_RESTRICTING = ("workers", "resources", "host")


@dataclasses.dataclass(frozen=True)
class Explanation:
    """What the plugin would do with a graph; displays itself in a notebook.

    Attributes
    ----------
    plan:
        The :class:`~autorestrictor.Plan` the planner returns for the graph.
    map:
        Where the plan puts the data (:func:`autorestrictor.datamap.data_map`).
    default_bytes:
        Bytes an estimate of Dask's default placement moves between workers
        (:func:`autorestrictor.datamap.default_estimate`).
    sizes:
        How many output sizes were ``measured``, ``learned`` or ``assumed``.
        When all are assumed, bytes count task outputs, each as one.
    source:
        Where the workers and the learned state came from.
    default_finish:
        Predicted seconds until each worker (in the order of
        ``plan.workers``) finishes under that estimate of Dask's default,
        by the model of time that gives ``plan.finish``
        (:func:`autorestrictor.datamap.default_estimate`).
    peak, default_peak:
        Each worker's predicted peak of open results (bytes, or results
        when no size is known), with the plan and with that estimate of
        Dask's default (:func:`autorestrictor.datamap.default_estimate`).
    """

    plan: Plan
    map: DataMap
    default_bytes: float
    sizes: dict
    source: str
    notes: tuple[str, ...] = ()
    default_finish: tuple[float, ...] | None = None
    peak: tuple[float, ...] | None = None
    default_peak: tuple[float, ...] | None = None

    @property
    def assignment(self) -> dict:
        """``key -> worker address`` of every task the plugin would pin."""
        return self.plan.assignment

    @property
    def reason(self) -> str | None:
        """Why the plugin would leave the graph to Dask, or ``None`` if it pins it."""
        return self.plan.reason

    @property
    def predicted_bytes(self) -> float:
        return float(self.plan.predicted_bytes)

    @property
    def sizes_known(self) -> bool:
        return bool(self.sizes.get("measured") or self.sizes.get("learned"))

    def _amount(self, x: float) -> str:
        if not self.sizes_known:
            return f"{x:,.0f} task output{'s' if x != 1 else ''}"
        return dask.utils.format_bytes(int(x))

    def headline(self) -> str:
        p = self.plan
        if p.reason is not None:
            return f"Left to Dask: {p.reason}."
        used = sum(1 for x in p.load.values() if x)
        return (
            f"Pins {p.n_pinned:,} of {p.n_tasks:,} tasks in {p.n_groups:,} group(s) "
            f"({p.n_pieces:,} piece(s)) onto {used} of {len(p.workers)} worker(s)."
        )

    def __repr__(self) -> str:
        lines = [f"<autorestrictor.Explanation ({self.source})>", self.headline()]
        lines.append(
            f"Predicted transfer: {self._amount(self.predicted_bytes)} with the plan, "
            f"about {self._amount(self.default_bytes)} with Dask's default (estimate)."
        )
        lines.extend(line for line in (self.finish_line(), self.peak_line()) if line)
        lines.extend(f"Note: {n}" for n in (*self.plan.notes, *self.notes))
        m = self.map
        if m.kind == "chunks" and m.grid.size <= 400:
            lines.append(f"Chunks of {m.name} (a letter per worker, . left to Dask):")
            letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
            lines.extend(
                "  " + "".join("." if w < 0 else letters[w % 26] for w in row) for row in m.grid
            )
        for i, w in enumerate(m.workers):
            if m.load and m.load[i]:
                lines.append(f"  {'ABCDEFGHIJKLMNOPQRSTUVWXYZ'[i % 26]} {w}: {m.load[i]} task(s)")
        return "\n".join(lines)

    def finish_line(self) -> str | None:
        """Predicted seconds per worker, the plan's and Dask's default's
        (estimate); ``None`` when the plan pins nothing."""
        if self.plan.finish is None or self.default_finish is None:
            return None

        def fmt(xs) -> str:
            return ", ".join(f"{x:,.3g}" for x in xs)

        return (f"Predicted seconds per worker: {fmt(self.plan.finish)} with the plan, "
                f"{fmt(self.default_finish)} with Dask's default (estimate).")

    def peak_line(self) -> str | None:
        """The largest worker's predicted peak of open results, the plan's
        and Dask's default's (estimate); ``None`` when the plan pins nothing."""
        if self.plan.reason is not None or not self.peak or not self.default_peak:
            return None
        return (f"Predicted peak of open results on the fullest worker: "
                f"{self._amount(max(self.peak))} with the plan, "
                f"{self._amount(max(self.default_peak))} with Dask's default (estimate).")

    def _repr_html_(self) -> str:
        return to_html(self)


def explain(
    obj: Any,
    workers: int | Mapping[str, int] | None = None,
    *,
    client=None,
    **options: Any,
) -> Explanation:
    """The plan the plugin would make for ``obj``, without running anything.

    Parameters
    ----------
    obj:
        A dask collection (array, dataframe, bag, delayed), a list of them
        (as given to ``client.compute``), or a task graph: a mapping of
        key -> task (a dict or a ``HighLevelGraph``), all of whose keys are
        computed.
    workers:
        Without ``client``: the number of single-thread workers (default 4),
        or a mapping of worker address -> threads.
    client:
        A ``distributed.Client``: plan for its cluster, with what the
        plugin installed there has learned (sizes, durations, pinned work)
        and its options.
    **options:
        Overrides of ``autorestrictor.*`` options, as for ``AutoRestrictor``.

    Returns
    -------
    Explanation
        ``.assignment`` (key -> worker), ``.plan``, ``.map``,
        ``.default_bytes``; displays a picture in a notebook.

    Raises
    ------
    TypeError
        If ``obj`` is neither a dask collection nor a task graph, or
        ``workers`` is neither a number nor a mapping.
    ValueError
        If both ``workers`` and ``client`` are given, or for a bad option.
    RuntimeError
        If this dask release cannot support ``explain()`` (the message names
        what it lacks; see :mod:`autorestrictor.compat`).

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.ones((10, 40), chunks=(10, 1)).sum(axis=1)
    >>> e = explain(x, workers=4, min_tasks=10)
    >>> e.reason, e.map.shape, len(set(e.assignment.values()))
    (None, (1, 40), 4)
    """
    from autorestrictor.compat import explain_unavailable
    from autorestrictor.intake import graph_order

    off = explain_unavailable()
    if off is not None:
        raise RuntimeError(off)
    dsk, annotations = _graph(obj)
    if client is not None and workers is not None:
        raise ValueError("give workers= or client=, not both: the client's workers are used")
    keys = graph_order(dsk)
    prefixes = {k: key_split(k) for k in keys}
    shapes = _shapes(keys)
    if client is not None:
        externals = {d for k in keys for d in dsk[k].dependencies if d not in dsk}
        view = client.run_on_scheduler(
            _cluster_view, keys=list(externals | set(keys)),
            prefixes=sorted(set(prefixes.values())), shapes=sorted(set(shapes.values())),
        )
        source = f"cluster at {client.scheduler.address}"
    else:
        view = _local_view(_workers(4 if workers is None else workers), prefixes.values())
        source = f"{len(view['workers'])} worker(s) given, nothing learned yet"
    notes = () if view["installed"] or client is None else (
        "the plugin is not installed on this cluster; planned with the local configuration",)
    opts = dataclasses.asdict(Options.from_config(**{**view["options"], **options}))
    inputs = _inputs(dsk, keys, prefixes, shapes, annotations, view)
    p = plan(inputs["dependencies"], view["workers"], **inputs["plan"], **opts)
    p = dataclasses.replace(p, sizes=inputs["sizes"])
    given = inputs["plan"]
    default = default_estimate(
        inputs["dependencies"], view["workers"], bandwidth=given["bandwidth"],
        nbytes=given["nbytes"], priority=given["priority"], cost=given["cost"], plan=p,
    )
    return Explanation(plan=p, map=data_map(p), default_bytes=default.bytes,
                       sizes=inputs["sizes"], source=source, notes=notes,
                       default_finish=tuple(default.finish.tolist()),
                       peak=tuple(default.plan_peak.tolist()),
                       default_peak=tuple(default.peak.tolist()))


def _graph(obj: Any) -> tuple[dict, dict]:
    """The materialised graph ``{key: task}`` a client would send, and its annotations."""
    from dask._task_spec import convert_legacy_graph
    from dask.core import validate_key

    from autorestrictor.compat import collection_graph

    collections = obj if isinstance(obj, (list, tuple)) else [obj]
    if collections and all(dask.is_dask_collection(c) for c in collections):
        dsk, annotations = collection_graph(list(collections))
    elif isinstance(obj, Mapping):
        dsk, annotations = dict(obj), {}
        for k in dsk:
            try:
                validate_key(k)
            except TypeError as e:
                raise TypeError(
                    f"explain() got a mapping whose key {k!r} is not a task key: {e}") from e
    else:
        raise TypeError(
            "explain() needs a dask collection (array, dataframe, bag, delayed), a list of "
            "them, or a task graph (a mapping of key -> task); got "
            f"{type(obj).__module__}.{type(obj).__qualname__}"
        )
    return convert_legacy_graph(dsk), annotations


def _workers(workers: Any) -> dict[str, int]:
    if isinstance(workers, Mapping):
        return dict(workers)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)):
        raise TypeError(
            f"workers must be a number of workers or a mapping of address -> threads, "
            f"got {type(workers).__name__}"
        )
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return {f"worker-{i}": 1 for i in range(int(workers))}


def _local_view(workers: dict[str, int], prefixes) -> dict:
    """What a fresh cluster of ``workers`` would tell the planner."""
    unknown = parse_timedelta(
        dask.config.get("distributed.scheduler.unknown-task-duration", default="500ms"))
    bandwidth = parse_bytes(dask.config.get("distributed.scheduler.bandwidth", default=100e6))
    return {
        "installed": False, "options": {}, "workers": workers, "busy": {}, "learned": {},
        "expected": dict.fromkeys(prefixes, math.nan), "unknown": float(unknown),
        "shape_seconds": {},
        "positions": {},
        "who_has": {}, "nbytes": {},
        "bandwidth": float(bandwidth),
    }


def _cluster_view(dask_scheduler=None, keys=(), prefixes=(), shapes=()) -> dict:
    """On the scheduler: what the plugin would give the planner for a graph of ``keys``."""
    from autorestrictor import intake
    from autorestrictor.learning import Learned
    from autorestrictor.state import state_of

    s = dask_scheduler
    st = state_of(s)
    workers = intake.running_workers(s)
    learned = st.learned if st is not None else Learned()
    unknown = intake.unknown_duration(s)
    # NaN: a kind never seen, costed on the client, which has its tasks
    expected = {name: intake.expected_seconds(s.task_prefixes.get(name), learned, math.nan)
                for name in prefixes}
    who_has, nbytes = {}, {}
    for k in keys:
        ts = s.tasks.get(k)
        if ts is not None and ts.who_has:
            who_has[k] = [ws.address for ws in ts.who_has]
            nbytes[k] = ts.get_nbytes()
    return {
        "installed": st is not None,
        "options": dataclasses.asdict(st.options) if st is not None else {},
        "workers": workers,
        "busy": intake.busy(st, workers, unknown, s.tasks) if st is not None else {},
        "learned": learned.sizes(),
        "expected": expected, "unknown": float(unknown),
        "shape_seconds": learned.shape_seconds(),
        "positions": {shape: learned.position_sizes(shape) for shape in shapes},
        "who_has": who_has, "nbytes": nbytes,
        "bandwidth": float(s.bandwidth),
    }


def _shapes(keys: list) -> dict:
    """``key -> shape of its task group`` (:func:`autorestrictor.learning.shape_of`),
    as the scheduler names groups: sizes and seconds learned per shape come
    before those learned per prefix, as in :func:`autorestrictor.intake.read_graph`."""
    from distributed.utils import key_split_group

    from autorestrictor.learning import clashing, shape_of, told_apart

    group = {k: key_split_group(k) for k in keys}
    count = Counter(group.values())
    shapes = {g: shape_of(g, n) for g, n in count.items()}
    clash = set(clashing(shapes))
    if clash:  # told apart by their layout, as the plugin does
        positions: dict = {g: [] for g in clash}
        for k, g in group.items():
            if g in clash and type(k) is tuple:
                positions[g].append(k[1:])
        shapes.update(told_apart(shapes, positions))
    return {k: shapes[g] for k, g in group.items()}


def _inputs(dsk: dict, keys: list, prefixes: dict, shapes: dict, annotations: dict,
            view: dict) -> dict:
    """The planner's inputs, built as the plugin builds them
    (:func:`autorestrictor.intake.read_graph`)."""
    import dask.order

    from autorestrictor.compat import is_p2p_barrier, selects

    priority = dask.order.order(dsk)
    dependencies = {k: list(dsk[k].dependencies) for k in keys}
    who_has = view["who_has"]
    opted_out = annotations.get("autorestrict", {})
    restricted = set().union(*(annotations.get(a, {}) for a in _RESTRICTING))
    skip = [k for k in keys if k not in who_has and (
        opted_out.get(k, True) is False or k in restricted)]
    p2p = [k for k in keys if is_p2p_barrier(k, dsk[k])]
    learned, seconds, expected = view["learned"], view["shape_seconds"], view["expected"]
    # a kind never seen: as the plugin costs it, by its first task
    unseen: dict = {}
    for k, name in prefixes.items():
        if math.isnan(expected[name]) and name not in unseen:
            unseen[name] = SELECTION_SECONDS if selects(dsk[k]) else view["unknown"]
    expected = {**expected, **unseen}
    positions = view["positions"]
    per_key = {}
    for k in keys:
        size = positions.get(shapes[k], {}).get(k[1:]) if type(k) is tuple else None
        if size is not None:
            per_key[k] = size
    sizes = estimate_sizes(view["nbytes"], {
        k: shapes[k] if shapes[k] in learned else prefixes[k] for k in keys}, learned, per_key)
    return {
        "dependencies": dependencies,
        "sizes": sizes.counts(),
        "plan": {
            "nbytes": sizes.nbytes, "priority": priority, "who_has": who_has, "skip": skip,
            "cost": {k: seconds.get(shapes[k], expected[prefixes[k]]) for k in keys},
            "busy": view["busy"], "placed_at_run_time": p2p, "bandwidth": view["bandwidth"],
        },
    }


# ---------------------------------------------------------------------------
# The notebook picture
# ---------------------------------------------------------------------------

_WIDTH = 640  #: pixels of the chunk map and of the bars


def to_html(e: Explanation) -> str:
    """The explanation as HTML with inline SVG (no script, no dependency)."""
    p, m = e.plan, e.map
    parts = [
        '<div class="autorestrictor-explain" style="font-family: sans-serif; '
        'font-size: 13px; max-width: 700px">',
        f"<h4 style='margin: 4px 0'>autorestrictor: the plan for {p.n_tasks:,} tasks on "
        f"{len(p.workers)} worker(s)</h4>",
        f"<p style='margin: 4px 0'>{html.escape(e.headline())}</p>",
    ]
    if m.kind == "chunks":
        grid = " &times; ".join(map(str, m.shape))
        title = f"Where the {grid} chunks of <code>{html.escape(m.name)}</code> will live"
        if m.step > 1:
            title += f" (every {m.step}th chunk along each axis)"
        parts += [f"<p style='margin: 8px 0 2px'>{title}:</p>", _svg_grid(m)]
    elif m.kind == "runs":
        parts += ["<p style='margin: 8px 0 2px'>Pinned groups in the order they will run, "
                  "coloured by worker:</p>", _svg_runs(m)]
    parts.append(legend_html(m))
    parts.append(_svg_bytes(e))
    for line in (e.finish_line(), e.peak_line()):
        if line:
            parts.append(f"<p style='margin: 4px 0'>{html.escape(line)}</p>")
    notes = [*p.notes, *e.notes]
    if not e.sizes_known:
        notes.append("no output size is known yet (nothing of these kinds ran on this "
                     "cluster): transfers are counted in task outputs")
    if notes:
        parts.append("<ul style='margin: 4px 0'>" + "".join(
            f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append(f"<p style='color: #666; margin: 4px 0'>Workers and learned state: "
                 f"{html.escape(e.source)}.</p></div>")
    return "\n".join(parts)


def _svg_grid(m: DataMap) -> str:
    rows, cols = m.grid.shape
    cell = max(1.0, min(24.0, _WIDTH / cols))
    h = cell if rows > 1 else max(cell, 28.0)
    out = [f'<svg width="{cols * cell:.0f}" height="{rows * h:.0f}" '
           f'xmlns="http://www.w3.org/2000/svg" shape-rendering="crispEdges">']
    gap = 1.0 if cell >= 6 else 0.6 if cell >= 3 else 0.0
    for r in range(rows):
        row = m.grid[r]
        c = 0
        while c < cols:  # one rectangle per run of one colour along a row
            end = c
            while end + 1 < cols and row[end + 1] == row[c]:
                end += 1
            if gap:
                for cc in range(c, end + 1):
                    out.append(f'<rect x="{cc * cell:.2f}" y="{r * h:.2f}" '
                               f'width="{cell - gap:.2f}" height="{h - gap:.2f}" '
                               f'fill="{worker_colour(int(row[c]))}"/>')
            else:
                out.append(f'<rect x="{c * cell:.2f}" y="{r * h:.2f}" '
                           f'width="{(end - c + 1) * cell:.2f}" height="{h:.2f}" '
                           f'fill="{worker_colour(int(row[c]))}"/>')
            c = end + 1
    out.append("</svg>")
    return "".join(out)


def _svg_runs(m: DataMap) -> str:
    total = max(b for _, b, _ in m.runs)
    out = [f'<svg width="{_WIDTH}" height="28" xmlns="http://www.w3.org/2000/svg">']
    for a, b, w in m.runs:
        out.append(f'<rect x="{a / total * _WIDTH:.2f}" y="0" '
                   f'width="{max((b - a) / total * _WIDTH, 0.5):.2f}" height="28" '
                   f'fill="{worker_colour(w)}"/>')
    out.append("</svg>")
    return "".join(out)


def _svg_bytes(e: Explanation) -> str:
    rows = [("with the plan", e.predicted_bytes, "#3b75af"),
            ("Dask's default (estimate)", e.default_bytes, "#999999")]
    top = max(max(x for _, x, _ in rows), 1e-9)
    bar = _WIDTH - 270
    out = ["<p style='margin: 8px 0 2px'>Predicted transfer between workers:</p>",
           f'<svg width="{_WIDTH}" height="{24 * len(rows)}" '
           f'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="12">']
    for i, (label, x, colour) in enumerate(rows):
        y = 24 * i
        out.append(f'<text x="0" y="{y + 15}">{html.escape(label)}</text>')
        out.append(f'<rect x="170" y="{y + 3}" width="{max(x / top * bar, 1):.1f}" '
                   f'height="16" fill="{colour}"/>')
        out.append(f'<text x="{176 + max(x / top * bar, 1):.1f}" y="{y + 15}">'
                   f'{html.escape(e._amount(x))}</text>')
    out.append("</svg>")
    return "".join(out)
