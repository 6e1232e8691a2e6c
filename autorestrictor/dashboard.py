"""The autorestrictor page of the scheduler's dashboard (Bokeh).

``/autorestrictor`` (in the dashboard's "More..." menu) and
``/individual-autorestrictor`` (the same page without the menu bar, listed
in ``individual-plots.json`` for JupyterLab's Dask extension) show, per
worker, the tasks the plugin pinned there and where they are (waiting, held,
processing, done) and the rebalancing moves; the recent plans with their
reason or notes; and where the newest plan puts the graph's data.

The plugin imports this module only when its scheduler runs Bokeh's
dashboard (:func:`autorestrictor.http.add_dashboard`); the plugin's hot path
never touches it. Pages read the plugin's state on the scheduler
(``scheduler._autorestrictor``) once a second while they are open: the work
is linear in the workers, the held roots and the pinned units, and walks
the tasks only of units that have started and not finished.

Registration works on a scheduler whose dashboard is already serving: the
page is added to the running Bokeh server, as distributed's own pages are
added when it starts (:func:`register`).
"""

from __future__ import annotations

import functools
import html
import logging
import weakref
from collections import Counter
from time import localtime, strftime

from bokeh.application import Application
from bokeh.application.handlers.document_lifecycle import DocumentLifecycleHandler
from bokeh.application.handlers.function import FunctionHandler
from bokeh.layouts import column
from bokeh.models import (
    ColumnDataSource,
    DataTable,
    Div,
    FixedTicker,
    HoverTool,
    NumberFormatter,
    TableColumn,
)
from bokeh.plotting import figure
from bokeh.server.contexts import ApplicationContext
from bokeh.server.tornado import BokehTornado, create_static_handler
from bokeh.server.urls import per_app_patterns
from bokeh.server.views.ws import WSHandler
from distributed.dashboard.components import add_periodic_callback
from distributed.dashboard.components.scheduler import BOKEH_THEME, env
from distributed.dashboard.utils import update
from distributed.utils import log_errors

from autorestrictor.datamap import data_map, legend_html, worker_colour
from autorestrictor.state import HOLD, state_of

logger = logging.getLogger("autorestrictor")

ROUTE = "/autorestrictor"
INDIVIDUAL = "/individual-autorestrictor"
MENU_NAME = "Autorestrictor"

#: Milliseconds between two updates of an open page (distributed's pages: 100-1000).
INTERVAL = 1000

#: States of a pinned task that has not run yet (held roots are counted apart).
_WAITING = frozenset({"waiting", "no-worker", "queued"})
#: States of a pinned task that has run: its result is in memory, or was
#: released once its readers had it, or it failed. (A task whose result is
#: lost goes back to waiting.)
_DONE = frozenset({"memory", "erred", "released", "forgotten"})

#: The four parts of each worker's bar, left to right, and their colours.
PARTS = (
    ("done", "#7aa974", "done"),
    ("processing", "#3b75af", "processing"),
    ("held", "#ef8636", "held roots (admission)"),
    ("waiting", "#c9c9c9", "pinned, waiting for inputs"),
)


def _label(address: str) -> str:
    return address.split("://", 1)[-1]


def worker_counts(scheduler, finished=None) -> dict[str, list]:
    """Per worker: pinned tasks waiting, held roots, processing, done, moves.

    ``finished`` (a ``WeakSet``) remembers units whose tasks have all run,
    so that each update walks only the tasks of started units. A unit whose
    root is still held has not started: its other tasks all wait on it.
    """
    st = state_of(scheduler)
    tasks = scheduler.tasks
    addrs = set(scheduler.workers)
    held, waiting, done = Counter(), Counter(), Counter()
    moves_in, moves_out = Counter(), Counter()
    if st is not None:
        addrs |= set(st.runs) | set(st.queues.held)
        hold = {HOLD}
        for key, addr in st.queues.held_at.items():
            ts = tasks.get(key)
            if ts is not None and ts.worker_restrictions == hold:
                held[addr] += 1
        for addr, units in st.runs.items():
            w, d = _count_units(units, addr, st.queues.held_at, tasks, finished)
            waiting[addr] += w
            done[addr] += d
        for mv in st.moves:
            moves_in[mv["to"]] += mv["tasks"]
            moves_out[mv["from"]] += mv["tasks"]
    order = sorted(addrs)
    processing, threads = [], []
    for a in order:
        ws = scheduler.workers.get(a)
        processing.append(len(ws.processing) if ws is not None else 0)
        threads.append(ws.nthreads if ws is not None else 0)
    return {
        "worker": order, "label": [_label(a) for a in order],
        "waiting": [waiting[a] for a in order], "held": [held[a] for a in order],
        "processing": processing, "done": [done[a] for a in order],
        "moves_in": [moves_in[a] for a in order], "moves_out": [moves_out[a] for a in order],
        "nthreads": threads,
    }


def _count_units(units, addr, held_at, tasks, finished) -> tuple[int, int]:
    """Waiting and done tasks of ``addr``'s units (held roots are counted apart)."""
    waiting = done = 0
    hold = {HOLD}
    for u in units:
        keys = u.keys
        if held_at.get(keys[0]) == addr:
            waiting += len(keys) - 1
            continue
        if finished is not None and u in finished:
            done += len(keys)
            continue
        w = d = 0
        for k in keys:
            ts = tasks.get(k)
            if ts is None or ts.state in _DONE:
                d += 1
            elif ts.state in _WAITING and ts.worker_restrictions != hold:
                w += 1
        if finished is not None and d == len(keys):
            finished.add(u)
        waiting += w
        done += d
    return waiting, done


def held_in_words(counts: dict[str, list]) -> list[str]:
    """What the held roots are, in a user's words: one sentence per worker with some."""
    out = []
    for i, addr in enumerate(counts["worker"]):
        n = counts["held"][i]
        if not n:
            continue
        out.append(
            f"{n} root task{'s' if n != 1 else ''} waiting for a free thread on worker "
            f"{_label(addr)} (running {counts['processing'][i]} on "
            f"{counts['nthreads'][i]} thread{'s' if counts['nthreads'][i] != 1 else ''})."
        )
    return out


class WorkerCounts:
    """Each worker's pinned tasks as one bar: done, processing, held, waiting."""

    def __init__(self, scheduler, **kwargs):
        self.scheduler = scheduler
        self._finished: weakref.WeakSet = weakref.WeakSet()
        self._labels: list[str] | None = None
        empty = {k: [] for k in ("worker", "label", "waiting", "held", "processing", "done",
                                 "moves_in", "moves_out", "nthreads", "y")}
        empty.update({f"{p}_left": [] for p, _, _ in PARTS})
        empty.update({f"{p}_right": [] for p, _, _ in PARTS})
        self.source = ColumnDataSource(empty, name="autorestrictor-workers")
        self.words = Div(text="", name="autorestrictor-words", sizing_mode="stretch_width")
        fig = figure(
            title="Pinned tasks per worker", tools="", toolbar_location=None,
            height=110, sizing_mode="stretch_width", min_border_left=150,
            name="autorestrictor-workers-plot",
        )
        for part, colour, legend in PARTS:
            fig.hbar(y="y", left=f"{part}_left", right=f"{part}_right", height=0.8,
                     color=colour, source=self.source, legend_label=legend)
        fig.legend.orientation = "horizontal"
        fig.legend.location = "top_right"
        fig.add_layout(fig.legend[0], "below")
        fig.ygrid.visible = False
        fig.x_range.start = 0
        fig.xaxis.axis_label = "tasks"
        fig.add_tools(HoverTool(tooltips=[
            ("worker", "@worker"), ("done", "@done"), ("processing", "@processing"),
            ("held roots", "@held"), ("pinned, waiting", "@waiting"),
            ("moved in / out", "@moves_in / @moves_out"),
        ]))
        self.figure = fig
        self.root = column(self.words, fig, sizing_mode="stretch_width")

    @log_errors
    def update(self) -> None:
        s = self.scheduler
        counts = worker_counts(s, self._finished)
        n = len(counts["worker"])
        counts["y"] = list(range(n))
        left = [0] * n
        for part, _, _ in PARTS:
            right = [a + b for a, b in zip(left, counts[part])]
            counts[f"{part}_left"], counts[f"{part}_right"] = left, right
            left = right
        update(self.source, counts)
        if counts["label"] != self._labels:  # workers came or went: redraw the axis
            self._labels = counts["label"]
            self.figure.yaxis.ticker = FixedTicker(ticks=list(range(n)))
            self.figure.yaxis.major_label_overrides = dict(enumerate(counts["label"]))
            self.figure.y_range.start, self.figure.y_range.end = -0.6, max(n, 1) - 0.4
            self.figure.height = 130 + 30 * max(n, 1)
        self.words.text = self._words(counts)

    def _words(self, counts) -> str:
        s = self.scheduler
        st = state_of(s)
        if st is None:
            return ("<p><b>autorestrictor is not registered on this scheduler.</b> "
                    "Register it with <code>client.register_plugin(AutoRestrictor())</code>.</p>")
        if not st.history:
            return ("<p><b>No plans yet.</b> autorestrictor plans each graph of at least "
                    f"{st.options.min_tasks} tasks when it is submitted.</p>")
        sentences = held_in_words(counts)
        if not sentences:
            return "<p>No held roots: every pinned root task has been sent to its worker.</p>"
        return (
            "<p><b>Held roots are not stuck.</b> autorestrictor keeps each worker's next "
            "root tasks on the scheduler and sends them one by one as the worker's threads "
            "free up, so that a worker does not start more data than it can combine. "
            "Dask's other pages list them as <i>no-worker</i>.</p><ul>"
            + "".join(f"<li>{html.escape(x)}</li>" for x in sentences) + "</ul>"
        )


class RecentPlans:
    """The plans of the newest graphs, newest first, with their reason or notes."""

    COLUMNS = (
        ("id", "#", 40), ("when", "when", 70), ("n_tasks", "tasks", 70),
        ("n_pinned", "pinned", 70), ("n_groups", "groups", 60), ("workers", "workers", 60),
        ("predicted_mb", "predicted MB", 90), ("plan_ms", "plan ms", 70),
        ("outcome", "outcome", 600),
    )

    def __init__(self, scheduler, **kwargs):
        self.scheduler = scheduler
        self.source = ColumnDataSource({c: [] for c, _, _ in self.COLUMNS},
                                       name="autorestrictor-plans")
        numbers = NumberFormatter(format="0,0")
        columns = [
            TableColumn(field=c, title=t, width=w, **({"formatter": numbers} if c[:2] == "n_"
                                                      else {}))
            for c, t, w in self.COLUMNS
        ]
        self.root = DataTable(
            source=self.source, columns=columns, height=200, sizing_mode="stretch_width",
            index_position=None, name="autorestrictor-plans-table",
        )

    @log_errors
    def update(self) -> None:
        st = state_of(self.scheduler)
        records = list(reversed(st.history)) if st is not None else []
        update(self.source, {
            "id": [r.get("id") for r in records],
            "when": [strftime("%H:%M:%S", localtime(r["time"])) if "time" in r else ""
                     for r in records],
            "n_tasks": [r.get("n_tasks") for r in records],
            "n_pinned": [r.get("n_pinned", 0) for r in records],
            "n_groups": [r.get("n_groups", 0) for r in records],
            "workers": [len(r.get("pinned_per_worker") or ()) for r in records],
            "predicted_mb": [round(r.get("predicted_bytes", 0) / 1e6, 1) for r in records],
            "plan_ms": [round(1000 * r.get("plan_s", 0), 1) for r in records],
            "outcome": [_outcome(r) for r in records],
        })


def _outcome(record: dict) -> str:
    if record.get("reason") is not None:
        return f"left to Dask: {record['reason']}"
    notes = record.get("notes") or []
    return "pinned" + (": " + "; ".join(notes) if notes else "")


class RecentMoves:
    """The rebalancer's newest moves: who gave which work to whom, and why."""

    COLUMNS = (("when", "when", 70), ("from", "from", 150), ("to", "to", 150),
               ("tasks", "tasks", 60), ("units", "units", 60), ("why", "why", 500))

    def __init__(self, scheduler, **kwargs):
        self.scheduler = scheduler
        self.source = ColumnDataSource({c: [] for c, _, _ in self.COLUMNS},
                                       name="autorestrictor-moves")
        self.root = DataTable(
            source=self.source, height=140, sizing_mode="stretch_width", index_position=None,
            columns=[TableColumn(field=c, title=t, width=w) for c, t, w in self.COLUMNS],
        )

    @log_errors
    def update(self) -> None:
        st = state_of(self.scheduler)
        moves = list(reversed(st.moves)) if st is not None else []
        update(self.source, {
            "when": [strftime("%H:%M:%S", localtime(m["time"])) for m in moves],
            "from": [_label(m["from"]) for m in moves], "to": [_label(m["to"]) for m in moves],
            "tasks": [m["tasks"] for m in moves], "units": [m["units"] for m in moves],
            "why": [m["why"] for m in moves],
        })


class DataMapView:
    """Where the newest plan puts the graph's data: its chunk grid, or its runs."""

    def __init__(self, scheduler, **kwargs):
        self.scheduler = scheduler
        self.plan_id = None
        self.source = ColumnDataSource(
            {k: [] for k in ("x", "y", "width", "colour", "worker", "what")},
            name="autorestrictor-map",
        )
        fig = figure(title="Where the data lives: no plan yet", tools="", toolbar_location=None,
                     height=220, sizing_mode="stretch_width", name="autorestrictor-map-plot")
        fig.rect(x="x", y="y", width="width", height=0.92, fill_color="colour",
                 line_color=None, source=self.source)
        fig.add_tools(HoverTool(tooltips=[("", "@what"), ("worker", "@worker")]))
        fig.xgrid.visible = fig.ygrid.visible = False
        self.figure = fig
        self.legend = Div(text="", sizing_mode="stretch_width")
        self.root = column(fig, self.legend, sizing_mode="stretch_width")

    @log_errors
    def update(self) -> None:
        st = state_of(self.scheduler)
        if st is None or st.last_plan is None or st.last_plan_id == self.plan_id:
            return
        self.plan_id = st.last_plan_id
        m = data_map(st.last_plan)
        self.legend.text = legend_html(m)
        data = {k: [] for k in self.source.data}
        if m.kind == "chunks":
            rows, cols = m.grid.shape
            for r in range(rows):
                for c in range(cols):
                    w = int(m.grid[r, c])
                    data["x"].append(c + 0.5)
                    data["y"].append(-r - 0.5)
                    data["width"].append(0.92)
                    data["colour"].append(worker_colour(w))
                    data["worker"].append(m.workers[w] if w >= 0 else "left to Dask")
                    data["what"].append(f"chunk row {r * m.step}, column {c * m.step}")
            self.figure.title.text = (
                f"Where the data lives (plan #{self.plan_id}): chunks of {m.name}, "
                f"grid {' x '.join(map(str, m.shape))}, coloured by worker")
            self.figure.yaxis.visible = rows > 1
        else:
            for (a, b, w), n in zip(m.runs, m.pieces):
                data["x"].append((a + b) / 2)
                data["y"].append(-0.5)
                data["width"].append(b - a)
                data["colour"].append(worker_colour(w))
                data["worker"].append(m.workers[w])
                data["what"].append(f"{b - a:,} task(s) in {n:,} group(s)")
            self.figure.title.text = (
                f"Where the data lives (plan #{self.plan_id}): pinned groups in the order "
                "they will run, coloured by worker")
            self.figure.yaxis.visible = False
        self.source.data = data


@log_errors
def page(scheduler, extra, doc, template: bool = True) -> None:
    """Build the page in a new Bokeh document (one per browser tab)."""
    parts = [WorkerCounts(scheduler), DataMapView(scheduler), RecentPlans(scheduler),
             RecentMoves(scheduler)]
    for p in parts:
        p.update()
        add_periodic_callback(doc, p, INTERVAL)
    heading = Div(text="<h3 style='margin: 0'>autorestrictor</h3>", sizing_mode="stretch_width")
    doc.add_root(column(
        heading, parts[0].root, parts[1].root,
        Div(text="<b>Recent plans</b> (newest first)"), parts[2].root,
        Div(text="<b>Rebalancing moves</b> (newest first)"), parts[3].root,
        sizing_mode="stretch_width", name="autorestrictor-page",
    ))
    doc.title = "Dask: autorestrictor"
    if template:
        doc.template = env.get_template("simple.html")
        doc.template_variables.update(extra)
    doc.theme = BOKEH_THEME


def register(scheduler) -> bool:
    """Add the page to the scheduler's running Bokeh server and to its menu.

    Returns False, having logged why, if the scheduler serves no Bokeh
    dashboard. Registering twice is harmless.
    """
    http = getattr(scheduler, "http_application", None)
    bokeh_app = next((a for a in getattr(http, "applications", ())
                      if isinstance(a, BokehTornado)), None)
    if bokeh_app is None:
        logger.info("the scheduler serves no Bokeh dashboard: %s is not added", ROUTE)
        return False
    if ROUTE in bokeh_app.app_paths:
        return True
    extra = _menu(scheduler, bokeh_app.prefix)
    for path, template in ((ROUTE, True), (INDIVIDUAL, False)):
        fn = functools.partial(page, scheduler, extra, template=template)
        _add_application(bokeh_app, path, Application(FunctionHandler(fn)))
    logger.info("dashboard page added: %s", ROUTE)
    return True


def _add_application(bokeh_app: BokehTornado, path: str, application: Application) -> None:
    """Serve ``application`` at ``path`` on a running Bokeh server.

    Bokeh builds its routes when the server is made; distributed makes it
    once, at the scheduler's start. This adds the same routes Bokeh makes
    for each application (document, websocket, metadata, autoload, static).
    """
    application.add(DocumentLifecycleHandler())
    context = ApplicationContext(application, io_loop=bokeh_app.io_loop, url=path)
    route = bokeh_app.prefix + path
    patterns = []
    for suffix, handler in per_app_patterns:
        kwargs = {"application_context": context, "bokeh_websocket_path": route + "/ws"}
        if issubclass(handler, WSHandler):
            kwargs.update(compression_level=None, mem_level=None)
        patterns.append((route + suffix, handler, kwargs))
    patterns.append(create_static_handler(bokeh_app.prefix, path, application))
    bokeh_app.applications[path] = context  # the server's own mapping: sessions, app_paths
    bokeh_app.add_handlers(r".*", patterns)


def _menu(scheduler, prefix: str) -> dict:
    """The dashboard's template variables, with this page in its "More..." menu."""
    try:
        from distributed.dashboard.scheduler import template_variables
    except ImportError as e:  # pragma: no cover - distributed without its dashboard
        logger.info("dashboard menu not found (%s): the page is served without it", e)
        return {"prefix": prefix + "/", "pages": [], "plots": []}
    variables = template_variables(scheduler)  # the dict the dashboard's pages share
    plots = variables["plots"]
    if not any(p.get("url") == ROUTE.strip("/") for p in plots):
        plots.append({"url": ROUTE.strip("/"), "name": MENU_NAME})
        plots.sort(key=lambda d: d["name"])
    return {"prefix": prefix + "/", **variables}
