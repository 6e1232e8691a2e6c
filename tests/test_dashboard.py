"""The dashboard page: its components (as distributed tests its own), its
registration on a running scheduler, and the page in a real browser."""

from __future__ import annotations

import json
import logging
from collections import Counter

import dask
import pytest
from bokeh.document import Document
from distributed import Event
from distributed.utils_test import async_poll_for, captured_logger, gen_cluster
from helpers import browser_missing, requires, wait_for
from tornado.httpclient import AsyncHTTPClient

from autorestrictor import AutoRestrictor
from autorestrictor.dashboard import (
    INDIVIDUAL,
    ROUTE,
    DataMapView,
    RecentMoves,
    RecentPlans,
    WorkerCounts,
    page,
)
from autorestrictor.datamap import worker_colour
from autorestrictor.state import HOLD

DASHBOARD = {"dashboard": True, "dashboard_address": ":0"}


def _root(i):
    return i


def _blocked(x, ev):
    ev.wait()
    return x + 1


def held_graph(ev, n: int = 24):
    """Chains of a root and a task that waits on ``ev``: the run stops at a known point.

    Each worker runs its first roots, whose next tasks then block, so its
    admission slots stay full and its other roots stay held until ``ev`` is set.
    """
    roots = [dask.delayed(_root, pure=True)(i) for i in range(n)]
    return roots + [dask.delayed(_blocked, pure=True)(r, ev) for r in roots]


def scheduler_counts(dask_scheduler=None) -> dict:
    """Per worker, from the scheduler's tasks (not the page's code): pinned
    waiting, held, processing and done, and whether the run is held still."""
    s = dask_scheduler
    st = s._autorestrictor
    counts = {a: Counter() for a in s.workers}
    for ts in s.tasks.values():
        r = ts.worker_restrictions or set()
        if r == {HOLD}:
            counts[st.queues.held_at[ts.key]]["held"] += 1
        elif len(r) == 1:
            (addr,) = r
            if ts.state in ("waiting", "no-worker", "queued"):
                counts[addr]["waiting"] += 1
            elif ts.state == "memory":
                counts[addr]["done"] += 1
    still = True
    for addr, ws in s.workers.items():
        counts[addr]["processing"] = len(ws.processing)
        blocked = all(str(ts.key).startswith("_blocked") for ts in ws.processing)
        full = len(ws.processing) >= 2 or not counts[addr]["held"]
        still &= blocked and full and bool(ws.processing)
    return {"still": still, "counts": {
        a: {k: c[k] for k in ("waiting", "held", "processing", "done")}
        for a, c in counts.items()}}


def page_counts(data: dict) -> dict:
    return {w: {k: data[k][i] for k in ("waiting", "held", "processing", "done")}
            for i, w in enumerate(data["worker"])}


@gen_cluster(client=True, nthreads=[("", 1)] * 3, scheduler_kwargs=DASHBOARD)
async def test_components_show_the_schedulers_counts(c, s, *workers):
    await c.register_plugin(AutoRestrictor(min_tasks=1))
    ev = Event()
    futures = c.compute(held_graph(ev))
    await async_poll_for(lambda: scheduler_counts(s)["still"], timeout=20)
    expected = scheduler_counts(s)["counts"]
    counts = WorkerCounts(s)
    counts.update()
    assert page_counts(counts.source.data) == expected
    # the run is held where we expect: 2 roots done per worker, the rest held
    assert {e["done"] for e in expected.values()} == {2}
    assert sum(e["held"] for e in expected.values()) == 24 - 6
    assert "waiting for a free thread on worker" in counts.words.text
    assert "no-worker" in counts.words.text
    # bars: done, processing, held, waiting laid end to end
    d = counts.source.data
    assert d["waiting_right"] == [sum(e.values()) for e in expected.values()]

    plans = RecentPlans(s)
    plans.update()
    assert plans.source.data["n_pinned"] == [48]
    assert plans.source.data["outcome"] == ["pinned"]

    where = DataMapView(s)
    where.update()
    m = where.source.data
    assert len(m["x"]) >= 3  # runs, one per worker at least
    assert set(m["colour"]) == {worker_colour(i) for i in range(3)}
    assert "group(s)" in m["what"][0]
    # Nothing new: not rebuilt. (A rebuild would make the same contents, and
    # Bokeh ignores a value equal to the one it has, so comparing contents
    # proves nothing: blank the view, and a rebuild would fill it again.)
    blank = {k: [] for k in m}
    where.source.data = blank
    where.figure.title.text = "blank"
    where.update()
    assert where.source.data == blank and where.figure.title.text == "blank", "rebuilt"

    await ev.set()
    await c.gather(futures)
    del futures


@gen_cluster(client=True, nthreads=[("", 1)] * 2, scheduler_kwargs=DASHBOARD)
async def test_chunk_map_and_moves(c, s, a, b):
    import dask.array as da

    await c.register_plugin(AutoRestrictor(min_tasks=1))
    x = da.ones((100, 30), chunks=(100, 1)).sum(axis=1)
    await c.compute(x)
    where = DataMapView(s)
    where.update()
    assert "chunks of" in where.figure.title.text and "grid 1 x 30" in where.figure.title.text
    assert len(where.source.data["x"]) == 30
    plan = s._autorestrictor.last_plan
    expected = {worker_colour(plan.workers.index(w)) for w in plan.assignment.values()}
    assert set(where.source.data["colour"]) == expected
    # a move, as the rebalancer records it, shows in the table and per worker
    s._autorestrictor.moves.append({"action": "rebalance", "from": a.address,
                                    "to": b.address, "tasks": 7, "units": 2,
                                    "why": "test", "time": 0.0})
    moves = RecentMoves(s)
    moves.update()
    assert moves.source.data["tasks"] == [7]
    counts = WorkerCounts(s)
    counts.update()
    i = counts.source.data["worker"].index(b.address)
    assert counts.source.data["moves_in"][i] == 7


@gen_cluster(client=True, nthreads=[("", 1)] * 2, scheduler_kwargs=DASHBOARD)
async def test_empty_state(c, s, a, b):
    parts = [WorkerCounts(s), RecentPlans(s), RecentMoves(s), DataMapView(s)]
    for p in parts:
        p.update()
    assert "not registered" in parts[0].words.text
    await c.register_plugin(AutoRestrictor())
    for p in parts:
        p.update()
    assert "No plans yet" in parts[0].words.text
    assert parts[0].source.data["done"] == [0, 0]
    assert parts[1].source.data["id"] == []
    assert parts[3].figure.title.text.endswith("no plan yet")
    doc = Document()
    page(s, {}, doc, template=False)
    assert doc.roots and doc.get_model_by_name("autorestrictor-workers") is not None


@gen_cluster(client=True, scheduler_kwargs=DASHBOARD)
async def test_page_is_served_and_listed_when_registered_after_start(c, s, a, b):
    http = AsyncHTTPClient()
    base = f"http://localhost:{s.http_server.port}"
    listed = json.loads((await http.fetch(base + "/individual-plots.json")).body)
    assert INDIVIDUAL not in listed.values()

    await c.register_plugin(AutoRestrictor())  # the scheduler is already serving
    for path in (ROUTE, INDIVIDUAL):
        body = (await http.fetch(base + path)).body.decode()
        assert "bokeh" in body.lower() and "autorestrictor" in body.lower()
    listed = json.loads((await http.fetch(base + "/individual-plots.json")).body)
    assert INDIVIDUAL in listed.values()
    # in the "More..." menu of the dashboard's own pages, and of ours
    for path in ("/status", ROUTE):
        body = (await http.fetch(base + path)).body.decode()
        assert 'href="autorestrictor"' in body
    # registered again: nothing added twice
    with pytest.warns(UserWarning, match="overwriting"):
        await c.register_plugin(AutoRestrictor())
    body = (await http.fetch(base + "/status")).body.decode()
    assert body.count('href="autorestrictor"') == 1


@gen_cluster(client=True, nthreads=[("", 1)] * 2, scheduler_kwargs={"dashboard": False})
async def test_no_dashboard_no_page(c, s, a, b):
    import distributed.dashboard.scheduler  # noqa: F401 (as if another scheduler had one)

    with captured_logger("autorestrictor", level=logging.INFO) as log:
        await c.register_plugin(AutoRestrictor(min_tasks=1))
    assert "serves no Bokeh dashboard" in log.getvalue()
    result = await c.compute(dask.delayed(sum)([dask.delayed(_root)(i) for i in range(20)]))
    assert result == sum(range(20))
    assert not s._autorestrictor.faults


# -- in a real browser ---------------------------------------------------------


def test_page_in_a_browser_shows_the_schedulers_counts(tmp_path):
    """A process cluster, a run held at a known point, the page in headless
    Chromium: the per-worker counts the browser holds are the scheduler's."""
    requires("the system's headless Chromium", browser_missing())
    from distributed import Client, LocalCluster

    from autorestrictor.tools.screenshots import (
        chromium,
        model_text,
        source_data,
        wait_rendered,
    )

    driver = chromium(tmp_path / "profile")
    try:
        with LocalCluster(n_workers=3, threads_per_worker=1, processes=True, memory_limit=0,
                          dashboard_address=":0") as cluster, Client(cluster) as client:
            client.register_plugin(AutoRestrictor(min_tasks=1))  # after the start
            url = cluster.dashboard_link.replace("/status", ROUTE)
            driver.get(url)  # before any plan: the empty state
            wait_rendered(driver)
            assert "No plans yet" in model_text(driver, "autorestrictor-words")
            assert source_data(driver, "autorestrictor-plans")["id"] == []
            ev = Event()
            futures = client.compute(held_graph(ev))
            wait_for(lambda: client.run_on_scheduler(scheduler_counts)["still"],
                     what="the run to hold still")
            driver.get(url)
            wait_rendered(driver)

            def same() -> bool:
                before = client.run_on_scheduler(scheduler_counts)
                shown = source_data(driver, "autorestrictor-workers")
                after = client.run_on_scheduler(scheduler_counts)
                assert before == after and before["still"], "the run moved during the check"
                return shown is not None and page_counts(shown) == before["counts"]

            # the page updates once a second
            wait_for(same, timeout=10, what="the page to show the scheduler's counts")
            shown = page_counts(source_data(driver, "autorestrictor-workers"))
            assert len(shown) == 3 and sum(c["held"] for c in shown.values()) == 18
            words = model_text(driver, "autorestrictor-words")
            assert "6 root tasks waiting for a free thread on worker" in words
            assert source_data(driver, "autorestrictor-plans")["n_pinned"] == [48]
            shot = tmp_path / "dashboard.png"
            driver.save_screenshot(str(shot))
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
            ev.set()
            assert sorted(client.gather(futures)) == sorted(
                list(range(24)) + [i + 1 for i in range(24)])
    finally:
        driver.quit()
