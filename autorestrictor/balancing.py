"""The rebalancer at run time: a worker that ran out of unstarted work takes
the far end of a busier worker's run.

Reads the runs and the workers (:mod:`autorestrictor.intake`), asks the pure
rebalancer (:func:`autorestrictor.rebalance.rebalance`) with the seams and
the stay rule of :mod:`autorestrictor.elastic`, and carries the moves out
with :func:`autorestrictor.actions.move`. Called by the plugin's hooks only.
"""

from __future__ import annotations

import dataclasses
from time import monotonic

from autorestrictor import actions, elastic, intake, records
from autorestrictor.learning import PACE_NOISE
from autorestrictor.rebalance import Run, rebalance
from autorestrictor.state import State, Unit, by_priority


def movable(st: State, addr: str) -> list[Unit]:
    """The units of ``addr``'s run that have not started (root still held there)."""
    held_at = st.queues.held_at
    return [u for u in st.runs.get(addr, ()) if held_at.get(u.keys[0]) == addr]


def maybe_rebalance(scheduler, st: State, force: bool = False) -> bool:
    """Rebalance if a worker ran out of queued roots while another has some.

    At most every ``rebalance-interval`` unless ``force`` (a worker joined).
    Returns whether anything moved (the caller then releases held roots).
    """
    opts = st.options
    if not (opts.rebalance and st.admission and st.has_runs()):
        return False
    now = monotonic()
    if not force and now - st.last_rebalance < opts.rebalance_interval:
        return False
    running = list(scheduler.running)
    # Cheap test first (the walk below is linear in pinned units): does any
    # worker have an empty admission queue while another has a few?
    queued = [len(st.queues.held.get(ws.address, ())) for ws in running]
    if min(queued, default=0) > 0 or max(queued, default=0) < 1:
        return False
    try:
        return _rebalance(scheduler, st, running)
    finally:
        # On a very large graph, wait twenty times as long as the walk took
        # before the next one (at most 5% of the event loop).
        st.last_rebalance = monotonic() + 19 * (monotonic() - now)
        # a worker that joined is one until the run it was dealt is done
        st.joined = {a for a in st.joined if st.runs.get(a)}


def _rebalance(scheduler, st: State, running: list) -> bool:
    tasks = scheduler.tasks
    mov = {ws.address: movable(st, ws.address) for ws in running}
    # A worker past its spill threshold takes no work, however idle.
    thresholds = intake.spill_thresholds()
    idle = [ws.address for ws in running if not mov[ws.address]
            and intake.memory_room(ws, thresholds, st.learned) > 0]
    slowdown = st.learned.slowdowns(ws.address for ws in running)
    # Slow stays slow until its run is done: a thief that took a slow
    # worker's expensive chunks becomes as slow, and the median with it.
    st.slow = {a for a in st.slow | {a for a, x in slowdown.items() if x >= PACE_NOISE}
               if st.runs.get(a)}
    # Near the end of its run, who finishes first is noise: a worker of
    # ordinary pace gives work only while rebalance-min-left of its run has
    # not started. A slow worker gives whenever others run out, and so does
    # one that joined while runs were pinned: its share was dealt before it
    # had run anything, as if it started at once, and it starts late by
    # however long its first task takes to reach it.
    left = st.options.rebalance_min_left
    gives = {a: m for a, m in mov.items() if m and (
        a in st.slow or a in st.joined or len(m) >= left * len(st.runs.get(a, ())))}
    if not idle or not gives:
        return False

    def seconds(a: str, kinds: dict) -> float:
        return st.learned.seconds(a, kinds, a in st.slow, intake.fallbacks(scheduler, kinds))

    runs = {}
    for ws in running:
        a = ws.address
        started = seconds(a, intake.kinds(ws.processing))
        if a not in gives:
            started += sum(seconds(a, intake.unit_kinds(tasks, u)) for u in mov[a])
        own = a in st.slow and a in idle  # a slow thief takes in less
        runs[a] = Run(
            units=[seconds(a, intake.unit_kinds(tasks, u)) for u in gives.get(a, ())],
            pieces=[u.piece for u in gives.get(a, ())], started=started,
            speed=ws.nthreads / (max(slowdown[a], 1.0) if own else 1.0))
    # Worth the seams only if the donor finishes rebalance-min-gain seconds
    # earlier, and earlier than what the seams send. What each cut sends is
    # walked only for the donors that would give.
    min_gain = st.options.rebalance_min_gain
    moves = rebalance(runs, idle=idle, min_gain=min_gain)
    if moves:
        for a in {mv.donor for mv in moves}:
            cost = elastic.seams(**intake.seam_inputs(scheduler, a, gives[a], st.learned))
            runs[a] = dataclasses.replace(runs[a], seams=cost)
        moves = rebalance(runs, idle=idle, min_gain=min_gain)
    for mv in moves:
        units = gives[mv.donor][mv.start : mv.start + mv.count]
        move(scheduler, st, units, mv.donor, mv.thief)
        # what the cut sends (known sizes only), as the plan predicts its own
        seams = runs[mv.donor].seams
        sent = float(seams[mv.start]) * intake.bandwidth(scheduler) if seams else 0.0
        records.move_record(scheduler, st, mv.donor, mv.thief, sum(len(u.keys) for u in units),
                            len(units), mv.seconds, slowdown.get(mv.donor, 1.0), sent)
    return bool(moves)


def move(scheduler, st: State, units: list[Unit], donor: str, thief: str) -> None:
    """Move unstarted ``units`` from ``donor`` to ``thief``; the tasks the stay
    rule keeps (:func:`autorestrictor.elastic.split_move`) form a unit of the
    donor's."""
    tasks = scheduler.tasks
    deps = {k: [d.key for d in tasks[k].dependencies]
            for u in units for k in u.keys[1:] if k in tasks}
    going, staying = elastic.split_move([u.keys for u in units], deps)
    for u, keys in zip(units, going):
        u.keys, u.kinds = keys, None
    actions.move(scheduler, st.queues, [u.keys[0] for u in units],
                 [k for u in units for k in u.keys[1:]], donor, thief)
    gone = set(map(id, units))
    st.runs[donor] = [u for u in st.runs[donor] if id(u) not in gone]
    if staying:
        st.runs[donor].append(Unit(staying, units[0].piece, units[-1].priority))
        st.runs[donor].sort(key=by_priority)
    st.runs[thief].extend(units)
    st.runs[thief].sort(key=by_priority)
