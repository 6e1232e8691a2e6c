"""Benchmark harness: run workloads under scheduling modes and compare them.

Every single run happens in its own Python subprocess with a fresh
``LocalCluster`` (processes, one thread per worker, no memory limit unless
``--memory-limit`` gives one), so runs cannot influence each other through
leftover state, warm caches or config.

Modes
-----
``default``
    Dask as shipped.
``no-queuing``
    ``distributed.scheduler.worker-saturation = inf`` (set before the
    cluster is created, so the scheduler picks it up).
``autorestrictor``
    :class:`autorestrictor.AutoRestrictor` registered right after the client
    connects, before any work is submitted.

Elastic workloads
-----------------
A workload may fix its own number of workers (``Workload.workers``, which
overrides ``--workers``), change the cluster while it computes
(``Workload.during``, run in a background thread; workers that join are
added to the RSS sampler and to every per-worker figure) or submit its
collections itself (``Workload.submit``, e.g. as two graphs at once), or
hand the cluster to Dask's own ``Adaptive`` (``Workload.adapt``: the
arguments of ``cluster.adapt``, applied before anything is submitted; see
:class:`_WorkerWatch` for what those rows add).  Every
row says how many tasks each worker computed (``tasks_per_worker``); rows of
workloads whose workers joined mid-run also say what the newcomers ran
(see :func:`_join_summary`).

Shaped links
------------
With a :class:`~autorestrictor.tools.link.Link` (``--link 1gbit``,
``--link-shape shared|per-worker``) every run's cluster talks over a shaped
network in private network namespaces that die with the run (see
:mod:`autorestrictor.tools.link`); rows carry the link and the rate a probe
measured on it.  Rows also give ``transfer_s``, the seconds workers spent
receiving data (``transfer_incoming_log``), and ``transfer_in_bytes``, what
they received in that time.

Memory
------
``peak_memory_bytes`` is the largest RSS any worker reached (sampled every
``RSS_INTERVAL_S``).  With ``--memory-limit SIZE`` (``memory_limit`` in the
Python API) every worker of every run, those of workloads with their own
worker count and those that join later included, gets that limit and Dask's
configured target, spill and pause fractions (and, under a nanny, the
terminate one); a run checks its workers have it.  A limit not well above
a worker's RSS before its data (90-100 MB here) over the pause fraction
leaves it paused for good, and the run hangs until ``--timeout``.

Every row, limit or not, says what the workers' spill buffers wrote to
disk during the compute (``spilled_bytes``, from each
:class:`distributed.spill.SpillBuffer`'s ``disk-write`` total; 0 without a
limit) and how many times a worker went into ``paused`` status
(``pauses``, see :class:`_PauseCounter`).  Rows of the ``autorestrictor``
mode also give ``predicted_bytes``, the bytes its applied plans predicted
would cross workers, to set beside ``transfer_in_bytes`` (``bytes_moved``
also counts the results the client gathers).

CPU
---
``cpu_s`` is the CPU time (user plus system) the scheduler, the client and
the workers spent during the compute, and ``cores`` the machine's CPU count.
When ``cpu_s`` is close to ``cores * wall_s`` the run was CPU-bound: no
placement makes it faster than ``cpu_s / cores`` without doing less work.

Python API: :func:`run_one`, :func:`run_bench`, :func:`format_table`,
:func:`check_checksums`.  CLI: ``python -m autorestrictor bench``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

from autorestrictor.tools.link import (
    SHAPES,
    Link,
    LinkError,
    check_support,
    child_prefix,
    namespaced_cluster,
    probe_link,
    shape_loopback,
    worker_logs,
)

logger = logging.getLogger(__name__)

MODES = ("default", "no-queuing", "autorestrictor")

#: Keys every result row has.
ROW_KEYS = (
    "workload",
    "mode",
    "workers",
    "scale",
    "repeat",
    "wall_s",
    "bytes_moved",
    "transfers",
    "p2p_bytes",
    "peak_memory_bytes",
    "peak_memory_per_worker",
    "max_share",
    "tasks",
    "tasks_per_worker",
    "plan_s",
    "checksum",
    "link",
    "transfer_s",
    "transfer_in_bytes",
    "cpu_s",
    "cores",
    "memory_limit",
    "spilled_bytes",
    "pauses",
    "predicted_bytes",
    "predicted_sizes_known",
    "warm_up",
)

#: Interval between RSS samples of the worker processes, in seconds.
RSS_INTERVAL_S = 0.025

#: Directory that contains the ``autorestrictor`` package; put on the
#: child's ``PYTHONPATH`` so runs work without installing the package.
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


class BenchError(RuntimeError):
    """A benchmark run failed (crash, timeout or unusable output)."""


class ChecksumMismatch(BenchError):
    """Two modes of the same workload computed different results."""


# --------------------------------------------------------------------------
# measurement helpers (run inside the child process)


class RssSampler:
    """Sample the resident set size of some processes in a background thread,
    and count the CPU seconds they spend while it runs.

    Parameters
    ----------
    pids : dict
        ``{label: pid}`` of the processes to watch.
    interval : float
        Seconds between samples.
    cpu_only : iterable of int
        More processes (the scheduler, the client) whose CPU seconds count
        but whose memory is not sampled.

    Attributes
    ----------
    cpu_seconds : float
        After the ``with`` block: user plus system CPU seconds of every
        watched process during it (a worker that joined meanwhile counts
        from its start).
    """

    def __init__(self, pids: dict[str, int], interval: float = RSS_INTERVAL_S,
                 cpu_only: Iterable[int] = ()):
        import psutil

        self.interval = interval
        self.procs = {label: psutil.Process(pid) for label, pid in pids.items()}
        self._cpu_only = [psutil.Process(pid) for pid in set(cpu_only) - set(pids.values())]
        self._cpu_start: dict[int, float] = {}
        self.cpu_seconds = 0.0
        self.times: list[float] = []
        self.rss: dict[str, list[int]] = {label: [] for label in pids}
        self.peak: dict[str, int] = {label: 0 for label in pids}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def add(self, pids: dict[str, int]) -> None:
        """Start watching more processes (workers that joined); labels already
        watched are ignored.  Their earlier samples read 0."""
        import psutil

        with self._lock:
            for label, pid in pids.items():
                if label not in self.procs:
                    self.procs[label] = psutil.Process(pid)
                    self.rss[label] = [0] * len(self.times)
                    self.peak[label] = 0

    def _sample(self) -> None:
        import psutil

        with self._lock:
            now = time.time()
            for label, proc in self.procs.items():
                try:
                    rss = proc.memory_info().rss
                except psutil.Error as exc:  # worker died: keep going, but say so
                    logger.warning("cannot sample RSS of worker %s: %s", label, exc)
                    rss = 0
                self.rss[label].append(rss)
                self.peak[label] = max(self.peak[label], rss)
            self.times.append(now)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _cpu(self) -> dict[int, float]:
        import psutil

        out = {}
        with self._lock:
            procs = [*self.procs.values(), *self._cpu_only]
        for proc in procs:
            try:
                t = proc.cpu_times()
            except psutil.Error as exc:  # gone: its CPU time is lost, say so
                logger.warning("cannot read the CPU time of process %d: %s", proc.pid, exc)
                continue
            out[proc.pid] = t.user + t.system
        return out

    def __enter__(self) -> RssSampler:
        self._cpu_start = self._cpu()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        end = self._cpu()
        self.cpu_seconds = sum(t - self._cpu_start.get(pid, 0.0) for pid, t in end.items())


def _transfer_counters(dask_worker) -> tuple[int, int, float]:
    """Outgoing transfer totals of one worker (run via ``client.run``).

    Returns the bytes and count of ordinary task-output transfers, and the
    bytes a P2P shuffle pushed through its comm buffers (which the ordinary
    counters do not see; this includes shards a worker sends to itself).
    """
    p2p = sum(
        value
        for key, value in dask_worker.digests_total.items()
        if isinstance(key, tuple)
        and key[0] == "p2p"
        and key[2:] == ("background-comms", "process", "bytes")
    )
    return (
        dask_worker.transfer_outgoing_bytes_total,
        dask_worker.transfer_outgoing_count_total,
        p2p,
    )


def _spilled_bytes(dask_worker) -> float:
    """Bytes one worker has written to disk so far (run via ``client.run``).

    The ``disk-write`` total of its :class:`distributed.spill.SpillBuffer`;
    0 when its data is not one (a worker without a memory limit keeps a
    plain dict).  P2P shuffles write their shards to disk through buffers of
    their own, which do not count here.
    """
    metrics = getattr(dask_worker.data, "cumulative_metrics", None)
    return metrics.get(("disk-write", "bytes"), 0.0) if metrics is not None else 0.0


def _worker_counters(dask_worker) -> tuple[int, int, float, float]:
    """:func:`_transfer_counters` and :func:`_spilled_bytes` of one worker
    (run via ``client.run``), in one tuple."""
    return (*_transfer_counters(dask_worker), _spilled_bytes(dask_worker))


class _PauseCounter(SchedulerPlugin):
    """Scheduler plugin of every run: counts, per worker, how many times it
    went into ``paused`` status.

    A worker that pauses (its memory manager sets ``worker.status =
    Status.paused``) tells the scheduler at once on its batched stream, in
    order with its other messages, and the scheduler's
    ``handle_worker_status_change`` logs one ``worker-status-change`` event
    per actual change, under the worker's address.  This plugin's
    ``log_event`` hook sees every event as it is published: a pause however
    short counts (no polling that could miss it), a run with more changes
    than the scheduler's per-topic event log keeps
    (``distributed.admin.low-level-log-length``) loses none, and the pauses
    of a worker that has left meanwhile still count.
    """

    name = "autorestrictor-bench-pauses"

    def __init__(self):
        self.pauses: dict[str, int] = {}

    def log_event(self, topic, msg) -> None:
        if (isinstance(msg, dict) and msg.get("action") == "worker-status-change"
                and msg.get("status") == "paused"):
            self.pauses[topic] = self.pauses.get(topic, 0) + 1


def _pause_counts(dask_scheduler=None) -> dict[str, int]:
    """``{worker address: pauses so far}`` from :class:`_PauseCounter` (run
    via ``client.run_on_scheduler``)."""
    plugin = dask_scheduler.plugins.get(_PauseCounter.name)
    return dict(plugin.pauses) if plugin is not None else {}


def _incoming_transfers(since: float, dask_worker=None) -> tuple[float, int]:
    """Seconds spent receiving data since ``since`` and the bytes received
    (run via ``client.run``; from the worker's ``transfer_incoming_log``)."""
    log = [t for t in dask_worker.transfer_incoming_log if t["start"] >= since]
    return sum(t["duration"] for t in log), sum(t["total"] for t in log)


def _compute_shares(stream: list[dict], workers: Iterable[str]) -> dict[str, float]:
    """Share of the total compute time spent on each worker."""
    busy = {w: 0.0 for w in workers}
    for rec in stream:
        for ss in rec["startstops"]:
            if ss["action"] == "compute":
                busy[rec["worker"]] = busy.get(rec["worker"], 0.0) + ss["stop"] - ss["start"]
    total = sum(busy.values())
    if total <= 0:
        return {w: 0.0 for w in busy}
    return {w: b / total for w, b in busy.items()}


def _task_counts(stream: list[dict], workers: Iterable[str]) -> dict[str, int]:
    """Number of tasks each worker computed (one task stream record per task)."""
    counts = {w: 0 for w in workers}
    for rec in stream:
        counts[rec["worker"]] = counts.get(rec["worker"], 0) + 1
    return dict(sorted(counts.items()))


def _join_summary(
    stream: list[dict], joins: dict[str, float], n_start: int, t0: float
) -> dict[str, Any]:
    """What the workers that joined mid-run ran, against a fair share of it.

    A task *remained* when a worker joined if its computation started at or
    after the moment the scheduler first listed that worker (task stream
    times, on the same clock as ``t0``).  The worker's *fair share* is the
    number of remaining tasks divided by the number of workers the cluster
    grew to (``n_start`` plus all joined workers): with one worker joining a
    cluster of 2, ``remaining / 3``.

    Parameters
    ----------
    stream : list of dict
        Task stream records, with worker names.
    joins : dict
        ``{worker name: seconds after t0 at which it joined}``.
    n_start : int
        Workers at the start.
    t0 : float
        ``time.time()`` at the start of the run.

    Returns
    -------
    dict
        ``joins``: ``{name: {"at_s", "ran", "remaining", "fair_share"}}``;
        ``joined_ran`` and ``joined_fair_share``: sums over the joined
        workers; ``joined_remaining``: tasks remaining at the first join.
    """
    starts = [
        min(ss["start"] for ss in rec["startstops"] if ss["action"] == "compute") - t0
        for rec in stream
        if any(ss["action"] == "compute" for ss in rec["startstops"])
    ]
    counts = _task_counts(stream, joins)
    first = min(joins, key=joins.get) if joins else None
    per_worker: dict[str, dict[str, float]] = {}
    for name, at in sorted(joins.items(), key=lambda kv: kv[1]):
        remaining = sum(1 for start in starts if start >= at)
        per_worker[name] = {
            "at_s": at,
            "ran": counts[name],
            "remaining": remaining,
            "fair_share": remaining / (n_start + len(joins)),
        }
    return {
        "joins": per_worker,
        "joined_ran": sum(j["ran"] for j in per_worker.values()),
        "joined_fair_share": sum(j["fair_share"] for j in per_worker.values()),
        "joined_remaining": per_worker[first]["remaining"] if per_worker else 0,
    }


#: Seconds between two looks at the scheduler's workers under ``Adaptive``.
WATCH_INTERVAL_S = 0.05


class _CountersAtClose(WorkerPlugin):
    """Worker plugin of the adaptive runs: when its worker closes (``Adaptive``
    retires it), write the worker's transfer totals and its incoming transfer
    log to ``directory`` as ``<pid>.json``, so that a retired worker's bytes
    (including the data it handed on as it retired) still count."""

    name = "autorestrictor-bench-counters"

    def __init__(self, directory: str):
        self.directory = directory

    def teardown(self, worker) -> None:
        record = {
            "address": worker.address,
            "counters": list(_worker_counters(worker)),
            "incoming": [[t["start"], t["duration"], t["total"]]
                         for t in worker.transfer_incoming_log],
        }
        path = os.path.join(self.directory, f"{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)


def _closed_counters(directory: str, addresses: Iterable[str], since: float,
                     timeout: float = 30.0) -> dict[str, tuple]:
    """What :class:`_CountersAtClose` wrote for the workers at ``addresses``
    (waiting up to ``timeout`` s for each): ``{address: (counters, (seconds,
    bytes) received since since)}``."""
    wanted, found = set(addresses), {}
    deadline = time.time() + timeout
    while True:
        for entry in os.scandir(directory):
            if entry.name.endswith(".json"):
                with open(entry.path) as f:
                    rec = json.load(f)
                if rec["address"] in wanted:
                    log = [(d, b) for start, d, b in rec["incoming"] if start >= since]
                    found[rec["address"]] = (
                        tuple(rec["counters"]),
                        (sum(d for d, _ in log), sum(b for _, b in log)),
                    )
        if wanted <= set(found) or time.time() > deadline:
            missing = wanted - set(found)
            if missing:
                logger.warning("no transfer totals from retired workers %s", sorted(missing))
            return found
        time.sleep(0.05)


def _stop_adapting(cluster, adaptive, timeout: float = 60.0) -> None:
    """Stop ``Adaptive`` and wait for a scaling step under way to finish (a
    retiring worker closes within it), so that the workers are settled."""
    cluster.loop.add_callback(adaptive.stop, reason="bench run done")
    deadline = time.time() + timeout
    while adaptive.periodic_callback is not None or getattr(adaptive, "_adapting", False):
        if time.time() > deadline:
            raise BenchError(f"Adaptive did not stop within {timeout} s")
        time.sleep(0.02)


class _WorkerWatch:
    """Look at the scheduler's workers every ``WATCH_INTERVAL_S`` while an
    adaptive cluster computes.

    Names every worker it sees (``names``, ``{address: "w<name>"}``, shared
    with the caller), adds newcomers to the RSS sampler, and notes the most
    workers at once and when each worker joined or left (seconds since
    ``t0``).  :meth:`stop` returns ``most_workers``, ``joins`` and ``leaves``.
    """

    def __init__(self, client, t0: float, sampler, names: dict[str, str]):
        self.client, self.t0, self.sampler, self.names = client, t0, sampler, names
        self.most = len(names)
        self.joins: dict[str, float] = {}
        self.leaves: dict[str, float] = {}
        self.seen = set(names)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-watch", daemon=True)
        self._thread.start()

    def _look(self) -> None:
        # Not client.scheduler_info(): the client's own periodic refresh of
        # that cache, without workers, can land between its fetch and return.
        info = self.client.sync(self.client.scheduler.identity, n_workers=-1)["workers"]
        now = time.time() - self.t0
        self.most = max(self.most, len(info))
        new = [addr for addr in info if addr not in self.seen]
        for addr in new:
            self.seen.add(addr)
            self.names[addr] = f"w{info[addr]['name']}"
            self.joins[self.names[addr]] = now
        for addr in self.seen - set(info):
            self.leaves.setdefault(self.names[addr], now)
        if new:
            try:
                pids = self.client.run(os.getpid, workers=new)
            except Exception as exc:  # noqa: BLE001 -- e.g. retired meanwhile
                logger.warning("cannot sample the RSS of workers %s: %s", new, exc)
            else:
                self.sampler.add({self.names[addr]: pid for addr, pid in pids.items()})

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._look()
                self._stop.wait(WATCH_INTERVAL_S)
        except BaseException as exc:  # noqa: BLE001 -- handed to the main thread
            self.error = exc

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise BenchError(f"watching the adaptive cluster failed: {self.error!r}") from (
                self.error
            )
        self._look()
        return {"most_workers": self.most, "joins": self.joins, "leaves": self.leaves}


class _During:
    """Run a workload's ``during`` hook in a background thread.

    After the hook returns, workers that joined meanwhile are added to the
    RSS sampler.  :meth:`join` waits for the thread and re-raises its error.
    """

    def __init__(self, hook, client, cluster, t0: float, scale: float, sampler, names):
        self.hook, self.client, self.cluster = hook, client, cluster
        self.t0, self.scale, self.sampler, self.names = t0, scale, sampler, names
        self.events: dict[str, Any] = {}
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bench-during", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.events = dict(self.hook(self.client, self.cluster, self.t0, self.scale) or {})
            info = self.client.scheduler_info(n_workers=-1)["workers"]
            new = {addr: f"w{info[addr]['name']}" for addr in info if addr not in self.names}
            if new:
                pids = self.client.run(os.getpid, workers=list(new))
                self.sampler.add({new[addr]: pid for addr, pid in pids.items()})
        except BaseException as exc:  # noqa: BLE001 -- handed to the main thread
            self.error = exc

    def join(self, timeout: float | None = None) -> dict[str, Any]:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise BenchError(f"the workload's 'during' hook did not finish within {timeout} s")
        if self.error is not None:
            raise BenchError(f"the workload's 'during' hook failed: {self.error!r}") from (
                self.error
            )
        return self.events


def _plan_summary(client, since: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    """Planning time and step-back reasons recorded by the plugin, its moves,
    and the bytes its plans predicted would cross workers; the first
    ``since`` plans and moves (those of a warm-up run) are left out.

    ``predicted_bytes`` sums the applied plans' predictions and the moves'
    (what each move's cut was expected to send); it is ``None``
    when the plugin applied no plan (a graph it left to Dask predicts
    nothing, and 0 would read as a prediction). ``predicted_sizes_known``
    says whether every output size was measured or learned when the plans
    were made; the table shows the prediction only then.
    """
    import autorestrictor

    plans = autorestrictor.last_plans(client)[since[0]:]
    moves = autorestrictor.last_rebalances(client)[since[1]:]
    applied = [p for p in plans if p.get("reason") is None]
    return {
        "plan_s": float(sum(p["plan_s"] for p in plans)),
        "predicted_bytes": (
            int(sum(p.get("predicted_bytes", 0) for p in applied)
                + sum(m.get("predicted_bytes", 0) for m in moves)) if applied else None),
        # every output size measured or learned when its plan was made (an
        # assumed size counts one byte: the prediction is then in outputs)
        "predicted_sizes_known": bool(applied) and all(
            not (p.get("sizes") or {}).get("assumed") for p in applied),
        "plans": len(plans),
        "plan_reasons": sorted({p["reason"] for p in plans if p.get("reason") is not None}),
        "rebalances": len(moves),
    }


@contextlib.contextmanager
def _cluster(workers: int, link: Link | None, memory_limit: int | None = None):
    """The run's cluster: a plain ``LocalCluster``, one on this namespace's
    shaped loopback (``shared``), or one worker namespace per worker
    (``per-worker``).  Every worker, including those that join later, gets
    ``memory_limit`` bytes (none if ``None``) and Dask's configured memory
    fractions.  Yields ``(cluster, address of the scheduler's host)``."""
    from distributed import LocalCluster

    if link is not None and link.shape == "per-worker":
        with namespaced_cluster(workers, link, memory_limit=memory_limit or 0) as cluster:
            yield cluster, cluster.scheduler.address.split("://")[1].rsplit(":", 1)[0]
        return
    host = shape_loopback(link) if link is not None else None
    with LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        memory_limit=memory_limit or 0,
        dashboard_address=None,
        host=host,
    ) as cluster:
        yield cluster, host


def _memory_limit_of(info: dict, asked: int | None) -> int | None:
    """The memory limit the workers in ``info`` (the scheduler's ``workers``)
    have, ``None`` for none; ``asked`` when there is no worker yet.

    Raises :class:`BenchError` unless every one has the limit asked for.
    """
    had = {addr: w.get("memory_limit") or 0 for addr, w in info.items()}
    wrong = {addr: limit for addr, limit in had.items() if limit != (asked or 0)}
    if wrong:
        raise BenchError(f"workers have memory limits {wrong}, not the {asked or 0} bytes "
                         "asked for (more than this machine's memory?)")
    return (next(iter(had.values())) or None) if had else asked


def _wait_for_workers(client, cluster, n: int, link: Link | None) -> None:
    """Wait until ``n`` workers have joined; on a timeout say what their logs say."""
    if n <= 0:  # a cluster that starts empty (Adaptive brings its workers)
        return
    try:
        client.wait_for_workers(n, timeout=120)
    except TimeoutError as exc:
        logs = worker_logs(cluster) if link is not None else ""
        raise BenchError(f"only {len(client.scheduler_info()['workers'])} of {n} workers "
                         f"joined within 120 s\n{logs}") from exc


def _deltas(before: dict, after: dict, paused_before: dict, paused_after: dict) -> dict:
    """The row's figures counted on the workers during the compute.

    Parameters
    ----------
    before, after : dict
        ``{worker address: _worker_counters(...)}`` before and after it (a
        worker missing from ``before`` joined meanwhile and counts from 0).
    paused_before, paused_after : dict
        :func:`_pause_counts` before and after it.
    """
    zero = (0, 0, 0.0, 0.0)

    def total(i):
        return sum(after[a][i] - before.get(a, zero)[i] for a in after)

    return {
        "bytes_moved": total(0),
        "transfers": total(1),
        "p2p_bytes": int(total(2)),
        "spilled_bytes": int(total(3)),
        "pauses": sum(paused_after.values()) - sum(paused_before.values()),
    }


def _workload_spec(workload: str, mode: str):
    """The :class:`~autorestrictor.tools.workloads.Workload` called ``workload``;
    ``ValueError`` for an unknown workload or mode."""
    from autorestrictor.tools.workloads import WORKLOADS

    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; known: {', '.join(WORKLOADS)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    return WORKLOADS[workload]


def _run_config(mode: str) -> dict[str, Any]:
    """Dask config of a run in ``mode``, set before its cluster starts."""
    config: dict[str, Any] = {
        # Keep every task of the run in the task stream.
        "distributed.scheduler.dashboard.tasks.task-stream-length": 1_000_000,
    }
    if mode == "no-queuing":
        config["distributed.scheduler.worker-saturation"] = float("inf")
    return config


def _register_plugins(client, cluster, mode: str, spec, stack: contextlib.ExitStack):
    """Before anything is submitted: the pause counter, the AutoRestrictor in
    its mode and, for an adaptive workload, :class:`_CountersAtClose` and
    Dask's ``Adaptive``.  Returns ``(adaptive, directory the retiring workers
    write to)``, both ``None`` for other workloads."""
    client.register_plugin(_PauseCounter())
    if mode == "autorestrictor":
        from autorestrictor import AutoRestrictor

        client.register_plugin(AutoRestrictor())
    if spec.adapt is None:
        return None, None
    closed_dir = stack.enter_context(
        tempfile.TemporaryDirectory(prefix="autorestrictor-bench-closed-"))
    client.register_plugin(_CountersAtClose(closed_dir))
    return cluster.adapt(**spec.adapt), closed_dir


def _warm_up(spec, client, scale: float, mode: str) -> tuple[int, int]:
    """Compute the workload once, unmeasured, and wait until the scheduler
    has forgotten every task of it (the measured run must find nothing in
    memory). Returns how many plans and moves the plugin has recorded."""
    _compute(spec, client, spec.build(scale, client))
    deadline = time.monotonic() + 60
    while client.run_on_scheduler(_n_tasks):
        if time.monotonic() > deadline:
            raise BenchError("the warm-up run's tasks were still on the scheduler after 60 s")
        time.sleep(0.05)
    if mode != "autorestrictor":
        return 0, 0
    import autorestrictor

    return (len(autorestrictor.last_plans(client)),
            len(autorestrictor.last_rebalances(client)))


def _n_tasks(dask_scheduler) -> int:
    return len(dask_scheduler.tasks)


def _compute(spec, client, collections: list) -> tuple[list, dict]:
    """Compute the workload's collections (through its ``submit`` hook, if it
    has one).  Returns the results and the extra row fields the hook gave."""
    if spec.submit is None:
        return client.compute(collections, sync=True), {}
    results = spec.submit(client, collections)
    if isinstance(results, dict):
        return results["results"], {k: v for k, v in results.items() if k != "results"}
    return results, {}


def _counters_after(client, names: dict, closed_dir: str | None,
                    t0: float) -> tuple[dict, list]:
    """After the compute: :func:`_worker_counters` of every worker and the
    ``(seconds, bytes)`` each received since ``t0``, including those of the
    workers in ``names`` that ``Adaptive`` retired meanwhile (what they wrote
    to ``closed_dir`` as they closed)."""
    after = client.run(_worker_counters)
    incoming = list(client.run(_incoming_transfers, t0).values())
    if closed_dir is not None:
        gone = set(names) - set(after)
        for addr, (counters, received) in _closed_counters(closed_dir, gone, t0).items():
            after[addr] = counters
            incoming.append(received)
    return after, incoming


def _event_fields(events: dict | None, stream: list[dict], workers: int,
                  t0: float) -> dict[str, Any]:
    """Row fields of a run whose cluster changed: its ``events``, the most
    workers at once and what the workers that joined ran."""
    if events is None:
        return {}
    out: dict[str, Any] = {"events": events}
    if "most_workers" in events:
        out["most_workers"] = events["most_workers"]
    if events.get("joins"):
        out.update(_join_summary(stream, events["joins"], workers, t0))
    return out


def _details(stream: list[dict], sampler: RssSampler, t0: float) -> dict[str, Any]:
    """The task stream (``"stream"``) and RSS samples (``"memory"``) of a
    run, in seconds since ``t0``."""
    from dask.utils import key_split

    return {
        "stream": [
            {
                "worker": rec["worker"],
                "key": str(rec["key"]),
                "prefix": key_split(rec["key"]),
                "startstops": [
                    {"action": ss["action"], "start": ss["start"] - t0, "stop": ss["stop"] - t0}
                    for ss in rec["startstops"]
                ],
            }
            for rec in stream
        ],
        "memory": {"t": [t - t0 for t in sampler.times], "rss": sampler.rss},
    }


def measure(
    workload: str,
    mode: str,
    workers: int,
    scale: float,
    details: bool = False,
    link: Link | None = None,
    memory_limit: int | None = None,
    warm_up: bool = False,
) -> dict[str, Any]:
    """Run one workload under one mode in a fresh cluster *in this process*.

    Prefer :func:`run_one`, which calls this in a subprocess.

    Parameters
    ----------
    workload : str
        Key of :data:`autorestrictor.tools.workloads.WORKLOADS`.
    mode : str
        One of :data:`MODES`.
    workers : int
        Number of single-threaded worker processes (the workload's own
        ``workers``, if it has one, wins).
    scale : float
        Data size multiplier passed to the workload.
    details : bool
        Also return the task stream (``"stream"``) and RSS samples
        (``"memory"``), with times in seconds since the compute started.
    link : Link, optional
        Run on this shaped link; this process must be in a network
        namespace of its own (:func:`run_one` starts it so).
    memory_limit : int, optional
        Bytes of memory each worker may use, with Dask's configured target,
        spill, pause (and, with a nanny, terminate) fractions; no limit by
        default.  Workers with a limit spill to disk (``spilled_bytes``) and
        pause (``pauses``).
    warm_up : bool
        First compute the workload once, unmeasured, on the same cluster
        and let its results go: the measured run is then the second graph
        of its kind, planned with the output sizes the plugin learned from
        the first. Workloads on an adaptive cluster (``adapt``) are never
        warmed up (``warm_up`` is False in their rows): the warm-up would
        leave the cluster grown.

    Returns
    -------
    dict
        One result row (see :data:`ROW_KEYS`).
    """
    import dask
    from distributed import Client, get_task_stream

    from autorestrictor.tools.workloads import checksum

    spec = _workload_spec(workload, mode)
    workers = spec.workers if spec.workers is not None else workers

    with contextlib.ExitStack() as stack, dask.config.set(_run_config(mode)), \
            _cluster(workers, link, memory_limit) as (cluster, host), \
            Client(cluster) as client:
        _wait_for_workers(client, cluster, workers, link)
        link_row = probe_link(client, link, host) if link is not None else None
        adaptive, closed_dir = _register_plugins(client, cluster, mode, spec, stack)

        info = client.scheduler_info(n_workers=-1)["workers"]
        limit = _memory_limit_of(info, memory_limit)
        names = {addr: f"w{info[addr]['name']}" for addr in info}
        pids = {names[addr]: pid for addr, pid in client.run(os.getpid).items()}
        cpu_only = [os.getpid(), client.run_on_scheduler(os.getpid)]
        warm_up = warm_up and spec.adapt is None
        seen = _warm_up(spec, client, scale, mode) if warm_up else (0, 0)
        before, paused_before = client.run(_worker_counters), client.run_on_scheduler(_pause_counts)

        with RssSampler(pids, cpu_only=cpu_only) as sampler, get_task_stream(client) as ts:
            t0 = time.time()
            collections = spec.build(scale, client)
            during = (_During(spec.during, client, cluster, t0, scale, sampler, names)
                      if spec.during else None)
            watch = _WorkerWatch(client, t0, sampler, names) if adaptive is not None else None
            results, extra = _compute(spec, client, collections)
            wall = time.time() - t0
            events = during.join(timeout=300) if during else None
            if adaptive is not None:
                _stop_adapting(cluster, adaptive)
                events = {**(events or {}), "adapt": spec.adapt, **watch.stop()}

        paused_after = client.run_on_scheduler(_pause_counts)
        after, incoming = _counters_after(client, names, closed_dir, t0)
        info = client.scheduler_info(n_workers=-1)["workers"]
        names.update({addr: f"w{info[addr]['name']}" for addr in info})
        plans = (_plan_summary(client, since=seen) if mode == "autorestrictor"
                 else {"plan_s": 0.0, "predicted_bytes": None,
                       "predicted_sizes_known": False})

    stream = [{**rec, "worker": names.get(rec["worker"], rec["worker"])} for rec in ts.data]
    shares = _compute_shares(stream, set(names.values()))
    row: dict[str, Any] = {
        "workload": workload,
        "mode": mode,
        "workers": workers,
        "scale": scale,
        "memory_limit": limit,
        "wall_s": wall,
        **_deltas(before, after, paused_before, paused_after),
        "peak_memory_bytes": max(sampler.peak.values(), default=0),
        "peak_memory_per_worker": dict(sorted(sampler.peak.items())),
        "max_share": max(shares.values()),
        "tasks": len(stream),
        "tasks_per_worker": _task_counts(stream, sorted(set(names.values()))),
        "checksum": checksum(results),
        "warm_up": warm_up,
        "link": link_row,
        "transfer_s": sum(seconds for seconds, _ in incoming),
        "transfer_in_bytes": sum(nbytes for _, nbytes in incoming),
        "cpu_s": sampler.cpu_seconds,
        "cores": os.cpu_count(),
        **plans,
        **extra,
        **_event_fields(events, stream, workers, t0),
    }
    if details:
        row.update(_details(stream, sampler, t0))
    return row


# --------------------------------------------------------------------------
# subprocess plumbing


def _end_run_on_sigterm() -> None:
    """In a run's subprocess, leader of its process group: on SIGTERM, kill the
    whole group at once (its cluster's processes, its namespace holders)."""
    if os.getpgid(0) == os.getpid():
        signal.signal(signal.SIGTERM, lambda *_: os.killpg(0, signal.SIGKILL))


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _parent_death_signal():
    """A ``preexec_fn`` that has Linux send the run SIGTERM when this process
    dies, however it dies (the run then ends its group: see
    :func:`_end_run_on_sigterm`); ``None`` where there is no ``prctl``.

    Linux sends it when the *thread* that started the run ends: call
    :func:`run_one` from a thread that outlives the run (the bench and the
    demo call it from their main thread).
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError) as exc:
        logger.info("no prctl here (%s): a run does not end with the bench that started it",
                    exc)
        return None
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _child_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the per-run subprocess: measure, write the row as JSON."""
    _end_run_on_sigterm()
    p = argparse.ArgumentParser(prog="autorestrictor-bench-child")
    p.add_argument("--workload", required=True)
    p.add_argument("--mode", required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--scale", type=float, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--details", action="store_true")
    p.add_argument("--link-rate", default=None)
    p.add_argument("--link-shape", default=None)
    p.add_argument("--memory-limit", type=int, default=None)
    p.add_argument("--warm-up", action="store_true")
    args = p.parse_args(argv)
    link = Link(args.link_rate, args.link_shape) if args.link_rate else None
    row = measure(args.workload, args.mode, args.workers, args.scale, details=args.details,
                  link=link, memory_limit=args.memory_limit, warm_up=args.warm_up)
    with open(args.out, "w") as f:
        json.dump(row, f)


def child_env() -> dict[str, str]:
    """The environment of a run's subprocess: this tree first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [_PACKAGE_PARENT, env.get("PYTHONPATH", "")] if p
    )
    return env


def child_command(
    workload: str,
    mode: str,
    workers: int,
    scale: float,
    out: str,
    *,
    details: bool = False,
    link: Link | None = None,
    memory_limit: int | None = None,
    warm_up: bool = False,
) -> list[str]:
    """The command line of one run's subprocess (see :func:`run_one`)."""
    cmd = [
        *child_prefix(link),
        sys.executable,
        "-c",
        "from autorestrictor.tools.bench import _child_main; _child_main()",
        "--workload", workload,
        "--mode", mode,
        "--workers", str(workers),
        "--scale", repr(float(scale)),
        "--out", out,
    ]
    if details:
        cmd.append("--details")
    if link is not None:
        cmd += ["--link-rate", link.rate, "--link-shape", link.shape]
    if memory_limit is not None:
        cmd += ["--memory-limit", str(int(memory_limit))]
    if warm_up:
        cmd.append("--warm-up")
    return cmd


def run_one(
    workload: str,
    mode: str,
    workers: int = 4,
    scale: float = 1.0,
    *,
    repeat: int = 0,
    details: bool = False,
    timeout: float | None = 1800,
    link: Link | None = None,
    memory_limit: int | str | None = None,
    warm_up: bool = False,
) -> dict[str, Any]:
    """Run one workload under one mode, in a subprocess with a fresh cluster.

    Parameters
    ----------
    workload, mode, workers, scale
        See :func:`measure`.
    repeat : int
        Repetition index, copied into the row.
    details : bool
        Include the task stream and RSS samples (see :func:`measure`).
    timeout : float or None
        Seconds before the run is killed and :class:`BenchError` raised.
    link : Link, optional
        Run on this shaped link: the subprocess starts in a network
        namespace of its own (``unshare --net``), which, with every
        namespace the run makes, dies with its process group.
    memory_limit : int or str, optional
        Memory limit of every worker, in bytes or as a size such as
        ``"300MB"`` (see :func:`parse_memory_limit`); none by default.
    warm_up : bool
        Compute the workload once, unmeasured, before the measured run (see
        :func:`measure`).

    Returns
    -------
    dict
        The result row.

    Raises
    ------
    BenchError
        If the subprocess fails or times out; the message carries the tail
        of its stderr.
    ValueError
        If ``memory_limit`` is not a size.
    """
    memory_limit = parse_memory_limit(memory_limit)
    with tempfile.TemporaryDirectory(prefix="autorestrictor-bench-") as tmp:
        out = os.path.join(tmp, "row.json")
        cmd = child_command(workload, mode, workers, scale, out, details=details, link=link,
                            memory_limit=memory_limit, warm_up=warm_up)
        what = f"{workload} / {mode} (workers={workers}, scale={scale}" + (
            f", link {link.label()}" if link else "") + (
            f", memory limit {memory_limit} bytes)" if memory_limit else ")")
        # A new session, so that on timeout the whole run -- including the
        # cluster's nanny and worker processes and the link's namespace
        # holders -- can be killed as a group.
        proc = subprocess.Popen(
            cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, preexec_fn=_parent_death_signal(),
        )
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise BenchError(f"run {what} timed out after {timeout} s") from exc
        except BaseException:  # e.g. Ctrl-C: the run must not outlive us
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        if proc.returncode != 0 or not os.path.exists(out):
            tail = "\n".join(stderr.strip().splitlines()[-30:])
            raise BenchError(f"run {what} failed (exit code {proc.returncode}):\n{tail}")
        with open(out) as f:
            row = json.load(f)
    row["repeat"] = repeat
    if mode == "autorestrictor" and not row.get("plans"):
        logger.warning("run %s: the AutoRestrictor plugin recorded no plans", what)
    return row


# --------------------------------------------------------------------------
# many runs, checks and the table


def parse_memory_limit(value: int | str | None) -> int | None:
    """A worker memory limit in bytes, from a size such as ``"300MB"`` or ``"2GiB"``
    (:func:`dask.utils.parse_bytes`) or a number of bytes.

    Parameters
    ----------
    value : int, str or None
        The limit; ``None`` for none.

    Returns
    -------
    int or None

    Raises
    ------
    ValueError
        If ``value`` is not a size, or not a positive one; the message names it.
    """
    from dask.utils import parse_bytes

    if value is None:
        return None
    if isinstance(value, str) and not value.strip():  # parse_bytes("") is 1 byte
        raise ValueError("memory limit '' is empty: give a size (e.g. 300MB, 2GiB)")
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(f"a {type(value).__name__}, not a number of bytes or a string")
        limit = parse_bytes(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"memory limit {value!r} is not a size (e.g. 300MB, 2GiB): "
                         f"{exc}") from exc
    if limit <= 0:
        raise ValueError(f"memory limit {value!r} is not a positive size (e.g. 300MB, 2GiB)")
    return int(limit)


def check_checksums(rows: Sequence[dict]) -> None:
    """Raise :class:`ChecksumMismatch` if a workload's rows disagree.

    Parameters
    ----------
    rows : sequence of dict
        Result rows (needs ``workload``, ``mode``, ``repeat``, ``checksum``).
    """
    seen: dict[str, dict[str, str]] = defaultdict(dict)
    for row in rows:
        seen[row["workload"]][f"{row['mode']}#{row.get('repeat', 0)}"] = row["checksum"]
    for workload, by_run in seen.items():
        if len(set(by_run.values())) > 1:
            detail = ", ".join(f"{run}={cs}" for run, cs in sorted(by_run.items()))
            raise ChecksumMismatch(
                f"checksum mismatch for workload {workload!r}: the modes computed "
                f"different results ({detail})"
            )


#: ``--memory-limit`` value that gives each workload its own limit.
PER_WORKLOAD = "per-workload"


def _limits(workloads: Sequence[str], memory_limit: int | str | None) -> dict[str, int | None]:
    """The memory limit of each workload's runs, in bytes (``None``: none).

    With :data:`PER_WORKLOAD`, each workload's own
    (:data:`autorestrictor.tools.workloads.MEMORY_LIMITS`); those that have
    none are left out, and the bench says so once on stderr.

    Raises
    ------
    ValueError
        For a limit that is not a positive size or is more than this
        machine has, or when no workload asked for has a limit of its own.
    """
    from autorestrictor.tools.workloads import MEMORY_LIMITS

    if memory_limit != PER_WORKLOAD:
        limit = parse_memory_limit(memory_limit)
        _check_limit_fits(limit)
        return dict.fromkeys(workloads, limit)
    own = {w: parse_memory_limit(MEMORY_LIMITS[w]) for w in workloads if w in MEMORY_LIMITS}
    if not own:
        raise ValueError(f"--memory-limit {PER_WORKLOAD}: none of {', '.join(workloads)} "
                         f"has a limit of its own")
    for limit in own.values():
        _check_limit_fits(limit)
    left_out = [w for w in workloads if w not in own]
    if left_out:
        print(f"--memory-limit {PER_WORKLOAD}: left out {', '.join(left_out)}, which "
              f"Dask's default does not spill without pausing at any size tried",
              file=sys.stderr)
    return own


def _check_limit_fits(memory_limit: int | None) -> None:
    """Raise ``ValueError`` for a memory limit above this machine's memory
    (or its cgroup's): Dask would quietly lower it to that."""
    from distributed.system import MEMORY_LIMIT

    if memory_limit is not None and memory_limit > MEMORY_LIMIT:
        raise ValueError(f"memory limit {memory_limit} bytes is more than the "
                         f"{MEMORY_LIMIT} bytes this machine has: Dask would lower it")


class _Progress:
    """Minimal one-line progress report on stderr."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.enabled = total, 0, enabled
        self.start = time.time()

    def step(self, label: str) -> None:
        self.done += 1
        if self.enabled:
            elapsed = time.time() - self.start
            print(f"[{self.done}/{self.total}] {label} ... ({elapsed:.0f} s elapsed)",
                  file=sys.stderr, flush=True)


def _write_json(path: str | os.PathLike, rows: list[dict]) -> None:
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)


def run_bench(
    workloads: Sequence[str] | None = None,
    modes: Sequence[str] = MODES,
    workers: int = 4,
    scale: float = 1.0,
    repeat: int = 1,
    json_path: str | os.PathLike | None = None,
    progress: bool = True,
    timeout: float | None = 1800,
    link: Link | None = None,
    memory_limit: int | str | None = None,
    warm_up: bool = False,
) -> list[dict]:
    """Run every (workload, mode, repetition), each in a fresh cluster.

    Modes of one repetition run back to back, so slow drifts of a noisy
    machine hit all modes alike.  Checksums are checked after each workload.

    Parameters
    ----------
    workloads : sequence of str, optional
        Workload names; all of them by default.
    modes : sequence of str
        Modes to compare.
    workers : int
        Worker processes per cluster.
    scale : float
        Data size multiplier.
    repeat : int
        Repetitions per (workload, mode).
    json_path : path, optional
        Rows are written here (as a JSON list) after every completed workload.
    progress : bool
        Print ``[i/n] workload mode ...`` lines on stderr.
    timeout : float or None
        Per-run timeout in seconds.
    link : Link, optional
        Run every cluster on this shaped link (see :func:`run_one`).
    memory_limit : int or str, optional
        Give every worker of every run this memory limit, in bytes or as a
        size such as ``"300MB"`` (workloads with their own worker count
        too); none by default. ``"per-workload"``: each workload's own
        (:data:`~autorestrictor.tools.workloads.MEMORY_LIMITS`); those
        without one are left out, and the bench says so.
    warm_up : bool
        Before each measured run, compute the workload once on the same
        cluster (see :func:`measure`).

    Returns
    -------
    list of dict
        One row per run.

    Raises
    ------
    ChecksumMismatch
        If two runs of one workload computed different results.
    BenchError
        If a run fails.
    LinkError
        Before any run, if this machine cannot build the link.
    ValueError
        Before any run, for an unknown workload or mode, a repeat below 1
        or a memory limit that is not a positive size.
    """
    from autorestrictor.tools.workloads import WORKLOADS

    workloads = list(workloads) if workloads else list(WORKLOADS)
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; known: {', '.join(WORKLOADS)}")
    bad_modes = [m for m in modes if m not in MODES]
    if bad_modes:
        raise ValueError(f"unknown mode(s) {bad_modes}; known: {', '.join(MODES)}")
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    limits = _limits(workloads, memory_limit)
    workloads = list(limits)
    if link is not None:
        check_support(link)

    bar = _Progress(len(workloads) * len(modes) * repeat, enabled=progress)
    rows: list[dict] = []
    for workload in workloads:
        these = []
        for r in range(repeat):
            for mode in modes:
                bar.step(f"{workload} {mode}" + (f" (repeat {r + 1})" if repeat > 1 else ""))
                these.append(run_one(workload, mode, workers, scale, repeat=r, timeout=timeout,
                                     link=link, memory_limit=limits[workload],
                                     warm_up=warm_up))
        check_checksums(these)
        rows.extend(these)
        if json_path is not None:
            _write_json(json_path, rows)
    return rows


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ratio(value: float | None, base: float | None, floor: float = 0.0) -> str:
    """``value / base``; "-" when either is missing or the base is at most
    ``floor`` (a ratio to next to nothing says nothing)."""
    if value is None or base is None:
        return "-"
    if base <= floor:
        return "1.00x" if value == base else "-"
    return f"{value / base:.2f}x"


def link_label(row: dict) -> str:
    """``"1gbit per-worker"`` for a row run on a shaped link, else ``"-"``."""
    link = row.get("link")
    return f"{link['rate']} {link['shape']}" if link else "-"


def limit_label(row: dict) -> str:
    """``"300 MB"`` for a row whose workers had a memory limit, else ``"-"``."""
    limit = row.get("memory_limit")
    return f"{limit / 1e6:g} MB" if limit else "-"


#: A group of rows in the table: ``(workload, link label, limit label, mode)``.
_Group = tuple[str, str, str, str]


def _where(link: str, limit: str) -> str:
    """`` / 1gbit per-worker / limit 300 MB`` for the note lines ("" for neither)."""
    return (f" / {link}" if link != "-" else "") + (f" / limit {limit}" if limit != "-" else "")


def _link_notes(groups: dict[_Group, list[dict]]) -> list[str]:
    """One line per shaped link: what the probes measured, and the workers'
    receiving throughput (bytes received over seconds spent receiving)."""
    lines = []
    for label in dict.fromkeys(link for _, link, _, _ in groups if link != "-"):
        rows = [r for (_, link, _, _), rs in groups.items() if link == label for r in rs]
        probe = _median([r["link"].get("probe_bytes_per_s") for r in rows])
        received = sum(r.get("transfer_in_bytes") or 0 for r in rows)
        seconds = sum(r.get("transfer_s") or 0 for r in rows)
        line = f"link {label}: probe {probe / 1e6:.0f} MB/s (median)"
        if seconds > 0:
            line += f"; transfers received at {received / seconds / 1e6:.0f} MB/s overall"
        lines.append(line)
    return lines


def _tasks_notes(groups: dict[_Group, list[dict]]) -> list[str]:
    """Note lines with the median tasks per worker, for the elastic workloads only.

    Rows of adaptive workloads also get the most workers the cluster had at
    once; rows of workloads with workers that joined mid-run, what the
    newcomers ran against their fair share (see :func:`_join_summary`).
    """
    from autorestrictor.tools.workloads import ELASTIC_WORKLOADS

    lines = []
    for (workload, link, limit, mode), rows in groups.items():
        counts = [r["tasks_per_worker"] for r in rows if r.get("tasks_per_worker")]
        if workload not in ELASTIC_WORKLOADS or not counts:
            continue
        names = sorted({name for c in counts for name in c}, key=lambda n: (len(n), n))
        per_worker = " ".join(
            f"{name}={_median([c.get(name, 0) for c in counts]):g}" for name in names
        )
        line = f"tasks per worker, {workload} / {mode}{_where(link, limit)}: {per_worker}"
        most = _median([r.get("most_workers") for r in rows])
        if most is not None:
            line += f"; most workers {most:g}"
        ran = _median([r.get("joined_ran") for r in rows])
        if ran is not None:
            fair = _median([r.get("joined_fair_share") for r in rows])
            left = _median([r.get("joined_remaining") for r in rows])
            line += f"; joined ran {ran:g} (fair share {fair:.1f} of {left:g} remaining)"
        lines.append(line)
    return lines


def _mb(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value / 1e6:.{digits}f}"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _table_line(groups: dict[_Group, list[dict]], key: _Group, link_col: bool,
                limit_col: bool, memory_cols: bool) -> list[str]:
    """The cells of one group's line of :func:`format_table`: medians of its
    rows, then ratios to the ``default`` rows of the same workload, link and
    memory limit."""
    workload, link, limit, mode = key

    def med(name, of=key):
        return _median([r.get(name) for r in groups.get(of, [])])

    def ratio(name, floor=0.0):
        return _ratio(med(name), med(name, (workload, link, limit, "default")), floor)

    share = med("max_share")
    memory = [_mb(med("spilled_bytes")), _count(med("pauses"))] if memory_cols else []
    return [
        workload,
        *([link] if link_col else []),
        *([limit] if limit_col else []),
        mode,
        str(len(groups[key])),
        f"{med('wall_s'):.2f}",
        _seconds(med("cpu_s")),
        _mb(med("bytes_moved")),
        *([_mb(med("predicted_bytes")), _mb(med("transfer_in_bytes"))]
          if mode == "autorestrictor" and all(r.get("predicted_sizes_known")
                                              for r in groups[key])
          else ["-", "-"]),
        f"{med('transfers'):.0f}",
        _mb(med("peak_memory_bytes"), 0),
        *memory,
        "-" if share is None else f"{share:.2f}",
        f"{1e3 * med('plan_s'):.1f}",
        "-" if mode != "autorestrictor" else _count(med("rebalances")),
        ratio("bytes_moved", floor=1e6),
        ratio("wall_s"),
        ratio("peak_memory_bytes"),
        *([ratio("spilled_bytes", floor=1e6), ratio("pauses")] if memory_cols else []),
    ]


def _aligned(lines: list[list[str]], n_text: int) -> list[str]:
    """Lines of cells as text columns, a rule under the first; the first
    ``n_text`` columns left-aligned, the others right-aligned."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for i, line in enumerate(lines):
        cells = [c.ljust(w) if j < n_text else c.rjust(w)
                 for j, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def _column_notes(rows: Sequence[dict], with_link: bool, limits: set[str]) -> list[str]:
    """The lines under the table that say what its columns are."""
    memory = limits != {"-"}
    out = [f"ratios (bytes, wall, peak{', spill, pause' if memory else ''}) are medians "
           "relative to mode 'default'"
           + (" on the same link" if with_link else "")
           + (" with the same memory limit" if memory else "")
           + "; max share 1/workers is perfect balance"]
    cores = _median([r.get("cores") for r in rows])
    if cores:
        out.append(f"cpu s: CPU seconds of scheduler, client and workers; a run with cpu s "
                   f"near {cores:.0f} cores x wall s was CPU-bound")
    if any(r["mode"] == "autorestrictor" for r in rows):
        out.append("pred MB: bytes the plugin's applied plans predicted would cross workers, "
                   "shown where every size was known when they were made; got MB: what the "
                   "workers received from each other (MB moved also counts what the client "
                   "gathered); moves: the plugin's rebalancing moves")
    if memory:
        one = f"memory limit {next(iter(limits))} per worker" if len(limits) == 1 else (
            "limit: memory limit per worker")
        out.append(f"{one}, with Dask's own target/spill/pause fractions")
        out.append("spilled MB: bytes the workers' spill buffers wrote to disk; pauses: times "
                   "a worker went into paused status")
    return out


def format_table(rows: Sequence[dict]) -> str:
    """Plain-text table of medians per (workload, mode), with ratios vs ``default``.

    Rows run on a shaped link, or with a worker memory limit, are compared
    with the ``default`` rows on the same link and with the same limit.
    When any row had a memory limit the table also shows the bytes spilled
    to disk and the pauses.  Note lines below the table give the median
    tasks per worker of the elastic workloads and the bytes P2P shuffles
    pushed.

    Parameters
    ----------
    rows : sequence of dict
        Result rows from :func:`run_bench` / :func:`run_one`.

    Returns
    -------
    str
        The table.

    Raises
    ------
    ChecksumMismatch
        If the rows of one workload disagree on the checksum.
    """
    check_checksums(rows)
    groups: dict[_Group, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["workload"], link_label(row), limit_label(row), row["mode"])].append(row)
    with_link = any(link != "-" for _, link, _, _ in groups)
    limits = {limit for _, _, limit, _ in groups}
    memory, limit_col = limits != {"-"}, len(limits) > 1
    header = ["workload", *(["link"] if with_link else []), *(["limit"] if limit_col else []),
              "mode", "n", "wall s", "cpu s", "MB moved", "pred MB", "got MB", "transfers",
              "peak MB",
              *(["spilled MB", "pauses"] if memory else []), "max share", "plan ms",
              "moves", "bytes", "wall", "peak", *(["spill", "pause"] if memory else [])]
    lines = [header, *(_table_line(groups, key, with_link, limit_col, memory) for key in groups)]
    out = _aligned(lines, n_text=2 + with_link + limit_col)
    out.extend(_column_notes(rows, with_link, limits))
    out.extend(_link_notes(groups))
    out.extend(_tasks_notes(groups))
    for (workload, link, limit, mode), these in groups.items():
        p2p = _median([r.get("p2p_bytes") for r in these])
        if p2p:
            out.append(f"note: {workload} / {mode}{_where(link, limit)} also pushed "
                       f"{p2p / 1e6:.1f} MB through P2P shuffle comms (not in 'MB moved'; "
                       "includes shards sent to self)")
    return "\n".join(out)


@contextlib.contextmanager
def _sigterm_exits():
    """Turn SIGTERM into ``SystemExit`` while the bench runs, so that the run
    under way is killed with its whole group (see :func:`run_one`)."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(args: argparse.Namespace) -> int:
    """Run the ``bench`` subcommand; returns the process exit code."""
    workloads = [w for w in args.workloads.split(",") if w] if args.workloads else None
    modes = [m for m in args.modes.split(",") if m]
    try:
        link = Link(args.link, args.link_shape) if args.link else None
        with _sigterm_exits():
            rows = run_bench(
                workloads,
                modes,
                workers=args.workers,
                scale=args.scale,
                repeat=args.repeat,
                json_path=args.json,
                timeout=args.timeout,
                link=link,
                memory_limit=args.memory_limit,
                warm_up=args.warm_up,
            )
    except (BenchError, LinkError, ValueError) as exc:  # includes ChecksumMismatch
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_table(rows))
    if args.json:
        print(f"rows written to {args.json}", file=sys.stderr)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``parser``."""
    parser.add_argument("--workloads", default=None,
                        help="comma-separated workload names (default: all)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated modes (default: {','.join(MODES)})")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--scale", type=float, default=1.0, help="data size multiplier (default 1)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per (workload, mode); the table shows medians")
    parser.add_argument("--json", default=None, help="write all rows to this JSON file")
    parser.add_argument("--timeout", type=float, default=1800, help="per-run timeout in seconds")
    parser.add_argument("--memory-limit", metavar="SIZE", default=None,
                        help="memory limit of every worker, e.g. 300MB, with Dask's own "
                             "target/spill/pause/terminate fractions (default: none); rows "
                             f"report bytes spilled to disk and pauses. '{PER_WORKLOAD}': "
                             "each workload's own, at which Dask's default spills some "
                             "but does not pause")
    parser.add_argument("--warm-up", action="store_true",
                        help="compute each workload once, unmeasured, on the same cluster "
                             "before the measured run: the plugin then plans with the output "
                             "sizes it learned, and the table shows its prediction of the "
                             "bytes moved (adaptive clusters are not warmed up)")
    add_link_arguments(parser)


def add_link_arguments(parser: argparse.ArgumentParser) -> None:
    """``--link RATE`` and ``--link-shape`` (the bench's and the demo's)."""
    parser.add_argument("--link", metavar="RATE", default=None,
                        help="run every cluster on a network shaped to this tc rate, e.g. 1gbit "
                             "(needs root; private network namespaces, gone after the run)")
    parser.add_argument("--link-shape", choices=SHAPES, default="per-worker",
                        help="per-worker: one link per worker, joined by a bridge; shared: one "
                             "link for the whole cluster (default per-worker)")
