"""Memory pressure: when pinned work is handed back to Dask because a worker spills.

A plan gives each worker a contiguous run of the graph, so each worker
holds the open results of its own run (a partial sum at every level of its
part of a tree, a month's days until their mean is known), where under
Dask's default the workers share one front. With room to spare that costs
nothing. On a worker near its ``memory_limit`` it costs bytes spilled to
disk: Dask's workers write managed data out past
``distributed.worker.memory.spill`` of the limit.

So while a worker that has pinned work not yet started writes to disk (or,
when a graph arrives, while any worker has data on disk), the plugin
compares the peak of open results the pinned work is predicted to reach
(:func:`autorestrictor.datamap.peaks`) with what Dask's default would
reach on the same tasks. Beyond ``memory-tolerance``, the unstarted
work is handed back to Dask (or the new graph is left to it), which runs
it as it would have, and the record says why.

Pure: plain numbers in, a decision out; it never imports ``distributed``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping


def spilling(on_disk: Mapping[str, float], before: Mapping[str, float],
             pinned: Collection[str]) -> list[str]:
    """Workers with pinned work whose bytes on disk grew since ``before``.

    >>> spilling({"a": 10.0, "b": 5.0, "c": 9.0}, {"a": 10.0, "b": 0.0}, pinned={"a", "b"})
    ['b']
    """
    return sorted(w for w in pinned if on_disk.get(w, 0.0) > before.get(w, 0.0))


def verdict(workers: Collection[str], plan_peak: float, default_peak: float,
            tolerance: float, what: str = "the pinned work not yet started") -> str | None:
    """Why ``what`` goes (back) to Dask, or ``None`` to keep it pinned.

    ``workers`` write to disk (:func:`spilling`), or have data there when a
    graph arrives; ``plan_peak`` and ``default_peak`` are the fullest
    worker's predicted peak of open results under the pins and under
    Dask's default.

    >>> verdict(["w1"], plan_peak=12, default_peak=10, tolerance=0.1)[:40]
    'w1 writes to disk, and the pinned work n'
    >>> verdict(["w1"], plan_peak=10.5, default_peak=10, tolerance=0.1) is None
    True
    >>> verdict([], plan_peak=12, default_peak=10, tolerance=0.1) is None
    True
    """
    if not workers or not plan_peak > (1 + tolerance) * max(default_peak, 0.0):
        return None
    first = sorted(workers)[0]
    more = f" (and {len(workers) - 1} more)" if len(workers) > 1 else ""
    ratio = plan_peak / default_peak if default_peak > 0 else float("inf")
    return (f"{first}{more} writes to disk, and {what} is predicted to hold "
            f"{ratio:.2f}x the open results Dask's default would "
            f"(memory-tolerance {tolerance:g}): left to Dask")
