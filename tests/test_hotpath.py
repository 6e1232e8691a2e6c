"""The plugin's work in ``update_graph`` grows with the new graph only.

Time is not asserted (the machine is shared); Python-level calls are. A
step that scans every held root, every pinned unit or every worker for
each new task shows up as calls per task that grow with the graph and with
what earlier graphs left pinned.
"""

from __future__ import annotations

import cProfile
import pstats

import dask.array as da
from distributed import Event
from distributed.utils_test import async_poll_for, gen_cluster
from helpers import SMALL, slow_block
from hypothesis import given
from hypothesis import strategies as st

from autorestrictor import AutoRestrictor
from autorestrictor.intake import graph_order


@gen_cluster(client=True, nthreads=[("", 1)] * 2, config=SMALL, timeout=120)
async def test_calls_per_task_do_not_grow_with_the_graph(c, s, a, b):
    await c.register_plugin(AutoRestrictor())
    plugin = s.plugins["autorestrictor"]
    hook = plugin.update_graph
    calls: list[tuple[int, int]] = []  # (tasks, Python-level calls) per graph

    def counted(*args, **kwargs):
        prof = cProfile.Profile()
        prof.enable()
        try:
            return hook(*args, **kwargs)
        finally:
            prof.disable()
            calls.append((len(kwargs["tasks"]), pstats.Stats(prof).total_calls))

    plugin.update_graph = counted
    ev = Event()
    futures = []
    for n in (200, 800, 3200):  # each submitted while the earlier ones wait, held
        x = da.ones((10, n), chunks=(10, 1)).map_blocks(slow_block, ev, dtype=float)
        futures.append(c.compute(x.sum(axis=1)))
        await async_poll_for(lambda n=n: len(plugin.history) == len(futures), timeout=30)
        assert plugin.history[-1]["reason"] is None, plugin.history[-1]
    assert sum(map(len, plugin.held.values())) > 3000, "the last graph met many held roots"
    per_task = [n_calls / n for n, n_calls in calls]
    # A fixed cost per graph makes small graphs dearer per task; a scan of
    # what is already pinned, per new task, would make the last one dearest.
    assert per_task[2] <= 1.1 * per_task[0], per_task
    assert per_task[2] <= 1.1 * per_task[1], per_task
    await ev.set()
    await c.gather(futures)


@given(st.lists(st.one_of(
    st.tuples(st.sampled_from(["x", "y"]), st.integers(0, 20)),
    st.tuples(st.sampled_from(["x"]), st.integers(0, 3), st.integers(0, 3)),
    st.text("abc", max_size=3),
    st.integers(-5, 5),
    st.binary(max_size=2),
), unique=True))
def test_graph_order_is_by_type_name_then_value(keys):
    """Tuples are sorted without a key function; the order is unchanged."""
    assert graph_order(keys) == sorted(keys, key=lambda k: (type(k).__name__, k))


def test_graph_order_keeps_keys_that_do_not_compare_as_given():
    keys = [("x", 1), ("x", "a"), "z", ("x", 0)]  # 1 < "a" raises
    assert graph_order(keys) == keys
