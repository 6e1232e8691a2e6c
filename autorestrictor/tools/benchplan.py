"""``python -m autorestrictor bench-plan``: the planner alone, at scale.

Times :func:`autorestrictor.plan` on synthetic graphs (plain mappings, no
cluster) and reports seconds and peak memory per task, so that the cost the
plugin adds to the scheduler's event loop can be read off for any graph
size. Memory is the peak of Python allocations during ``plan()``
(``tracemalloc``, which numpy reports to), beyond the input mappings.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import tracemalloc

from autorestrictor.planner import plan
from autorestrictor.tools.synthetic import GRAPHS


def measure(kind: str, n_tasks: int, n_workers: int, repeat: int = 3) -> dict:
    """Plan one synthetic graph ``repeat`` times; return the medians."""
    deps, nbytes = GRAPHS[kind](n_tasks)
    priority = {k: i for i, k in enumerate(deps)}
    workers = {
        f"tcp://10.{i // 65536}.{i // 256 % 256}.{i % 256}:8786": 1 for i in range(n_workers)
    }
    times = []
    result = None
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = plan(deps, workers, nbytes=nbytes, priority=priority)
        _ = result.assignment  # building the key -> worker mapping is part of the cost
        times.append(time.perf_counter() - start)
    gc.collect()
    tracemalloc.start()
    _ = plan(deps, workers, nbytes=nbytes, priority=priority).assignment
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


def update_graph_share(n_chunks: int = 150_000, n_workers: int = 4) -> dict:
    """The plugin's share of the scheduler's own ``update-graph`` time.

    Submits ``da.ones(n_chunks, chunks=1).sum()`` (about ``4/3 n_chunks``
    tasks) to an in-process scheduler with the plugin, reads the
    ``update-graph`` event the scheduler logs (its ``duration_seconds``
    covers materialisation, ordering and state creation, which includes the
    plugin), then cancels the computation.
    """
    import dask.array as da
    from distributed import Client, LocalCluster

    from autorestrictor.plugin import AutoRestrictor

    with LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=False,
        # No memory limit: these in-process workers share the scheduler's
        # RSS, and a graph of millions of tasks would pause them all.
        memory_limit=0, dashboard_address=None,
    ) as cluster, Client(cluster) as client:
        client.register_plugin(AutoRestrictor())
        scheduler = cluster.scheduler
        fut = client.compute(da.ones(n_chunks, chunks=1).sum())
        deadline = time.monotonic() + 600
        while not _graph_event(scheduler) and time.monotonic() < deadline:
            time.sleep(0.05)
        metrics = _graph_event(scheduler)
        plugin = scheduler.plugins["autorestrictor"]
        record = plugin.history[-1]
        client.cancel(fut)
    if metrics is None:
        raise RuntimeError("the scheduler logged no update-graph event within 600 s")
    return {
        "tasks": record["n_tasks"],
        "scheduler_update_graph_s": metrics["duration_seconds"],
        "plugin_s": record["total_s"],
        # the plugin's parts: reading the tasks, planning, pinning and
        # queueing the roots, recording the units
        **{part: record.get(part, float("nan"))
           for part in ("prune_s", "read_s", "plan_s", "pin_s", "units_s")},
        "share": record["total_s"] / metrics["duration_seconds"],
        "reason": record["reason"],
    }


def _graph_event(scheduler) -> dict | None:
    for _, msg in reversed(scheduler.get_events("scheduler")):
        if isinstance(msg, dict) and msg.get("action") == "update-graph" and "metrics" in msg:
            return msg["metrics"]
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--graphs", default="reduction,chains,halo,all-to-all",
                        help=f"comma-separated graph kinds, from {sorted(GRAPHS)}")
    parser.add_argument("--sizes", default="10000,233333,2333333",
                        help="comma-separated approximate task counts")
    parser.add_argument("--workers", default="100,1000",
                        help="comma-separated worker counts")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; medians shown")
    parser.add_argument("--update-graph", type=int, default=0, metavar="CHUNKS",
                        help="also submit a graph of about 4/3 CHUNKS tasks to a real "
                             "scheduler and report the plugin's share of update-graph")
    parser.add_argument("--only-update-graph", action="store_true",
                        help="skip the planner table: only the --update-graph runs "
                             "(--repeat of them; the median share is shown)")
    parser.add_argument("--json", default=None, help="write the rows to this file")


def main(args: argparse.Namespace) -> int:
    if args.only_update_graph and not args.update_graph:
        raise SystemExit("--only-update-graph needs --update-graph CHUNKS")
    out: dict = {}
    if not args.only_update_graph:
        rows = run(
            args.graphs.split(","),
            [int(x) for x in args.sizes.split(",")],
            [int(x) for x in args.workers.split(",")],
            args.repeat,
        )
        print(format_rows(rows))
        out["planner"] = rows
    if args.update_graph:
        shares = []
        for _ in range(args.repeat if args.only_update_graph else 1):
            share = update_graph_share(args.update_graph)
            shares.append(share)
            print(
                f"update-graph of {share['tasks']:,} tasks: "
                f"scheduler {share['scheduler_update_graph_s']:.2f} s, "
                f"plugin {share['plugin_s']:.3f} s (forgetting finished graphs "
                f"{share['prune_s']:.3f} s, reading {share['read_s']:.3f} s, "
                f"planning {share['plan_s']:.3f} s, pinning {share['pin_s']:.3f} s, "
                f"units {share['units_s']:.3f} s): "
                f"{share['share']:.1%} of the scheduler's own time"
                + (f"; the plugin stepped back: {share['reason']}" if share["reason"] else ""),
                flush=True)
        out["update_graph"] = shares
        if len(shares) > 1:
            print(f"median share: {statistics.median(s['share'] for s in shares):.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 0
