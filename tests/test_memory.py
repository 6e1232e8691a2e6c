"""Admission counts bytes as well as threads under a worker's memory limit.

The rule itself is tested on hand-drawn queues in ``test_policies.py``;
here it is wired to a real scheduler: workers' ``memory_limit`` and
Dask's ``target`` fraction, the managed memory the scheduler sees, and the
sizes the plugin learns as roots finish.
"""

from __future__ import annotations

import numpy as np
import pytest
from dask import delayed
from distributed.utils_test import gen_cluster
from helpers import SMALL

from autorestrictor import AutoRestrictor

MB = 2**20
#: Dask's spill-by-managed-memory only: the process-based thresholds watch the
#: test process's RSS, which these in-process workers share.
LIMITED = {
    **SMALL,
    "distributed.worker.memory.target": 0.6,
    "distributed.worker.memory.spill": False,
    "distributed.worker.memory.pause": False,
    "distributed.worker.memory.terminate": False,
}


def block(i: int) -> np.ndarray:
    return np.full(MB, float(i))  # 8 MiB


def pair_sum(x: np.ndarray, y: np.ndarray) -> float:
    return float(x.sum() + y.sum())


def _graph(n: int):
    roots = [delayed(block)(i, dask_key_name=("block", i)) for i in range(n)]
    readers = [delayed(pair_sum)(roots[i], roots[i + 1], dask_key_name=("pair", i))
               for i in range(n - 1)]
    expected = float(MB * sum(2 * i + 1 for i in range(n - 1)))
    return delayed(sum)(readers, dask_key_name="total"), expected


async def _run(c, s, workers) -> tuple[float, float]:
    await c.register_plugin(AutoRestrictor())
    held = [await c.scatter(np.zeros(5 * MB), workers=[w.address])  # 40 MiB on each
            for w in workers]
    total, expected = _graph(24)
    result = await c.compute(total)
    del held
    assert s.plugins["autorestrictor"].history[-1]["reason"] is None
    return result, expected


@gen_cluster(client=True, nthreads=[("", 1)] * 2, config=LIMITED, timeout=60,
             worker_kwargs={"memory_limit": 100 * 10**6})
async def test_roots_wait_for_memory_while_their_worker_has_other_work(c, s, a, b):
    result, expected = await _run(c, s, (a, b))
    assert result == expected
    assert s._autorestrictor.queues.n_memory_waits > 0, \
        "40 MiB held, a 60 MB threshold: a third 8 MiB root waits while two run"


@pytest.mark.parametrize("limit", [0, 10**9])
@gen_cluster(client=True, nthreads=[("", 1)] * 2, config=LIMITED, timeout=60)
async def test_no_root_waits_for_memory_without_a_limit_or_far_below_it(c, s, a, b, limit):
    for w in (a, b):
        s.workers[w.address].memory_limit = limit
    result, expected = await _run(c, s, (a, b))
    assert result == expected
    assert s._autorestrictor.queues.n_memory_waits == 0
