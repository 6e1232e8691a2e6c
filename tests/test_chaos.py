"""Chaos at a random moment of a pinned computation.

Each run injects one of: SIGKILL of a random worker (the nanny restarts it
under a new address; the dead worker's pins must move to the survivors),
registering the plugin again, unregistering it, or pausing a random worker
for a second. The result must be right and arrive.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster
from helpers import pause_worker, resume_worker, wait_for

import autorestrictor
from autorestrictor import AutoRestrictor


def _slow(block):
    time.sleep(0.05)
    return block * 2


def _transitions(dask_scheduler=None):
    return dask_scheduler.transition_counter


ACTIONS = ("kill", "register-again", "unregister", "pause")


def _inject(client, rng: random.Random, action: str) -> None:
    if action == "kill":
        victim = rng.choice(sorted(client.run(os.getpid).values()))
        os.kill(victim, signal.SIGKILL)
    elif action == "register-again":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Scheduler already contains", UserWarning)
            client.register_plugin(AutoRestrictor(min_tasks=1))
    elif action == "unregister":
        client.unregister_scheduler_plugin("autorestrictor")
    else:  # pause a worker for a second, then let it resume
        victim = rng.choice(sorted(client.scheduler_info()["workers"]))
        client.run(pause_worker, workers=[victim])
        timer = threading.Timer(1.0, client.run, (resume_worker,), {"workers": [victim]})
        timer.start()


def chaos_once(seed: int, action: str | None = None) -> None:
    rng = random.Random(seed)
    action = action or rng.choice(ACTIONS)
    x = da.random.default_rng(seed).random((5_000, 120), chunks=(5_000, 1))
    graph = x.map_blocks(_slow, dtype=float).sum(axis=1)
    expected = graph.compute(scheduler="sync")
    config = {
        # the pause is the test's; the memory monitor would lift it at once
        "distributed.worker.memory.pause": False,
        "autorestrictor.paused-timeout": 0.3,
    }
    with dask.config.set(config), LocalCluster(
        n_workers=3, threads_per_worker=1, processes=True, memory_limit=0,
        dashboard_address=":0",
    ) as cluster, Client(cluster) as client:
        client.register_plugin(AutoRestrictor(min_tasks=1))
        start = client.run_on_scheduler(_transitions)
        fut = client.compute(graph)
        # A random moment: after a random number of scheduler transitions (the
        # graph makes about 700). Polling, because the moment is the point.
        goal = start + rng.randint(20, 350)
        wait_for(lambda: client.run_on_scheduler(_transitions) >= goal, timeout=60,
                 what="the computation to make progress", interval=0.01)
        assert not fut.done(), "the chaos must land during the computation"
        _inject(client, rng, action)
        injected = time.monotonic()
        result = fut.result(timeout=120)
        print(f"chaos seed {seed}: {action} after {goal - start} transitions, finished "
              f"{time.monotonic() - injected:.2f} s later")
        plans = autorestrictor.last_plans(client) if action != "unregister" else None
    np.testing.assert_allclose(result, expected, rtol=1e-12)
    if plans is not None:
        assert plans[0]["reason"] is None, plans


@pytest.mark.parametrize("action", ACTIONS)
def test_chaos(action):
    chaos_once(0, action)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 120))
def test_chaos_many_times(seed):
    chaos_once(seed, ACTIONS[seed % len(ACTIONS)])  # each action five times
