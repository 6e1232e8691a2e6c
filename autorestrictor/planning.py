"""A graph's way through the plugin: read, plan, pin, record; now or when workers join.

:func:`plan_graph` handles a new graph in the scheduler's ``update_graph``.
A graph that arrives while fewer than two workers run (an adaptive cluster
before it scales up) has nothing to choose between; it is kept
(``State.deferred``) and :func:`late_plans` plans the part of it that has
not started once workers have joined, with the same planner, admission and
records. Called by the plugin's hooks only; the changes go through
:mod:`autorestrictor.actions`.
"""

from __future__ import annotations

import dataclasses
import logging
from time import perf_counter

from autorestrictor import actions, datamap, intake, membership, records, spilling
from autorestrictor.planner import Plan, plan
from autorestrictor.state import Batch, Deferred, State

#: Task states a late plan may pin: not started. (A new graph's tasks are
#: all ``released``; by the time workers join, Dask has queued its roots,
#: and the tasks that read them wait.)
LATE = frozenset({"released", "waiting", "queued", "no-worker"})


def plan_graph(scheduler, st: State, keys: list, annotations: dict) -> bool:
    """Plan a new graph and pin it; keep it for later if too few workers run.

    Returns whether roots were held (the caller then schedules a release).
    Nothing raised here reaches the scheduler: a failure leaves the graph to
    Dask and is recorded.
    """
    start = perf_counter()
    st.n_plans += 1
    timing: dict[str, float] = {}  # seconds of each part, in the plan's record
    try:
        p, tss = _plan(scheduler, st, keys, annotations, timing)
    except Exception as e:  # the planner must never break a computation
        records.plan_record(scheduler, st, {
            "n_tasks": len(keys), "reason": f"planning failed: {e!r}"},
            start, level=logging.WARNING, exc_info=e)
        return False
    if not p.applied:
        summary = p.summary()
        if len(scheduler.running) < 2 and p.n_tasks >= st.options.min_tasks:
            st.deferred.append(Deferred(list(keys), annotations, st.n_plans))
            summary["reason"] += "; planned again once workers join"
        level = logging.DEBUG if "min-tasks" in (p.reason or "") else logging.INFO
        records.plan_record(scheduler, st, summary, start, level=level)
        return False
    why = _memory_verdict(scheduler, st, p, tss)
    if why is not None:
        summary = {**p.summary(), "n_pinned": 0, "pinned_per_worker": {}, "reason": why}
        records.plan_record(scheduler, st, summary, start)
        return False
    return _apply_and_record(scheduler, st, p, tss, timing, start, {})


def _memory_verdict(scheduler, st: State, p: Plan, tss: list) -> str | None:
    """While a worker has data on disk, a plan that would hold more open
    results than Dask's default is not applied (:mod:`autorestrictor.spilling`).
    The prediction costs a pass over the graph, made only then."""
    on_disk = [a for a, ws in scheduler.workers.items() if ws.memory.spilled > 0]
    if not on_disk:
        return None
    deps, at, rank, workers = intake.planned_work(scheduler, tss, p.assignment)
    plan_peak, default_peak = datamap.peaks(deps, workers, at, rank)
    return spilling.verdict(on_disk, float(plan_peak.max()), float(default_peak.max()),
                            st.options.memory_tolerance, what="this graph's plan")


def late_plans(scheduler, st: State) -> bool:
    """Plan the unstarted part of each graph kept for want of workers.

    Called once workers have joined (at least two running). Tasks Dask has
    queued are taken back from its queue once pinned; tasks already sent to
    a worker, or done, stay where they are and count as located. A graph
    with nothing left to pin is dropped. Returns whether roots were held.
    """
    if len(scheduler.running) < 2:
        return False
    held = False
    while st.deferred:
        d = st.deferred.popleft()
        keys = [k for k in d.keys if k in scheduler.tasks]
        if not keys:
            continue
        start = perf_counter()
        st.n_plans += 1
        timing: dict[str, float] = {}
        extra = {"late": d.id, "note": f"planned when workers joined (graph {d.id} "
                                      "arrived with fewer than two workers)"}
        try:
            p, tss = _plan(scheduler, st, keys, d.annotations, timing, states=LATE)
        except Exception as e:
            records.plan_record(scheduler, st, {
                "n_tasks": len(keys), "reason": f"planning failed: {e!r}", **extra},
                start, level=logging.WARNING, exc_info=e)
            continue
        if not p.applied:
            records.plan_record(scheduler, st, {**p.summary(), **extra}, start)
            continue
        held |= _apply_and_record(scheduler, st, p, tss, timing, start, extra, late=True)
    return held


def _plan(scheduler, st: State, keys: list, annotations: dict, timing: dict,
          states: frozenset = frozenset({"released"})) -> tuple[Plan, list]:
    """The plan for ``keys``, and the tasks it was read from (in the order
    of the plan's nodes)."""
    t0 = perf_counter()
    # Forget the units of earlier graphs that have run (and their pins)
    # first: what is still pinned is work waiting on each worker (``busy``),
    # and a finished graph's would weigh on this plan.
    membership.prune(scheduler, st)
    t1 = perf_counter()
    timing["prune_s"] = t1 - t0
    inputs = intake.read_graph(scheduler, keys, annotations, st, states=states)
    timing["read_s"] = perf_counter() - t1
    p = plan(**inputs.plan_kwargs(), **dataclasses.asdict(st.options))
    return dataclasses.replace(p, sizes=inputs.sizes.counts()), inputs.tasks


def _apply_and_record(scheduler, st: State, p: Plan, tss: list, timing: dict,
                      start: float, extra: dict, late: bool = False) -> bool:
    try:
        held = apply_plan(scheduler, st, p, tss, timing, late=late)
    except Exception as e:
        records.plan_record(scheduler, st, {
            **p.summary(), "reason": f"applying failed: {e!r}", **extra},
            start, level=logging.WARNING, exc_info=e)
        return False
    records.plan_record(scheduler, st, {**p.summary(), **timing, **extra}, start)
    st.last_plan, st.last_plan_id = p, st.n_plans
    return held


def apply_plan(scheduler, st: State, p: Plan, tss: list, timing: dict,
               late: bool = False) -> bool:
    """Pin the plan (all or nothing), queue its roots, and record its units.

    The first roots are released on the next tick of the event loop, once
    the scheduler has moved them to ``no-worker``. A late plan's tasks that
    Dask had queued or parked are handed to the scheduler again, pinned.
    Returns whether roots were held.
    """
    t0 = perf_counter()
    held = actions.pin_plan(list(map(tss.__getitem__, p.nodes.tolist())),
                            p.worker_of.tolist(), p.workers, st.admission,
                            getattr(scheduler, "is_rootish", None),
                            st.options.admission_max_readers)
    if late:
        actions.reschedule(scheduler, p.keys)
    for addr, roots in zip(p.workers, held):
        st.queues.hold_tasks(addr, roots)
    t1 = perf_counter()
    timing["pin_s"] = t1 - t0
    # The units are built when first needed (a rebalance, a worker that
    # leaves, the dashboard): most graphs never need them.
    st.batches.append(Batch(scheduler.tasks, p.keys, p.units, p.worker_of, p.piece_of,
                            st.n_pieces, p.workers))
    st.n_pieces += int(p.piece_of.max(initial=-1)) + 1
    timing["units_s"] = perf_counter() - t1
    return any(held)
