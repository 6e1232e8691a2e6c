"""Adaptive clusters: graphs that arrive before their workers, Adaptive's
target with held roots, and workers Adaptive retires."""

from __future__ import annotations

import dask.array as da
import numpy as np
from distributed import Event, Worker
from distributed.utils_test import async_poll_for, gen_cluster
from helpers import SMALL, blocked_reduction, pinned, slow_block

from autorestrictor import AutoRestrictor


@gen_cluster(client=True, nthreads=[("", 1)], config=SMALL)
async def test_a_graph_submitted_to_one_worker_is_planned_when_a_second_joins(c, s, a):
    await c.register_plugin(AutoRestrictor())
    p = s.plugins["autorestrictor"]
    ev = Event()
    x = da.ones((100, 40), chunks=(100, 1)).map_blocks(slow_block, ev, dtype=float)
    fut = c.compute(x.sum(axis=1))
    await async_poll_for(lambda: p.history, timeout=5)
    first = p.history[-1]
    assert first["reason"].startswith("1 worker(s): nothing to choose between"), first
    assert "once workers join" in first["reason"]
    assert s.queued, "Dask queues the roots meanwhile"
    async with Worker(s.address, nthreads=1) as b:
        await async_poll_for(lambda: len(p.history) == 2, timeout=10)
        late = p.history[-1]
        assert late["reason"] is None, late
        assert late["late"] == first["id"] and "workers joined" in late["note"]
        assert set(late["pinned_per_worker"]) == {a.address, b.address}
        assert not s.queued, "the pinned roots left Dask's queue"
        await ev.set()
        np.testing.assert_array_equal(await fut, np.full(100, 40.0))
        assert b.state.executed_count >= 10
        assert not s.unrunnable


@gen_cluster(client=True, nthreads=[], config=SMALL)
async def test_a_graph_submitted_to_no_worker_is_planned_when_workers_join(c, s):
    await c.register_plugin(AutoRestrictor())
    p = s.plugins["autorestrictor"]
    ev = Event()
    x = da.ones((100, 30), chunks=(100, 1)).map_blocks(slow_block, ev, dtype=float)
    fut = c.compute(x.sum(axis=1))
    await async_poll_for(lambda: p.history, timeout=5)
    assert p.history[-1]["reason"].startswith("0 worker(s)")
    async with Worker(s.address, nthreads=1) as a, Worker(s.address, nthreads=1) as b:
        await async_poll_for(lambda: len(p.history) == 2, timeout=10)
        assert p.history[-1]["late"] == 1 and p.history[-1]["reason"] is None, p.history[-1]
        await ev.set()
        np.testing.assert_array_equal(await fut, np.full(100, 30.0))
        assert a.state.executed_count > 0 and b.state.executed_count > 0
        assert not s.unrunnable


@gen_cluster(client=True, nthreads=[("", 1)] * 2, config=SMALL)
async def test_held_roots_count_in_adaptive_target_as_dasks_queue_does(c, s, a, b):
    ev, fut = await blocked_reduction(c, s, 60)
    held = sum(map(len, s.plugins["autorestrictor"].held.values()))
    assert held > 40 and len(s.unrunnable) >= held and not s.queued
    with_plugin = s.adaptive_target(target_duration="1s")
    await ev.set()
    await fut
    # Dask's default, the same graph (new keys), queued by Dask
    await c.unregister_scheduler_plugin("autorestrictor")
    ev2 = Event()
    x = da.ones((100, 61), chunks=(100, 1)).map_blocks(slow_block, ev2, dtype=float)
    fut2 = c.compute(x.sum(axis=1))
    await async_poll_for(lambda: len(s.queued) > 40, timeout=5)
    default = s.adaptive_target(target_duration="1s")
    assert with_plugin > 2 and with_plugin >= default, (with_plugin, default)
    await ev2.set()
    await fut2


@gen_cluster(client=True, nthreads=[("", 1)] * 3, config=SMALL)
async def test_a_retired_worker_hands_its_pinned_work_on(c, s, a, b, w3):
    """What Adaptive does to scale down: ``retire_workers``."""
    ev, fut = await blocked_reduction(c, s, 45)
    victim = max(pinned(s), key=pinned(s).get)
    assert pinned(s)[victim] > 0
    await ev.set()  # (retiring waits for the victim's running tasks)
    await s.retire_workers(workers=[victim], close_workers=True, stimulus_id="test")
    assert not pinned(s).get(victim)
    np.testing.assert_array_equal(await fut, np.full(100, 45.0))
    assert not s.unrunnable
