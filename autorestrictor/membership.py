"""Workers that leave, pause or are gone, and units that are done.

Pinned work never waits for a worker that will not run it: a departed
worker's pieces are re-homed on the survivors (:func:`rehome`, placed by
:func:`autorestrictor.recovery.place_pieces`), a paused or closing one's
after ``paused-timeout`` (:func:`check_unavailable`), anything a failed hook
left is swept up (:func:`sweep`), and finished units are forgotten with
their pins cleared (:func:`prune`). Called by the plugin's hooks only; the
changes go through :mod:`autorestrictor.actions`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from time import monotonic, time

from autorestrictor import actions, datamap, intake, records, recovery, spilling
from autorestrictor.state import HOLD, State, Unit, by_priority


def rehome(scheduler, st: State, worker: str, stimulus_id: str, why: str) -> bool:
    """Move ``worker``'s pending units to the running workers, each piece whole.

    Roots join their new worker's admission queue; the rest is sent there
    once its inputs exist. Tasks already sent to ``worker`` stay there.
    Returns whether anything was re-homed (the caller then releases held
    roots).
    """
    st.unavailable.pop(worker, None)
    units = st.runs.pop(worker, [])
    st.queues.drop_worker(worker)
    live = [u for u in units if intake.pending(scheduler.tasks, u.keys, worker)]
    if not live:
        return False
    running = list(scheduler.running)
    if not running:
        # No worker at all: nothing can run anyway. Unpin, so the scheduler
        # treats these tasks like any other when workers come.
        unpin(scheduler, st, [k for u in live for k in u.keys], "no running worker left")
        return False
    pieces: dict[int, list[Unit]] = defaultdict(list)
    for u in live:
        pieces[u.piece].append(u)
    cost = {p: sum(u.cost for u in us) for p, us in pieces.items()}
    pinned = st.pinned_tasks()
    load = {ws.address: float(pinned.get(ws.address, 0)) for ws in running}
    where = recovery.place_pieces(cost, load, {ws.address: ws.nthreads for ws in running})
    recs: dict = {}
    for piece in sorted(pieces, key=lambda p: -cost[p]):
        addr = where[piece]
        for u in pieces[piece]:
            actions.repin(scheduler, st.queues, u.keys, addr, st.admission, recs)
        st.runs[addr].extend(pieces[piece])
        st.runs[addr].sort(key=by_priority)
    actions.transitions(scheduler, recs, stimulus_id)
    records.rehome_record(scheduler, worker, len(pieces), sum(len(u.keys) for u in live),
                          len(running), why)
    return True


def sweep(scheduler, st: State) -> bool:
    """Re-home pins to workers that are gone, and give orphaned held roots to Dask.

    Nothing should be left this way; this catches what a failed hook left.
    """
    moved = False
    for addr in [a for a in (st.run_workers() | st.queues.held.keys())
                 if a not in scheduler.workers]:
        moved |= rehome(scheduler, st, addr, f"autorestrictor-sweep-{time()}",
                        f"worker {addr} is gone")
    hold = {HOLD}
    orphans = [ts.key for ts in scheduler.unrunnable
               if ts.worker_restrictions == hold and ts.key not in st.queues.held_at]
    if orphans:
        unpin(scheduler, st, orphans, "held roots no queue owns")
    return moved


def check_unavailable(scheduler, st: State) -> bool:
    """Pinned work of a paused or closing worker moves after ``paused-timeout``.

    A paused worker keeps its results and may resume; until it does, the
    units pinned to it would wait, and consumers that would free its memory
    cannot run anywhere else. Never later than half of the scheduler's
    ``no-workers-timeout``, so no pinned task reaches it.
    """
    wait = st.options.paused_timeout
    limit = getattr(scheduler, "no_workers_timeout", None)
    if limit:
        wait = min(wait, limit / 2)
    now = monotonic()
    moved = False
    for addr in list(st.run_workers() | st.queues.held.keys()):
        ws = scheduler.workers.get(addr)
        if ws is None or ws in scheduler.running:
            st.unavailable.pop(addr, None)
            continue
        since = st.unavailable.setdefault(addr, now)
        if now - since >= wait:
            moved |= rehome(scheduler, st, addr, f"autorestrictor-unavailable-{time()}",
                            f"worker {addr} is {ws.status.name} for {now - since:.1f} s")
    return moved


def unpin(scheduler, st: State, keys: list, why: str, requeue: bool = False) -> None:
    """Give ``keys`` back to Dask, and say why (``requeue``: see
    :func:`autorestrictor.actions.unpin`)."""
    actions.unpin(scheduler, st.queues, keys, requeue)
    records.unpin_record(scheduler, len(keys), why)


def check_memory(scheduler, st: State) -> bool:
    """Hand the unstarted pinned work back to Dask while a worker that has
    some writes to disk, if it is predicted to hold more open results than
    Dask's default would (:mod:`autorestrictor.spilling`). The prediction
    is made once per spell of spilling and set of plans. Returns whether
    anything was handed back."""
    on_disk = {a: float(ws.memory.spilled) for a, ws in scheduler.workers.items()}
    before, st.on_disk = st.on_disk, on_disk
    if not st.has_runs():
        return False
    who = spilling.spilling(on_disk, before, st.run_workers())
    if not who or st.memory_checked == st.n_plans:
        return False
    st.memory_checked = st.n_plans
    deps, at, rank, workers = intake.pinned_work(scheduler, st.runs)
    if not at or not workers:
        return False
    plan_peak, default_peak = datamap.peaks(deps, workers, at, rank)
    why = spilling.verdict(who, float(plan_peak.max()), float(default_peak.max()),
                           st.options.memory_tolerance)
    if why is None:
        return False
    keys = list({**dict.fromkeys(at), **dict.fromkeys(st.queues.held_at)})
    st.built.clear()
    st.batches.clear()
    st.queues.clear()
    unpin(scheduler, st, keys, why, requeue=not math.isinf(intake.saturation(scheduler)))
    return True


def prune(scheduler, st: State) -> None:
    """Forget units whose tasks have all run, so state stays bounded.

    A pin lasts until its task has run: the restrictions of a forgotten unit
    are cleared, so if one of its results is lost later and must be
    recomputed, Dask places it freely instead of waiting for a worker that
    may be gone.
    """
    tasks, runs = scheduler.tasks, st.built
    live_batches = []
    for b in st.batches:  # a plan whose units were never built, as a whole
        if intake.batch_pending(tasks, b):
            live_batches.append(b)
            continue
        per_worker: list[list] = [[] for _ in b.workers]
        for k, w in zip(b.keys, b.worker_of.tolist()):
            per_worker[w].append(k)
        for addr, keys in zip(b.workers, per_worker):
            actions.clear_done(scheduler, keys, addr)
    st.batches[:] = live_batches
    for addr in list(runs):
        live = []
        for u in runs[addr]:
            if intake.pending(tasks, u.keys, addr):
                live.append(u)
            else:
                actions.clear_done(scheduler, u.keys, addr)
        if live:
            runs[addr] = live
        else:
            del runs[addr]
