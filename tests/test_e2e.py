"""End to end on a LocalCluster with worker processes, as users run it."""

from __future__ import annotations

import dask.array as da
import numpy as np
from distributed import Client, LocalCluster

import autorestrictor
from autorestrictor import AutoRestrictor


def _run(plugin: str | None):
    kwargs = {}
    if plugin == "preload":
        kwargs["scheduler_kwargs"] = {"preload": ["autorestrictor"]}
    with LocalCluster(
        n_workers=4, threads_per_worker=1, processes=True, memory_limit=0,
        dashboard_address=":0", **kwargs,
    ) as cluster, Client(cluster) as client:
        if plugin == "register":
            client.register_plugin(AutoRestrictor())
        x = da.random.default_rng(42).random((250_000, 200), chunks=(250_000, 1))
        result = x.sum(axis=1).compute()
        moved = sum(
            client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total).values()
        )
        plans = autorestrictor.last_plans(client)
    return result, moved, plans


def test_seed_example_moves_ten_times_fewer_bytes():
    base, moved_default, _ = _run(None)
    for how in ("register", "preload"):
        result, moved, plans = _run(how)
        np.testing.assert_allclose(result, base, rtol=1e-12)
        assert plans and plans[-1]["reason"] is None, plans
        assert moved * 10 <= moved_default, (how, moved, moved_default)
