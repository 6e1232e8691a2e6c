"""``python -m autorestrictor bench-plan``: the planner alone, at scale.

Times :func:`autorestrictor.plan` on synthetic graphs (plain mappings, no
cluster) and reports seconds and peak memory per task, so that the cost the
plugin adds to the scheduler's event loop can be read off for any graph
size. Memory is the peak of Python allocations during ``plan()``
(``tracemalloc``, which numpy reports to), beyond the input mappings.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
import tracemalloc

from autorestrictor.planner import plan
from autorestrictor.synthetic import GRAPHS


def measure(kind: str, n_tasks: int, n_workers: int, repeat: int = 3) -> dict:
    """Plan one synthetic graph ``repeat`` times; return the medians."""
    deps, nbytes = GRAPHS[kind](n_tasks)
    priority = {k: i for i, k in enumerate(deps)}
    workers = {f"tcp://10.{i // 65536}.{i // 256 % 256}.{i % 256}:8786": 1 for i in range(n_workers)}
    times = []
    result = None
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = plan(deps, workers, nbytes=nbytes, priority=priority)
        result.assignment  # building the key -> worker mapping is part of the cost
        times.append(time.perf_counter() - start)
    gc.collect()
    tracemalloc.start()
    plan(deps, workers, nbytes=nbytes, priority=priority).assignment
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    n = len(deps)
    t = statistics.median(times)
    return {
        "graph": kind,
        "tasks": n,
        "workers": n_workers,
        "plan_s": t,
        "us_per_task": t / n * 1e6,
        "peak_bytes_per_task": peak / n,
        "pinned": result.n_pinned,
        "groups": result.n_groups,
        "reason": result.reason,
    }


def format_rows(rows: list[dict]) -> str:
    head = f"{'graph':<11} {'tasks':>10} {'workers':>7} {'plan s':>8} {'us/task':>8} " \
           f"{'B/task':>7} {'pinned':>10} {'groups':>7}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['graph']:<11} {r['tasks']:>10,} {r['workers']:>7} {r['plan_s']:>8.3f} "
            f"{r['us_per_task']:>8.2f} {r['peak_bytes_per_task']:>7.0f} {r['pinned']:>10,} "
            f"{r['groups']:>7}  {r['reason'] or ''}"
        )
    return "\n".join(lines)


def run(
    kinds: list[str], sizes: list[int], workers: list[int], repeat: int = 3
) -> list[dict]:
    rows = []
    total = len(kinds) * len(sizes) * len(workers)
    for kind in kinds:
        if kind not in GRAPHS:
            raise ValueError(f"unknown graph {kind!r}; choose from {sorted(GRAPHS)}")
        for n in sizes:
            for w in workers:
                print(f"[{len(rows) + 1}/{total}] {kind} {n:,} tasks {w} workers",
                      file=sys.stderr, flush=True)
                rows.append(measure(kind, n, w, repeat))
    return rows
