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


# -- a worker that writes to disk: pinned work goes back to Dask, or stays ---


async def _spill_on(c, s, workers, addr: str) -> None:
    """Make ``addr`` write 8 MiB to disk and tell the scheduler at once."""
    w = next(w for w in workers if w.address == addr)
    await c.scatter(np.ones(MB), workers=[addr])
    w.data.evict()  # the oldest (only) key goes to disk
    await w.heartbeat()
    assert s.workers[addr].memory.spilled > 0


@gen_cluster(client=True, nthreads=[("", 1)] * 4, config=LIMITED, timeout=60,
             worker_kwargs={"memory_limit": 10**9})
async def test_pinned_work_goes_back_to_dask_when_its_worker_spills(c, s, *workers):
    """A column sum cut into one run per worker holds a partial sum open at
    every level of each run, more than Dask's default would (predicted).
    Once a worker with pinned work writes to disk, every pinned task not yet
    started goes back to Dask, the record says why, and the result is whole."""
    from distributed.utils_test import async_poll_for
    from helpers import blocked_reduction, pinned

    ev, fut = await blocked_reduction(c, s, 128, check_interval=0.05)
    await _spill_on(c, s, workers, max(pinned(s), key=pinned(s).get))
    await async_poll_for(lambda: not pinned(s), timeout=10)
    assert not s.plugins["autorestrictor"].state.queues.held_at
    reasons = [e["reason"] for _, e in s.get_events("autorestrictor")
               if e.get("action") == "unpinned"]
    assert reasons and "writes to disk" in reasons[-1], reasons
    await ev.set()
    assert ((await fut) == 128).all()


@gen_cluster(client=True, nthreads=[("", 1)] * 2, config=LIMITED, timeout=60,
             worker_kwargs={"memory_limit": 10**9})
async def test_pinned_work_stays_when_it_holds_no_more_than_dask_would(c, s, a, b):
    """Independent chains hold one result each, as under Dask's default: a
    worker that writes to disk is no reason to give them back."""
    import dask.array as da
    from distributed import Event
    from distributed.utils_test import async_poll_for
    from helpers import pinned, slow_block

    await c.register_plugin(AutoRestrictor(check_interval=0.05))
    ev = Event()
    x = da.ones((100, 40), chunks=(100, 1)).map_blocks(slow_block, ev, dtype=float)
    x = x.map_blocks(lambda b: b + 1, dtype=float)
    futs = c.compute(x.to_delayed().ravel().tolist())
    await async_poll_for(lambda: pinned(s), timeout=5)
    before = sum(pinned(s).values())
    st = s.plugins["autorestrictor"].state
    await _spill_on(c, s, [a, b], max(pinned(s), key=pinned(s).get))
    await async_poll_for(lambda: st.memory_checked == st.n_plans, timeout=10)
    assert sum(pinned(s).values()) == before
    await ev.set()
    assert all((r == 2).all() for r in await c.gather(futs))


@gen_cluster(client=True, nthreads=[("", 1)] * 4, config=LIMITED, timeout=60,
             worker_kwargs={"memory_limit": 10**9})
async def test_a_graph_arriving_while_a_worker_has_data_on_disk_is_left_to_dask(c, s, *workers):
    """The same column sum, submitted while a worker has data on disk: its
    plan is not applied, the record says why, and the result is whole."""
    import dask.array as da
    from distributed import Event
    from helpers import pinned, slow_block

    await c.register_plugin(AutoRestrictor())
    await _spill_on(c, s, workers, workers[0].address)
    ev = Event()
    await ev.set()
    x = da.ones((100, 128), chunks=(100, 1)).map_blocks(slow_block, ev, dtype=float)
    assert ((await c.compute(x.sum(axis=1))) == 128).all()
    record = s.plugins["autorestrictor"].history[-1]
    assert "writes to disk" in (record["reason"] or ""), record
    assert not pinned(s)


def test_room_is_what_the_first_of_dasks_two_spill_rules_leaves():
    """Dask spills managed memory past ``target`` of the limit, and the
    whole process past ``spill``: on a worker whose libraries hold much of
    its limit, the second is met first."""
    from types import SimpleNamespace

    from autorestrictor import intake
    from autorestrictor.learning import Learned

    ws = SimpleNamespace(memory_limit=200 * MB, processing=(),
                         memory=SimpleNamespace(managed=20 * MB, unmanaged_old=90 * MB))
    room = intake.memory_room(ws, (0.6, 0.7), Learned())
    assert room == pytest.approx(0.7 * 200 * MB - 90 * MB - 20 * MB)  # 30 MiB, not 100
    ws.memory.unmanaged_old = 10 * MB
    assert intake.memory_room(ws, (0.6, 0.7), Learned()) == pytest.approx(100 * MB)
    assert intake.memory_room(ws, (0.6, None), Learned()) == pytest.approx(100 * MB)
    assert intake.memory_room(ws, (None, None), Learned()) == float("inf")
