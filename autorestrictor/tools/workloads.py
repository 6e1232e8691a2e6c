"""Synthetic benchmark workloads.

Each workload builds one or more dask collections from synthetic, seeded
data.  ``scale`` multiplies the amount of data while keeping the number of
chunks (and hence the shape of the task graph) fixed: at ``scale=1.0`` most
workloads touch a few hundred MB to a couple of GB, at ``scale=0.25`` a
quarter of that.  The tall-and-skinny factorisations (``qr``, ``svd``) are
the exception: there ``scale`` multiplies the number of 8 MB row blocks.

Wherever possible the data is integer valued (stored as float64), so that sums
are exact and do not depend on the order in which partial results meet.  The
few workloads with genuinely fractional results (``anom-mean``, ``hub``,
``qr``, ``svd``) rely on :func:`checksum` rounding to a fixed number of
significant digits.

Workers have to be able to import this module: the functions used inside
graphs (``_window_sum``, ``_make_frame``, ...) are pickled by reference.

The *elastic* workloads (:data:`ELASTIC_WORKLOADS`) model a cluster that
changes or is uneven: a slow worker, skewed task costs, workers that join
mid-run, two graphs at once, a cluster that Dask's ``Adaptive`` grows from 1
or from 0 workers.  Their tasks *wait* (``time.sleep``) rather than
compute, so that a 2-core machine can host 4-6 workers, but they pass
MB-sized arrays around.  There ``scale`` multiplies both the chunk size and
every wait (and the delay before the cluster changes), again keeping the
graph's shape fixed; ``scale=0.25`` runs in a couple of seconds.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

import autorestrictor

#: Seed used by every workload, so that all modes see the same numbers.
SEED = 20260801

#: Significant digits kept by :func:`checksum` for non-integer results.
CHECKSUM_DIGITS = 9


@dataclass(frozen=True)
class Workload:
    """A named benchmark workload.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"seed-sum"``.
    description : str
        One line saying what the graph looks like.
    build : callable
        ``build(scale, client) -> list`` of dask collections to compute
        together.  ``client`` is only used by workloads that persist data
        first; the others ignore it.
    workers : int, optional
        Number of workers the cluster starts with; overrides the bench's
        ``--workers`` for this workload.
    during : callable, optional
        ``during(client, cluster, t0, scale) -> dict``, run by the bench in
        a background thread while the collections compute (``t0`` is the
        ``time.time()`` at which the run started).  Used to change the
        cluster mid-run.  The returned dict (JSON-able) is stored in the
        row as ``events``; if it has ``"joins": {worker name: seconds since
        t0}``, the bench also reports what the joining workers ran.
    submit : callable, optional
        ``submit(client, collections) -> list`` of results, replacing the
        bench's ``client.compute(collections, sync=True)``; e.g. to submit
        the collections as separate graphs. It may instead return
        ``{"results": [...], **extra}``; ``extra`` (JSON-able) goes into the
        row.
    adapt : dict, optional
        Keyword arguments of Dask's own ``cluster.adapt(...)``
        (:class:`distributed.deploy.Adaptive`), called right after the
        cluster starts with ``workers`` workers (which may be 0) and before
        anything is submitted.  The bench then also reports the most workers
        the cluster had at once (``most_workers``), when each worker joined
        or left, and what every worker ran, including the retired ones.
    """

    name: str
    description: str
    build: Callable[[float, Any], list]
    workers: int | None = None
    during: Callable[[Any, Any, float, float], dict] | None = None
    submit: Callable[[Any, list], list] | None = None
    adapt: dict | None = None


# --------------------------------------------------------------------------
# helpers


def _scaled(base: int, scale: float) -> int:
    """Return ``base * scale`` rounded, but at least 1."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return max(1, int(round(base * scale)))


def _scaled_side(base: int, scale: float) -> int:
    """Scale one side of a square block so that its *area* scales by ``scale``."""
    return _scaled(base, math.sqrt(scale))


def _ints(rng, shape, chunks, high=10):
    """Integer-valued float64 random array (exact sums), values in [0, high)."""
    return rng.integers(0, high, size=shape, chunks=chunks).astype("f8")


def _window_sum(block: np.ndarray, width: int) -> np.ndarray:
    """Sum over ``2 * width + 1`` rows centred on each row (edge rows left as they are)."""
    out = block.copy()
    if block.shape[0] > 2 * width:
        c = np.cumsum(block, axis=0)
        c = np.concatenate([np.zeros_like(c[:1]), c])
        out[width:-width] = c[2 * width + 1:] - c[: -2 * width - 1]
    return out


def _stage_mix(block: np.ndarray) -> np.ndarray:
    """A cheap elementwise stage for ``chains`` that keeps values integer."""
    return (block * 3 + 1) % 101


def _stage_shift(block: np.ndarray) -> np.ndarray:
    """Within-block roll along axis 1 (still blockwise: no neighbours needed)."""
    return np.roll(block, 1, axis=1) + block


# --------------------------------------------------------------------------
# array workloads


def seed_sum(scale: float, client=None) -> list:
    """``da.zeros((1.25M, 200), chunks=(1.25M, 1)).sum(axis=1)``."""
    rows = _scaled(1_250_000, scale)
    x = da.zeros((rows, 200), chunks=(rows, 1))
    return [x.sum(axis=1)]


def a_plus_b(scale: float, client=None) -> list:
    """``(a + b).sum(axis=1)`` for two column-chunked arrays (dask/distributed#6597)."""
    rows = _scaled(1_000_000, scale)
    rng = da.random.default_rng(SEED)
    a = _ints(rng, (rows, 200), (rows, 1))
    b = _ints(rng, (rows, 200), (rows, 1))
    return [(a + b).sum(axis=1)]


def anom_mean(scale: float, client=None) -> list:
    """Monthly climatology and anomaly over 360 one-day chunks.

    For every "month" ``m`` the climatology is the mean over days
    ``m, m + 12, ...``; the anomaly is each of those days minus its
    climatology.  The result is the mean squared anomaly (the plain mean of an
    anomaly is zero up to rounding noise, which would make a useless
    checksum).
    """
    days, width = 360, _scaled(100_000, scale)
    x = _ints(da.random.default_rng(SEED), (days, width), (1, width))
    anomalies = []
    for month in range(12):
        days_of_month = x[month::12]
        clim = days_of_month.mean(axis=0)
        anomalies.append(days_of_month - clim)
    anom = da.concatenate(anomalies, axis=0)
    return [(anom**2).mean()]


def vorticity(scale: float, client=None) -> list:
    """Pad two fields, rechunk, take centred finite differences, sum ``curl**2``."""
    n, c = 5_000, 500
    side, chunk = _scaled_side(n, scale), _scaled_side(c, scale)
    rng = da.random.default_rng(SEED)
    u = _ints(rng, (side, side), chunk)
    v = _ints(rng, (side, side), chunk)
    up = da.pad(u, 1, mode="edge").rechunk(_scaled_side(1_250, scale))
    vp = da.pad(v, 1, mode="edge").rechunk(_scaled_side(1_250, scale))
    du_dy = up[2:, 1:-1] - up[:-2, 1:-1]
    dv_dx = vp[1:-1, 2:] - vp[1:-1, :-2]
    curl = dv_dx - du_dy
    return [(curl**2).sum()]


def double_diff(scale: float, client=None) -> list:
    """``(a[1:, 1:] - b[:-1, :-1]).sum()``: every output chunk straddles four inputs."""
    side, chunk = _scaled_side(6_000, scale), _scaled_side(500, scale)
    rng = da.random.default_rng(SEED)
    a = _ints(rng, (side, side), chunk)
    b = _ints(rng, (side, side), chunk)
    return [(a[1:, 1:] - b[:-1, :-1]).sum()]


def rechunk_swap(scale: float, client=None) -> list:
    """Rows-to-columns task rechunk (all-to-all), then ``sum(axis=1)``."""
    side, narrow = _scaled_side(8_000, scale), _scaled_side(200, scale)
    x = _ints(da.random.default_rng(SEED), (side, side), (side, narrow))
    y = x.rechunk((narrow, side), method="tasks")
    return [y.sum(axis=1)]


def matmul(scale: float, client=None) -> list:
    """``(x @ x.T).sum()`` for a square blocked matrix."""
    side, chunk = _scaled_side(4_000, scale), _scaled_side(500, scale)
    x = _ints(da.random.default_rng(SEED), (side, side), chunk)
    return [(x @ x.T).sum()]


def map_overlap(scale: float, client=None) -> list:
    """Moving sums over 201 rows, halos of 100 rows along the chunked axis, then ``sum``.

    Each chunk needs a 100-row slice from each neighbour (10% of a chunk),
    so the bytes moved depend on how many neighbours share a worker.
    """
    rows = _scaled(1_000, scale)
    depth = max(1, rows // 10)
    x = _ints(da.random.default_rng(SEED), (100 * rows, 2_000), (rows, 2_000))
    y = x.map_overlap(
        _window_sum, depth={0: depth, 1: 0}, boundary="none", dtype="f8", width=depth
    )
    return [y.sum()]


def hub(scale: float, client=None) -> list:
    """Standardise with the global mean/std (a hub every chunk depends on)."""
    rows = _scaled(5_000, scale)
    x = _ints(da.random.default_rng(SEED), (200 * rows, 50), (rows, 50))
    z = (x - x.mean()) / x.std()
    return [(z**2).sum(axis=1)]


def persisted(scale: float, client) -> list:
    """Persist a column-chunked array, wait, then ``(x + 1).sum(axis=1)``."""
    if client is None:
        raise ValueError("the 'persisted' workload needs a distributed client")
    from distributed import wait

    rows = _scaled(500_000, scale)
    x = _ints(da.random.default_rng(SEED), (rows, 100), (rows, 1))
    x = client.persist(x)
    wait(x)
    return [(x + 1).sum(axis=1)]


# --------------------------------------------------------------------------
# tall-and-skinny linear algebra

#: Row blocks of ``qr`` and ``svd`` at scale 1, and the shape of one block
#: (10,000 x 100 float64: 8 MB).
TS_BLOCKS = 40
TS_BLOCK = (10_000, 100)


def _tall_skinny(scale: float):
    """Seeded uniform random array of ``TS_BLOCKS * scale`` (at least 2) row blocks.

    Unlike most workloads, ``scale`` here changes the number of chunks (the
    graph's shape) and keeps their size: a tall-and-skinny factorisation is
    only tall and skinny with full-width blocks.
    """
    blocks = max(2, _scaled(TS_BLOCKS, scale))
    rows, cols = TS_BLOCK
    return da.random.default_rng(SEED).random((blocks * rows, cols), chunks=(rows, cols))


def qr(scale: float, client=None) -> list:
    """Tall-and-skinny QR (``da.linalg.qr``): ``q.sum(axis=0)`` and ``r`` together.

    40 row blocks of 8 MB at scale 1; the blocks' R factors meet in a
    reduction, and ``q`` is rebuilt block by block from it.
    """
    q, r = da.linalg.qr(_tall_skinny(scale))
    return [q.sum(axis=0), r]


def svd(scale: float, client=None) -> list:
    """Tall-and-skinny SVD (``da.linalg.svd``): ``u.sum(axis=0)``, ``s`` and ``v``.

    The array of ``qr``.  Singular vectors are defined up to sign;
    :func:`checksum` summarises fractional results with absolute values
    and squares, so a flipped sign could not make the modes disagree.
    """
    u, s, v = da.linalg.svd(_tall_skinny(scale))
    return [u.sum(axis=0), s, v]


# --------------------------------------------------------------------------
# small shared operands


def broadcast(scale: float, client=None) -> list:
    """The seed's column sum, each column weighted by one small shared vector.

    ``w`` is one chunk of 200 weights, sliced (``getitem``) for every column
    chunk of ``x``: a broadcast operand that every chunk reads. 2 GB of chunk
    data at scale 1.
    """
    rows = _scaled(1_250_000, scale)
    x = _ints(da.random.default_rng(SEED), (rows, 200), (rows, 1))
    w = da.arange(1, 201, chunks=200).astype("f8")
    return [(x * w[None, :] + 1).sum(axis=1)]


def _two_pass_graph(seed: int, scale: float):
    """Four row blocks of 200 column chunks, each column weighted by its own tiny chunk.

    Every weight chunk is read by the four row blocks (as many readers as
    workers), so only its size, not the graph's shape, says it is light.
    """
    rows = _scaled(300_000, scale)
    x = _ints(da.random.default_rng(seed), (4 * rows, 200), (rows, 1))
    w = da.arange(1, 201, chunks=1).astype("f8")
    return (x * w[None, :]).sum(axis=1)


def two_pass(scale: float, client=None) -> list:
    """The same kind of graph twice; the second is planned with learned sizes."""
    return [_two_pass_graph(SEED, scale), _two_pass_graph(SEED + 1, scale)]


def _bytes_sent(dask_worker) -> int:
    return dask_worker.transfer_outgoing_bytes_total


def _submit_in_turn(client, collections) -> dict:
    """Compute the collections one after the other; report each pass's bytes and plan."""
    results, passes = [], []
    for c in collections:
        before = sum(client.run(_bytes_sent).values())
        results.append(client.compute(c, sync=True))
        record = {"bytes_moved": sum(client.run(_bytes_sent).values()) - before}
        plans = autorestrictor.last_plans(client)  # empty without the plugin
        if plans:
            record["sizes"] = plans[-1].get("sizes")
            record["groups"] = plans[-1].get("n_groups")
            record["reason"] = plans[-1].get("reason")
        passes.append(record)
    return {"results": results, "passes": passes}


# --------------------------------------------------------------------------
# dataframe workload


def _make_frame(i: int, rows: int):
    """One partition of integer-only data (so group sums are exact)."""
    import pandas as pd

    rng = np.random.default_rng(SEED + i)
    return pd.DataFrame(
        {
            "id": rng.integers(0, 1_000, rows),
            "a": rng.integers(0, 1_000_000, rows),
            "b": rng.integers(-500, 500, rows),
        }
    )


def _spread_per_id(part):
    """Sum over ids in this partition of ``max(a) - min(a) + sum(b)``.

    Only correct when every id lives in exactly one partition, i.e. after a
    shuffle on ``id`` -- so the checksum also checks the shuffle.
    """
    import pandas as pd

    if part.empty:
        return pd.Series([0], dtype="int64")
    g = part.groupby("id")
    value = (g["a"].max() - g["a"].min() + g["b"].sum()).sum()
    return pd.Series([int(value)], dtype="int64")


def dataframe_shuffle(scale: float, client=None) -> list:
    """P2P shuffle on ``id``, per-partition groupby, reduced to one integer."""
    import dask.dataframe as dd
    import pandas as pd

    rows = _scaled(200_000, scale)
    meta = pd.DataFrame({col: pd.Series(dtype="int64") for col in ("id", "a", "b")})
    df = dd.from_map(_make_frame, range(50), args=(rows,), meta=meta)
    shuffled = df.shuffle("id", shuffle_method="p2p")
    per_part = shuffled.map_partitions(_spread_per_id, meta=pd.Series(dtype="int64"))
    return [per_part.sum()]


# --------------------------------------------------------------------------
# many independent chains


def chains(scale: float, client=None) -> list:
    """100 independent 4-stage chains with three different per-chunk reductions."""
    rows = _scaled(500, scale)
    x = _ints(da.random.default_rng(SEED), (100 * rows, 1_000), (rows, 1_000), high=100)
    s1 = x.map_blocks(_stage_mix, dtype="f8")
    s2 = s1.map_blocks(_stage_shift, dtype="f8")
    s3 = s2.map_blocks(_stage_mix, dtype="f8")
    s4 = (s3 - s1) ** 2
    return [s2.sum(axis=1), s3.max(axis=1), s4.sum(axis=1)]


# --------------------------------------------------------------------------
# elastic workloads: tasks that wait, on an uneven or changing cluster

#: Seconds one waiting task takes at ``scale=1``.
TASK_S = 0.05

#: Rows of one chunk at ``scale=1``: 250,000 float64 values, 2 MB.
CHUNK_ROWS = 250_000

#: Name of the noisy-neighbour worker of ``slow-worker`` (LocalCluster names
#: its workers 0, 1, ...), and how much longer it takes for every task.
SLOW_WORKER = 0
SLOW_FACTOR = 3

#: How much longer the expensive chunks of ``skewed-cost`` take.
HEAVY_FACTOR = 5


def _worker_name():
    """Name of the dask worker running this task, or None outside a worker."""
    from distributed import get_worker

    try:
        return get_worker().name
    except ValueError:  # local scheduler
        return None


def _wait(seconds: float, slow=None) -> None:
    """Sleep ``seconds``; ``SLOW_FACTOR`` times as long on worker ``slow``."""
    if slow is not None and str(_worker_name()) == str(slow):
        seconds *= SLOW_FACTOR
    time.sleep(seconds)


def _chunk_cost(seconds: float, heavy: int, block_id) -> float:
    """Wait of chunk ``block_id``: ``HEAVY_FACTOR`` times longer below index ``heavy``."""
    return seconds * (HEAVY_FACTOR if block_id[1] < heavy else 1)


def _sleepy_chunk(rows, seconds, heavy, slow, block_id=None):
    """Wait, then return seeded integer-valued column chunk ``block_id[1]``."""
    _wait(_chunk_cost(seconds, heavy, block_id), slow)
    rng = np.random.default_rng(SEED + block_id[1])
    return rng.integers(0, 10, size=(rows, 1)).astype("f8")


def _sleepy_step(block, seconds, heavy, slow, block_id=None):
    """Wait, then apply :func:`_stage_mix` (the per-chunk step)."""
    _wait(_chunk_cost(seconds, heavy, block_id), slow)
    return _stage_mix(block)


def _sleepy_sum(scale: float, n_chunks: int = 240, heavy: int = 0, slow=None) -> list:
    """Sum over ``n_chunks`` column chunks of 2 MB (at scale 1) that wait to be made.

    Each chunk is created and then stepped, each waiting ``TASK_S * scale``
    seconds (Dask fuses both and the chunk's partial sum into one task).
    """
    rows, seconds = _scaled(CHUNK_ROWS, scale), TASK_S * scale
    params = {"seconds": seconds, "heavy": heavy, "slow": slow}
    x = da.map_blocks(
        _sleepy_chunk, chunks=((rows,), (1,) * n_chunks), dtype="f8", rows=rows, **params
    )
    y = x.map_blocks(_sleepy_step, dtype="f8", **params)
    return [y.sum(axis=1)]


def slow_worker(scale: float, client=None) -> list:
    """240 waiting chunks, summed; worker ``SLOW_WORKER`` waits 3x as long for each."""
    return _sleepy_sum(scale, slow=SLOW_WORKER)


def skewed_cost(scale: float, client=None) -> list:
    """240 waiting chunks, summed; the first quarter (by index) waits 5x as long."""
    return _sleepy_sum(scale, heavy=240 // 4)


def scale_up(scale: float, client=None) -> list:
    """240 waiting chunks, summed (the cluster grows from 2 to 6 workers meanwhile)."""
    return _sleepy_sum(scale)


def join_mid_run(scale: float, client=None) -> list:
    """120 waiting chunks, summed (a third worker joins meanwhile)."""
    return _sleepy_sum(scale, n_chunks=120)


def adaptive(scale: float, client=None) -> list:
    """240 waiting chunks, summed (Dask's ``Adaptive`` grows the cluster from 1 to 4)."""
    return _sleepy_sum(scale)


def adaptive_zero(scale: float, client=None) -> list:
    """240 waiting chunks, summed, submitted to no worker (``Adaptive`` starts 0 to 4)."""
    return _sleepy_sum(scale)


#: ``cluster.adapt`` arguments of ``adaptive`` and ``adaptive-zero`` (not scaled).
ADAPT = {"maximum": 4, "interval": "200ms", "target_duration": "1s"}


def _scale_during(client, cluster, t0: float, scale: float, *, n: int, delay: float,
                  timeout: float = 120.0) -> dict:
    """``during`` hook: ``delay * scale`` s after ``t0``, scale the cluster to ``n`` workers.

    Waits until all new workers have registered with the scheduler, noting
    when each was first seen (polling every 20 ms).  New workers get
    the cluster's worker spec: one thread, the bench's memory limit if any.

    Returns
    -------
    dict
        ``scaled_to``, ``scale_at_s`` (seconds since ``t0``) and ``joins``:
        ``{"w<name>": seconds since t0 at which the scheduler listed it}``.
    """

    def names() -> set:
        return {w["name"] for w in client.scheduler_info(n_workers=-1)["workers"].values()}

    time.sleep(max(0.0, t0 + delay * scale - time.time()))
    before = names()
    asked = time.time()
    cluster.scale(n)
    joins: dict[str, float] = {}
    while len(before) + len(joins) < n:
        if time.time() > asked + timeout:
            raise TimeoutError(f"only {len(joins)} of {n - len(before)} new workers "
                               f"joined within {timeout} s")
        time.sleep(0.02)
        now = time.time()
        for name in names() - before:
            joins.setdefault(f"w{name}", now - t0)
    return {"scaled_to": n, "scale_at_s": asked - t0, "joins": joins}


def _chain_start(seed: int, rows: int, seconds: float) -> np.ndarray:
    """Wait, then return a seeded integer-valued vector (``rows`` float64)."""
    time.sleep(seconds)
    return np.random.default_rng(seed).integers(0, 100, size=rows).astype("f8")


def _chain_step(arr: np.ndarray, seconds: float) -> np.ndarray:
    """Wait, then :func:`_stage_mix` the vector passed along the chain."""
    time.sleep(seconds)
    return _stage_mix(arr)


def _chain_ends(*ends: np.ndarray) -> np.ndarray:
    """Sum of each chain's last vector."""
    return np.array([end.sum() for end in ends])


def concurrent_graphs(scale: float, client=None) -> list:
    """Two graphs, each 2 independent chains of 60 waiting tasks passing 2 MB along.

    Returns one ``Delayed`` per graph; its ``submit`` hook computes them as
    two separate graphs, submitted back to back.
    """
    from dask import delayed

    rows, seconds = _scaled(CHUNK_ROWS, scale), TASK_S * scale
    graphs = []
    for g in range(2):
        ends = []
        for c in range(2):
            x = delayed(_chain_start, pure=True)(SEED + 2 * g + c, rows, seconds)
            for _ in range(59):
                x = delayed(_chain_step, pure=True)(x, seconds)
            ends.append(x)
        graphs.append(delayed(_chain_ends, pure=True)(*ends))
    return graphs


def _submit_separately(client, collections: list) -> list:
    """``submit`` hook: one ``client.compute`` per collection, then gather them all."""
    futures = [client.compute(c) for c in collections]
    return client.gather(futures)


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("seed-sum", "zeros, 200 column chunks, sum(axis=1)", seed_sum),
        Workload("seed-sum-2w", "seed-sum on 2 workers, whatever --workers says", seed_sum,
                 workers=2),
        Workload("a-plus-b", "(a + b).sum(axis=1), column chunks", a_plus_b),
        Workload("anom-mean", "monthly climatology + anomaly over daily chunks", anom_mean),
        Workload("vorticity", "pad, rechunk, finite differences, sum", vorticity),
        Workload("double-diff", "(a[1:, 1:] - b[:-1, :-1]).sum()", double_diff),
        Workload("rechunk-swap", "rows -> columns task rechunk, sum(axis=1)", rechunk_swap),
        Workload("matmul", "(x @ x.T).sum()", matmul),
        Workload("map-overlap", "moving sums with 100-row halos, sum", map_overlap),
        Workload("hub", "standardise by global mean/std, sum(axis=1)", hub),
        Workload("persisted", "persist, then (x + 1).sum(axis=1)", persisted),
        Workload("dataframe-shuffle", "P2P shuffle on id, per-partition groupby",
                 dataframe_shuffle),
        Workload("chains", "100 independent 4-stage chains, 3 outputs each", chains),
        Workload("qr", "tall-and-skinny QR of 40 row blocks of 8 MB: q.sum(axis=0), r", qr),
        Workload("svd", "tall-and-skinny SVD of 40 row blocks of 8 MB: u.sum(axis=0), s, v",
                 svd),
        Workload("broadcast", "column sum, every chunk times one shared weight vector",
                 broadcast),
        Workload("two-pass", "weighted row-block sums, twice: sizes learned from the first",
                 two_pass, submit=_submit_in_turn),
        Workload("slow-worker", "waiting 2 MB chunks summed; worker 0 is 3x slower",
                 slow_worker, workers=4),
        Workload("skewed-cost", "waiting 2 MB chunks summed; first quarter costs 5x",
                 skewed_cost, workers=4),
        Workload("scale-up", "waiting 2 MB chunks summed; 2 -> 6 workers after 0.5 s",
                 scale_up, workers=2,
                 during=functools.partial(_scale_during, n=6, delay=0.5)),
        Workload("join-mid-run", "120 waiting chunks summed; a third worker joins at 1.5 s",
                 join_mid_run, workers=2,
                 during=functools.partial(_scale_during, n=3, delay=1.5)),
        Workload("concurrent-graphs", "two graphs at once, 2 chains of 60 waiting tasks each",
                 concurrent_graphs, workers=4, submit=_submit_separately),
        Workload("adaptive", "waiting 2 MB chunks summed; 1 worker, Dask's Adaptive up to 4",
                 adaptive, workers=1, adapt={"minimum": 1, **ADAPT}),
        Workload("adaptive-zero", "waiting 2 MB chunks summed; no worker at submit, "
                 "Dask's Adaptive 0 to 4", adaptive_zero, workers=0, adapt={"minimum": 0, **ADAPT}),
    ]
}

#: Per worker, the memory limit at which Dask's default spills some of each
#: workload to disk but pauses no worker (4 worker processes of one thread,
#: Dask's own thresholds; one run per size, from 150 MB up to 1 GB, on a
#: 2-core machine where a worker process holds 90-100 MB before its data):
#: what ``bench --memory-limit per-workload`` gives it. Smaller sizes paused
#: workers, larger ones spilled nothing.
MEMORY_LIMITS: dict[str, str] = {
    "seed-sum": "400MB", "seed-sum-2w": "400MB", "a-plus-b": "300MB", "anom-mean": "175MB",
    "vorticity": "250MB", "double-diff": "175MB", "rechunk-swap": "800MB", "matmul": "300MB",
    "map-overlap": "400MB", "hub": "300MB", "persisted": "400MB",
    "dataframe-shuffle": "400MB", "chains": "175MB", "qr": "250MB", "svd": "250MB",
    "broadcast": "400MB", "two-pass": "200MB", "slow-worker": "175MB", "skewed-cost": "175MB",
    "scale-up": "175MB", "join-mid-run": "175MB", "concurrent-graphs": "150MB",
    "adaptive": "175MB", "adaptive-zero": "175MB",
}

#: Workloads on an uneven or changing cluster; the bench's table also shows
#: how many tasks each worker ran for them.
ELASTIC_WORKLOADS = ("slow-worker", "skewed-cost", "scale-up", "join-mid-run",
                     "concurrent-graphs", "adaptive", "adaptive-zero")


# --------------------------------------------------------------------------
# checksums


def _round_sig(value: float, digits: int = CHECKSUM_DIGITS) -> str:
    """Format a float with ``digits`` significant digits (``-0`` folded to ``0``)."""
    text = f"{value:.{digits}g}"
    return "0" if text in ("-0", "0") else text


def _fingerprint(value: Any) -> str:
    """Placement-independent text summary of one computed result."""
    if hasattr(value, "to_numpy") and not np.isscalar(value):  # pandas objects
        value = value.to_numpy()
    arr = np.asarray(value)
    if arr.dtype.kind in "iub":
        # Integers are exact: hash the values themselves.
        data = np.ascontiguousarray(arr.astype("i8")).tobytes()
        return f"int{arr.shape}:{hashlib.sha256(data).hexdigest()[:16]}"
    arr = np.asarray(arr, dtype="f8")
    flat = arr.ravel()
    if flat.size and np.all(flat == np.round(flat)) and np.all(np.abs(flat) < 2**53):
        # Integer-valued floats are exact too.
        data = np.ascontiguousarray(flat.astype("i8")).tobytes()
        return f"intf{arr.shape}:{hashlib.sha256(data).hexdigest()[:16]}"
    # Genuinely fractional: summaries rounded to a few significant digits, so
    # that last-bit differences (summation order, SIMD alignment) vanish.
    weights = np.arange(flat.size) % 7 + 1
    stats = [np.sum(np.abs(flat)), np.sum(flat**2), np.sum(np.abs(flat) * weights)]
    return f"float{arr.shape}:" + ",".join(_round_sig(float(s)) for s in stats)


def checksum(results) -> str:
    """Deterministic checksum of the results of one workload.

    Parameters
    ----------
    results : sequence
        The computed values, in the order the workload returned its
        collections (numpy arrays, scalars or pandas objects).

    Returns
    -------
    str
        A short hex digest.  Integer-valued results are hashed exactly;
        fractional results are summarised and rounded to
        ``CHECKSUM_DIGITS`` significant digits first.
    """
    parts = [_fingerprint(r) for r in results]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
