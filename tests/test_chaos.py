"""Kill a random worker at a random moment of a pinned computation.

The nanny restarts the killed worker under a new address; the pins of the
dead worker must move to the survivors and the result must be right.
"""

from __future__ import annotations

import os
import random
import signal
import time

import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

import autorestrictor
from autorestrictor import AutoRestrictor


def _slow(block):
    time.sleep(0.05)
    return block * 2


def _transitions(dask_scheduler=None):
    return dask_scheduler.transition_counter


def chaos_once(seed: int) -> None:
    rng = random.Random(seed)
    x = da.random.default_rng(seed).random((5_000, 120), chunks=(5_000, 1))
    graph = x.map_blocks(_slow, dtype=float).sum(axis=1)
    expected = graph.compute(scheduler="sync")
    with LocalCluster(
        n_workers=3, threads_per_worker=1, processes=True, memory_limit=0,
        dashboard_address=":0",
    ) as cluster, Client(cluster) as client:
        client.register_plugin(AutoRestrictor(min_tasks=1))
        start = client.run_on_scheduler(_transitions)
        fut = client.compute(graph)
        # A random moment: after a random number of scheduler transitions (the
        # graph makes about 700). Polling, because the moment is the point.
        goal = start + rng.randint(20, 350)
        deadline = time.monotonic() + 60
        while client.run_on_scheduler(_transitions) < goal:
            assert time.monotonic() < deadline, "the computation made no progress"
            time.sleep(0.01)
        assert not fut.done(), "the kill must land during the computation"
        victim = rng.choice(sorted(client.run(os.getpid).values()))
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        result = fut.result(timeout=120)
        print(f"chaos seed {seed}: killed after {goal - start} transitions, finished "
              f"{time.monotonic() - killed:.2f} s after the kill")
        plans = autorestrictor.last_plans(client)
    np.testing.assert_allclose(result, expected, rtol=1e-12)
    assert plans[0]["reason"] is None, plans


@pytest.mark.parametrize("seed", range(3))
def test_kill_random_worker(seed):
    chaos_once(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 120))
def test_kill_random_worker_many_times(seed):
    chaos_once(seed)
