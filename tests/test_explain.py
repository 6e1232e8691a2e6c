"""``autorestrictor.explain``: the plan before running, the same as the plugin's."""

from __future__ import annotations

import operator
from collections import Counter

import dask
import dask.array as da
import numpy as np
import pytest
from dask.utils import key_split
from distributed import Event
from distributed.utils_test import async_poll_for, gen_cluster
from helpers import slow_block

import autorestrictor
from autorestrictor import AutoRestrictor
from autorestrictor.compat import EXPLAIN_MISSING
from autorestrictor.datamap import data_map, default_estimate, default_transfer, worker_colour
from autorestrictor.planner import plan

#: The tests that call explain(), which an old dask cannot support.
needs_explain = pytest.mark.skipif(
    EXPLAIN_MISSING is not None,
    reason=f"explain() is switched off: this dask has no {EXPLAIN_MISSING}",
)


def seed_example(n_chunks: int = 200, rows: int = 1000):
    """The seed's example (its shape; fewer rows): column chunks summed over columns."""
    return da.random.default_rng(42).random((rows, n_chunks), chunks=(rows, 1)).sum(axis=1)


@needs_explain
def test_explain_seed_example_shows_the_chunk_map():
    e = autorestrictor.explain(seed_example(), workers=4)
    assert e.reason is None
    m = e.map
    assert m.kind == "chunks" and m.shape == (1, 200) and m.name.startswith("random")
    # every chunk pinned, on all four workers
    row = m.grid[0]
    assert (row >= 0).all() and len(set(row.tolist())) == 4
    # balanced from the start (the subtrees, 64, 64, 64 and 8 chunks, are
    # split): every worker's compute, and its predicted finish (each partial
    # sum it receives assumed as dear to send as to compute, no size being
    # known), within 5% of a fair share ...
    load = np.array(list(e.plan.load.values()))
    assert load.max() <= 1.05 * load.mean() and load.min() >= 0.95 * load.mean()
    finish = np.array(e.plan.finish)
    assert finish.max() <= 1.05 * finish.mean() and finish.min() >= 0.95 * finish.mean()
    # ... at the cost of a few partial sums (the fourth worker takes whole
    # subtrees from the others, each sending one: 4 of them, and the 3 the
    # last step reads); Dask's queue spreads each subtree's chunks
    assert e.predicted_bytes <= 7 and e.default_bytes >= 100
    # Dask's default, by the same model of time: it is no sooner, within
    # subtree-tolerance (4%, the plan moving whole subtrees is taken when it
    # is even by that measure). Its 150 transfers are received while its
    # workers compute, in this model, so it is not later either: what the
    # plan saves here is bytes.
    assert len(e.default_finish) == 4
    assert max(e.default_finish) >= max(e.plan.finish) / 1.04
    assert "Predicted seconds per worker" in repr(e)
    # and each worker's peak of open results, in task outputs (no size known)
    assert len(e.peak) == len(e.default_peak) == 4 and min(e.peak) >= 1
    assert "Predicted peak of open results on the fullest worker" in repr(e)
    html = e._repr_html_()
    assert "<svg" in html and "worker-3" in html
    for i in range(4):  # the four workers' colours fill the map
        assert f'fill="{worker_colour(i)}"' in html
    assert "task outputs" in html  # nothing learned yet: bytes counted in outputs
    assert "Chunks of random" in repr(e)


@needs_explain
def test_whole_subtree_moves_may_be_a_little_less_even():
    """On the README's example, the plan that moves whole subtrees to the
    fourth worker is within subtree-tolerance (4%) of an even finish with
    4 partial sums crossing (and the 3 the last step reads); held to 3%,
    as a plan cutting runs of chunks is, it needs two more."""
    loose = autorestrictor.explain(seed_example(), workers=4)
    tight = autorestrictor.explain(seed_example(), workers=4, subtree_tolerance=0.03)
    assert loose.predicted_bytes <= 7 < tight.predicted_bytes
    finish = np.array(loose.plan.finish)
    assert finish.max() <= 1.04 * finish.mean()


@needs_explain
@gen_cluster(client=True, nthreads=[("", 1)] * 4)
async def test_explain_makes_the_plugins_plan(c, s, *workers):
    """explain(client=) returns the assignment the plugin then applies."""
    await c.register_plugin(AutoRestrictor())
    # a first graph of the same kind: the plugin learns sizes and durations
    await c.compute(seed_example(n_chunks=40, rows=2000))
    x = seed_example(rows=1001)
    e = await _explain_async(c, x)
    assert e.sizes["learned"] > 0 and e.reason is None
    st = s._autorestrictor
    seen = st.last_plan_id
    result = await c.compute(x)
    assert st.last_plan_id > seen
    assert st.last_plan.assignment == e.assignment
    assert set(e.assignment.values()) == {w.address for w in workers}
    np.testing.assert_allclose(result, x.compute(scheduler="sync"))


@gen_cluster(client=True, nthreads=[("", 1)] * 2, config={"autorestrictor.check-interval": 60})
async def test_explain_counts_no_work_of_a_graph_that_has_run(c, s, a, b):
    """Just after a graph has run, before the plugin's periodic check forgets
    its pins, explain() counts none of its tasks as work waiting on the
    workers (which would add them to every predicted finish)."""
    from autorestrictor.explanation import _cluster_view

    await c.register_plugin(AutoRestrictor())
    await c.compute(seed_example(rows=200))
    assert sum(s._autorestrictor.pinned_tasks().values()) > 0  # not forgotten yet
    assert _cluster_view(dask_scheduler=s)["busy"] == {a.address: 0.0, b.address: 0.0}


async def _explain_async(c, obj, **kwargs):
    """explain() from a coroutine: run it in a thread with a synchronous client view."""
    import asyncio

    view = _AsyncClientView(c, asyncio.get_running_loop())
    return await asyncio.to_thread(autorestrictor.explain, obj, client=view, **kwargs)


class _AsyncClientView:
    """Enough of a client for explain(), bridging to an asynchronous one."""

    def __init__(self, client, loop):
        self._client, self._loop = client, loop
        self.scheduler = client.scheduler

    def run_on_scheduler(self, fn, **kwargs):
        import asyncio

        async def call():
            return await self._client.run_on_scheduler(fn, **kwargs)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=30)


@needs_explain
@gen_cluster(client=True, nthreads=[("", 1)] * 3)
async def test_explain_on_delayed_and_raw_graphs_matches_the_plugin(c, s, *workers):
    await c.register_plugin(AutoRestrictor(min_tasks=10))
    ev = Event()
    parts = [dask.delayed(_double)(dask.delayed(slow_block, pure=True)(i, ev))
             for i in range(60)]
    total = dask.delayed(sum)([dask.delayed(operator.add)(parts[i], parts[i + 1])
                               for i in range(0, 60, 2)])
    e = await _explain_async(c, total)
    assert e.map.kind == "runs" and e.reason is None
    fut = c.compute(total)
    st = s._autorestrictor
    await async_poll_for(lambda: st.last_plan is not None, timeout=10)
    assert st.last_plan.assignment == e.assignment
    await ev.set()
    assert await fut == sum(2 * i for i in range(60))

    # a raw graph: every key computed
    dsk = {("a", i): (_double, i) for i in range(30)}
    dsk.update({("b", i): (_double, ("a", i)) for i in range(30)})
    e = await _explain_async(c, dsk)
    assert e.map.kind == "chunks" and e.map.shape == (30,)
    assert len(e.assignment) == 60


def _double(x):
    return 2 * x


@needs_explain
def test_explain_steps_back_with_a_reason():
    x = da.ones((10, 10), chunks=(10, 1)).sum()
    e = autorestrictor.explain(x, workers=4)  # 21 tasks < min-tasks
    assert e.reason is not None and "min-tasks" in e.reason
    assert e.map.kind == "empty" and not e.assignment
    assert "Left to Dask" in e._repr_html_() and "min-tasks" in e._repr_html_()


@needs_explain
def test_explain_plans_graphs_whose_keys_do_not_compare():
    # ("a", 0) and ("a", "x") cannot be sorted together: planned in the
    # given order, as the plugin does, rather than failing.
    dsk = {("a", i): (_double, i) for i in range(8)}
    dsk.update({("a", "x", i): (_double, ("a", i)) for i in range(8)})
    e = autorestrictor.explain(dsk, workers=2, min_tasks=1)
    assert e.reason is None and set(e.assignment) == set(dsk)
    for i in range(8):  # each chain on one worker
        assert e.assignment[("a", i)] == e.assignment[("a", "x", i)]


@needs_explain
@pytest.mark.parametrize("bad", [3, "x", [1, 2], object()])
def test_explain_rejects_what_is_not_a_graph(bad):
    with pytest.raises(TypeError, match=f"got .*{type(bad).__name__}"):
        autorestrictor.explain(bad)


@needs_explain
def test_explain_rejects_bad_workers():
    x = seed_example(n_chunks=8)
    with pytest.raises(TypeError, match="workers must be"):
        autorestrictor.explain(x, workers="four")
    with pytest.raises(ValueError, match="at least 1"):
        autorestrictor.explain(x, workers=0)
    with pytest.raises(ValueError, match="not both"):
        autorestrictor.explain(x, workers=2, client=object())


@pytest.mark.skipif(EXPLAIN_MISSING is None, reason="explain() works with this dask")
def test_explain_says_what_an_old_dask_lacks():
    with pytest.raises(RuntimeError, match=f"switched off: this dask has no {EXPLAIN_MISSING}"):
        autorestrictor.explain(da.ones((10, 40), chunks=(10, 1)).sum(), workers=2)


def test_data_map_of_runs_and_big_grids():
    deps = {f"t{i}": [] for i in range(40)}
    m = data_map(plan(deps, {"a": 1, "b": 2}, min_tasks=1))
    assert m.kind == "runs"
    assert sum(b - a for a, b, _ in m.runs) == 40
    assert {w for _, _, w in m.runs} == {0, 1}
    assert sum(m.load) == 40 and m.load[1] > m.load[0]  # b has two threads
    # 300 x 300 chunks: drawn every other chunk along each axis
    deps = {("x", i, j): [] for i in range(300) for j in range(300)}
    m = data_map(plan(deps, {"a": 1, "b": 1}, min_tasks=1))
    assert m.shape == (300, 300) and m.step == 2 and m.grid.shape == (150, 150)


def test_default_transfer_counts_what_the_queue_scatters():
    # 8 roots read pairwise by 4 sums on 2 workers: the queue deals roots
    # alternately, so every pair is split and one input of each sum moves
    deps = {("r", i): [] for i in range(8)}
    deps.update({("s", i): [("r", 2 * i), ("r", 2 * i + 1)] for i in range(4)})
    priority = {k: n for n, k in enumerate(deps)}
    assert default_transfer(deps, {"a": 1, "b": 1}, priority=priority,
                            nbytes=dict.fromkeys(deps, 5)) == 20.0
    with pytest.raises(TypeError, match="workers"):
        default_transfer(deps, {})


def test_default_estimate_spreads_tied_sums_over_the_workers():
    # The same graph, timed: each sum reads one root from each worker. Were
    # ties all given to the first worker it would run every sum; spread, the
    # two workers run two each and each receives two inputs.
    deps = {("r", i): [] for i in range(8)}
    deps.update({("s", i): [("r", 2 * i), ("r", 2 * i + 1)] for i in range(4)})
    priority = {k: n for n, k in enumerate(deps)}
    moved, finish, _, plan_peak = default_estimate(
        deps, {"a": 1, "b": 1}, bandwidth=1.0, priority=priority,
        nbytes=dict.fromkeys(deps, 5), cost=dict.fromkeys(deps, 1.0))
    assert plan_peak is None  # no plan given
    assert moved == 20.0  # the bytes, as default_transfer counts them
    # each receives two inputs of 5 s (longer than its 4 + 2 s of compute);
    # all four sums on "a" would have it receive four: [20, 4]
    assert finish.tolist() == [10.0, 10.0]
    with pytest.raises(ValueError, match="bandwidth must be a positive number"):
        default_estimate(deps, {"a": 1}, bandwidth=0)


def test_open_results_are_held_until_their_last_reader():
    """Two sums of four chunks, one per worker: each worker holds its four
    chunks until its sum runs, then the sum; the final add (left to Dask)
    holds its two inputs, one of them a copy from the other worker."""
    deps = {f"r{i}": [] for i in range(8)}
    deps.update(a=[f"r{i}" for i in range(4)], b=[f"r{i}" for i in range(4, 8)], c=["a", "b"])
    run = ["r0", "r1", "r2", "r3", "a", "r4", "r5", "r6", "r7", "b", "c"]
    priority = {k: i for i, k in enumerate(run)}
    workers = {"w0": 1, "w1": 1}
    p = plan(deps, workers, min_tasks=1, priority=priority)
    assert {p.assignment[f"r{i}"] for i in range(4)} == {p.assignment["a"]} != {p.assignment["b"]}
    e = default_estimate(deps, workers, bandwidth=1.0, nbytes=dict.fromkeys(deps, 10),
                         priority=priority, plan=p)
    peak, default_peak = e.plan_peak, e.peak
    assert peak.tolist() == [50.0, 50.0]  # four chunks and their sum
    # a chunk read by nothing stays open to the end: one more on its worker
    deps["r8"] = []
    priority["r8"] = -1
    p = plan(deps, workers, min_tasks=1, priority=priority)
    peak = default_estimate(deps, workers, bandwidth=1.0, nbytes=dict.fromkeys(deps, 10),
                            priority=priority, plan=p).plan_peak
    assert sorted(peak.tolist()) == [50.0, 60.0]
    assert len(default_peak) == 2 and min(default_peak) >= 30.0


def test_selections_are_told_apart_from_computations_in_old_style_tasks():
    from autorestrictor.compat import selects

    assert selects((operator.getitem, "x", 0))
    assert selects((da.chunk.getitem, "x", (slice(0, 2),)))
    assert not selects((sum, ["x", "y"]))
    assert not selects(None) and not selects(42) and not selects(())


@needs_explain  # (task objects came with dask._task_spec, as explain() did)
def test_selections_are_told_apart_from_computations_in_task_objects():
    from dask._task_spec import Task, TaskRef

    from autorestrictor.compat import selects

    assert selects(Task("a", operator.getitem, TaskRef("x"), 0))
    assert selects(Task("a", da.chunk.getitem, TaskRef("x"), (slice(0, 2),)))
    assert not selects(Task("a", np.linalg.qr, TaskRef("x")))


@needs_explain
@gen_cluster(client=True, nthreads=[("", 1)] * 4)
async def test_explain_costs_slices_as_the_plugin_does(c, s, *workers):
    """A tall-and-skinny QR, whose 40 slices of the stacked R's factor have
    never run: explain() costs them as the plugin does (next to nothing),
    so it shows the plugin's plan, 9-11 block QRs per worker."""
    await c.register_plugin(AutoRestrictor(min_tasks=10, rebalance=False))
    q, r = da.linalg.qr(da.random.default_rng(0).random((40 * 500, 20), chunks=(500, 20)))
    e = await _explain_async(c, [q.sum(axis=0), r])
    groups = Counter(k[0] for k in e.assignment if key_split(k) == "qr")
    (name,) = [g for g, n in groups.items() if n == 40]  # the block QRs
    blocks = Counter(w for k, w in e.assignment.items() if k[0] == name)
    assert len(blocks) == 4 and max(blocks.values()) - min(blocks.values()) <= 2, blocks
    fut = c.compute([q.sum(axis=0), r])
    st = s._autorestrictor
    await async_poll_for(lambda: st.last_plan is not None, timeout=10)
    assert st.last_plan.assignment == e.assignment
    await c.gather(fut)
