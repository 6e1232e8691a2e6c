"""Synthetic benchmark workloads.

Each workload builds one or more dask collections from synthetic, seeded
data.  ``scale`` multiplies the amount of data while keeping the number of
chunks (and hence the shape of the task graph) fixed: at ``scale=1.0`` most
workloads touch a few hundred MB to a couple of GB, at ``scale=0.25`` a
quarter of that.

Wherever possible the data is integer valued (stored as float64), so that sums
are exact and do not depend on the order in which partial results meet.  The
few workloads with genuinely fractional results (``anom-mean``, ``hub``) rely
on :func:`checksum` rounding to a fixed number of significant digits.

Workers have to be able to import this module: the functions used inside
graphs (``_window_sum``, ``_make_frame``, ...) are pickled by reference.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable

import dask.array as da
import numpy as np

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
    """

    name: str
    description: str
    build: Callable[[float, Any], list]


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


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("seed-sum", "zeros, 200 column chunks, sum(axis=1)", seed_sum),
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
    ]
}


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
