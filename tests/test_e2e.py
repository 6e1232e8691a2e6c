"""End to end on a LocalCluster with worker processes, as users run it."""

from __future__ import annotations

import time

import dask
import dask.array as da
import numpy as np
import pytest
from dask.utils import key_split
from distributed import Client, LocalCluster, get_task_stream
from helpers import pause_worker, resume_worker, wait_for

import autorestrictor
from autorestrictor import AutoRestrictor
from autorestrictor.state import HOLD


def _seed_run(plugin: str | None):
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


def test_seed_example_keeps_its_chunks_local():
    """The column sum's 200 chunks (2 MB each, 400 MB) stay where they are
    computed: only partial sums move. What Dask's default moves varies with
    the machine's load (296-1,400 MB seen), so the plugin is held to a share
    of the data as well as to a fraction of the default's bytes."""
    base, moved_default, _ = _seed_run(None)
    data = 250_000 * 200 * 8
    for how in ("register", "preload"):
        result, moved, plans = _seed_run(how)
        np.testing.assert_allclose(result, base, rtol=1e-12)
        assert plans and plans[-1]["reason"] is None, plans
        assert moved <= 0.15 * data, (how, moved)
        assert moved * 5 <= moved_default, (how, moved, moved_default)


# -- nothing a user does may strand a task (process clusters) ----------------


def _sleepy(block):
    time.sleep(0.02)
    return block


def _reduction(n_chunks: int = 240):
    x = da.ones((1000, n_chunks), chunks=(1000, 1)).map_blocks(_sleepy, dtype=float)
    return x.sum(axis=1), np.full(1000, float(n_chunks))


def _held(dask_scheduler=None) -> int:
    return sum(ts.worker_restrictions == {HOLD} for ts in dask_scheduler.tasks.values())


def _cluster(**kwargs):
    return LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, memory_limit=0,
        dashboard_address=":0", **kwargs,
    )


@pytest.mark.parametrize("action", ["register-again", "unregister"])
def test_plugin_registered_again_or_removed_mid_run(action):
    graph, expected = _reduction()
    with _cluster() as cluster, Client(cluster) as client:
        client.register_plugin(AutoRestrictor())
        fut = client.compute(graph)
        wait_for(lambda: client.run_on_scheduler(_held) > 0, what="held roots", interval=0.02)
        if action == "register-again":
            with pytest.warns(UserWarning, match="overwriting"):
                client.register_plugin(AutoRestrictor())
        else:
            client.unregister_scheduler_plugin("autorestrictor")
        assert not fut.done(), "the change must land during the computation"
        np.testing.assert_array_equal(fut.result(timeout=60), expected)
        assert client.run_on_scheduler(_held) == 0


def test_paused_worker_hands_its_units_over():
    graph, expected = _reduction()
    config = {"distributed.worker.memory.pause": False, "autorestrictor.paused-timeout": 0.3}
    with dask.config.set(config), _cluster() as cluster, Client(cluster) as client:
        client.register_plugin(AutoRestrictor())
        fut = client.compute(graph)
        wait_for(lambda: client.run_on_scheduler(_held) > 0, what="held roots", interval=0.02)
        first, second = sorted(client.scheduler_info()["workers"])
        client.run(pause_worker, workers=[first])
        # the result arrives while the worker is still paused
        np.testing.assert_array_equal(fut.result(timeout=60), expected)
        events = [e for _, e in client.get_events("autorestrictor") if e["action"] == "rehomed"]
        assert events and events[-1]["worker"] == first and "paused" in events[-1]["why"]
        client.run(resume_worker, workers=[first])


def _p2p_outputs(stream, prefix: str) -> set:
    """Workers that ran P2P's output tasks (named after their prefix, maybe fused)."""
    return {
        rec["worker"] for rec in stream
        if key_split(rec["key"]).startswith(prefix) and "transfer" not in key_split(rec["key"])
    }


def test_p2p_rechunk_and_shuffle_spread_their_outputs():
    import dask.dataframe as dd  # the bench extra, part of the test extra
    import pandas as pd
    with LocalCluster(
        n_workers=4, threads_per_worker=1, processes=True, memory_limit=0,
        dashboard_address=":0",
    ) as cluster, Client(cluster) as client:
        client.register_plugin(AutoRestrictor())
        x = da.random.default_rng(0).random((400, 400), chunks=(400, 10))
        y = x.rechunk((10, 400), method="p2p")
        with get_task_stream(client) as ts:
            result = y.sum(axis=1).compute()
        np.testing.assert_allclose(result, x.sum(axis=1).compute(scheduler="sync"))
        assert len(_p2p_outputs(ts.data, "rechunk")) == 4, {key_split(r["key"]) for r in ts.data}

        pdf = pd.DataFrame({"id": np.arange(4000) % 97, "v": np.arange(4000.0)})
        df = dd.from_pandas(pdf, npartitions=40)
        with dask.config.set({"dataframe.shuffle.method": "p2p"}), get_task_stream(client) as ts:
            out = df.shuffle("id").map_partitions(len).compute()
        assert out.sum() == 4000
        assert len(_p2p_outputs(ts.data, "p2pshuffle")) == 4, {
            key_split(r["key"]) for r in ts.data}
