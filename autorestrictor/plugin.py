"""The scheduler plugin: a thin adapter between the scheduler and the planner.

It reads the new tasks of each graph from ``scheduler.tasks``, asks
:func:`autorestrictor.plan` where they should run, and applies the answer as
worker restrictions before the scheduler transitions the tasks. It then keeps
its promises as the cluster changes: pins to a worker that leaves move to the
survivors, and a worker that runs out of work takes the far end of the
busiest worker's run (:func:`autorestrictor.rebalance.rebalance`).

Three design decisions, and why:

*Pins are hard* (``loose_restrictions=False``). With loose ones the
work-stealing extension lets any idle worker take a pinned task, and every
stolen root drags its output back across the network: exactly the traffic
the plan avoids. Hard pins switch off Dask's own answers to a slow worker or
a new one (the queue, stealing), so the plugin answers them itself: it
re-homes pins whenever a worker leaves (``remove_worker``), in the same
event-loop tick in which the scheduler parks them in ``no-worker``; it moves
unstarted units to workers that run out of work (``rebalance``); and a pin
is cleared once its task has run (a lost result is then recomputed anywhere).

*Pinned roots are admitted, not pushed* (option ``admission``). Dask's
queuing holds root tasks on the scheduler and hands them out as threads free
up; tasks with restrictions bypass that queue, and a worker sent all of its
roots at once runs ahead of their consumers and fills its memory. So the
plugin keeps its own queue per worker: pinned roots wait in ``no-worker``,
restricted to a placeholder address no worker has, and are released in
priority order whenever their worker has fewer tasks processing than
``worker-saturation`` allows, the rule Dask's queue uses, except that as
many tasks again may wait for inputs from other workers without counting:
they hold no thread, so the worker computes its own chunks while the
transfer runs (each holds its local inputs in memory, hence the bound).
Held roots are also what makes the plan elastic: a unit whose root has not
been released has not started, and can move to another worker's queue.

*State lives on the scheduler, not in the plugin object.* Queues, runs and
history hang off the scheduler (``scheduler._autorestrictor``), so a plugin
registered again (a notebook cell run twice) takes over what the old one
left. If the plugin is unregistered, its periodic check notices and hands
every held and pinned task back to Dask.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import heapq
import itertools
import logging
import math
import weakref
from collections import Counter, defaultdict, deque
from time import monotonic, perf_counter, time
from typing import Any

import dask.config
import numpy as np
from distributed.diagnostics.plugin import SchedulerPlugin
from tornado.ioloop import PeriodicCallback

from autorestrictor.config import Options

try:  # P2P's barrier task; its module is private, so a rename must not break us
    from distributed.shuffle._core import P2PBarrierTask as _P2PBarrierTask
except ImportError:  # pragma: no cover - depends on the distributed release
    _P2PBarrierTask = None
    logging.getLogger("autorestrictor").info(
        "distributed.shuffle._core.P2PBarrierTask not found: P2P barriers are "
        "recognised by their key prefix 'shuffle-barrier-'"
    )
from autorestrictor.planner import Plan, estimate_sizes, plan
from autorestrictor.rebalance import Run, rebalance

logger = logging.getLogger("autorestrictor")

TOPIC = "autorestrictor"

#: Where held roots are "restricted" to: no worker has this address, so the
#: scheduler keeps them in ``no-worker`` until the plugin releases them.
HOLD = "autorestrictor://held"

#: Task states in which a pin still matters: the task has not run yet.
_PENDING = frozenset({"released", "waiting", "no-worker", "queued", "processing"})

#: A worker counts as slow only when its tasks take this many times longer
#: than the same kind of task (prefix) takes on the other workers: on a
#: shared machine, CPU-bound tasks on equal workers vary by a third or more
#: from one worker to the next (in the bench's vorticity, one worker once
#: looked five times slower for a while), and moving work on that noise costs
#: transfers for nothing. A slow worker's units are costed at its own pace,
#: it gives work until its run is done, and it takes less as a thief.
_PACE_NOISE = 2.0

#: Tasks of a prefix a worker must have finished before its pace on that
#: prefix counts. A run's first tasks pay for imports, page faults and a cold
#: cache.
_PACE_MIN_TASKS = 8

#: Processing tasks admission looks at, at most, on a worker that seems
#: full, to find those still waiting for inputs from other workers (see
#: :func:`fetching`); a worker with more than this many is busy anyway.
_FETCH_SCAN = 32
#: Edges looked at, at most, per released root or finished task, to find
#: held roots that a reader is about to wait for from another worker (see
#: ``AutoRestrictor._wanted``): a bound on the hook's cost on the event loop
#: (a broadcast operand has hundreds of readers).
_WANTED_SCAN = 64
#: A reader is about to run when it waits for at most this many inputs: a
#: chunk and its weight, a block and its neighbour. One waiting for many (a
#: collection's final concatenation, a flat aggregate) is not, and pulling
#: its inputs would release every held root at once.
_WANTED_MISSING = 2

#: A worker's pace on a prefix is the mean of about its last this many tasks
#: of it, so that it follows the worker into cheaper or dearer chunks.
_PACE_WINDOW = 10


@dataclasses.dataclass(eq=False)
class Unit:
    """A task that starts a chain of work on its worker, and the tasks that follow it.

    ``keys[0]`` is the first task; if it is a held root, the unit has not
    started and can move whole to another worker.
    """

    keys: list
    piece: int
    priority: tuple
    kinds: dict | None = dataclasses.field(default=None, repr=False)  # prefix -> tasks

    @property
    def cost(self) -> float:
        """Work in tasks (for re-homing whole pieces; the rebalancer uses seconds)."""
        return float(len(self.keys))


class State:
    """What the plugin keeps on the scheduler; any instance of the plugin adopts it."""

    def __init__(self, history: int):
        self.runs: dict[str, list[Unit]] = defaultdict(list)  # worker -> units, in order
        self.held: dict[str, list] = defaultdict(list)  # worker -> heap of (priority, key)
        self.held_at: dict = {}  # key -> the queue that currently owns it
        self.wanted: dict[str, dict] = {}  # worker -> {key: held root others wait for}
        self.wanted_new = False  # _wanted found one since the last release
        self.n_wanted = 0  # roots released out of turn so far
        self.seq = 0  # order of arrival in the held queues, among equal priorities
        self.local: dict[tuple, tuple[float, int]] = {}  # (worker, prefix) -> (recent s, count)
        self.slow: set[str] = set()  # workers seen slow, until their run is done
        self.prefix_mean: dict[str, tuple[float, int]] = {}  # prefix -> (seconds, count)
        self.prefix_bytes: dict[str, tuple[float, int]] = {}  # prefix -> (bytes, count)
        self.history: deque[dict] = deque(maxlen=history)  # plans
        self.moves: deque[dict] = deque(maxlen=history)  # rebalancing moves
        self.n_plans = 0
        self.n_pieces = 0
        self.last_rebalance = -math.inf
        self.unavailable: dict[str, float] = {}  # paused or closing worker -> since
        self.faults: set[str] = set()  # hooks that raised (each logged once)
        self.last_plan: Plan | None = None  # the newest applied plan (for the dashboard)
        self.last_plan_id = 0  # its ``id`` in ``history``


class AutoRestrictor(SchedulerPlugin):
    """Pin groups of related tasks to one worker each.

    Parameters
    ----------
    **options:
        Overrides of ``autorestrictor.*`` configuration keys, with
        underscores for hyphens: ``AutoRestrictor(min_tasks=10)``. Unset
        options are read from ``dask.config`` here, at construction.

    Raises
    ------
    ValueError
        If an option has a value the schema does not allow.

    Examples
    --------
    >>> client.register_plugin(AutoRestrictor())  # doctest: +SKIP
    """

    name = "autorestrictor"

    def __init__(self, **options: Any):
        self.options = Options.from_config(**options)
        self.state = State(self.options.history)
        self.scheduler = None
        self._release_soon = False
        self._admission = self.options.admission

    # Views of the shared state, for tests and users.
    @property
    def history(self) -> deque:
        return self.state.history

    @property
    def moves(self) -> deque:
        return self.state.moves

    @property
    def runs(self) -> dict[str, list[Unit]]:
        return self.state.runs

    @property
    def held(self) -> dict[str, list]:
        return self.state.held

    # -- lifecycle -----------------------------------------------------------

    async def start(self, scheduler) -> None:
        self._attach(scheduler)

    def _attach(self, scheduler) -> None:
        if self.scheduler is scheduler:
            return
        self.scheduler = scheduler
        _log_with_the_scheduler(scheduler)
        from autorestrictor.http import add_dashboard, add_routes

        add_routes(scheduler)
        previous = getattr(scheduler, "_autorestrictor", None)
        if previous is not None:  # registered again: take over the old instance's work
            previous.history = deque(previous.history, maxlen=self.options.history)
            previous.moves = deque(previous.moves, maxlen=self.options.history)
            self.state = previous
        scheduler._autorestrictor = self.state
        if self._admission and getattr(scheduler, "no_workers_timeout", None):
            # Held roots sit in no-worker; a timeout there would fail them.
            self._admission = False
            logger.info("admission off: distributed.scheduler.no-workers-timeout is set")
        if self._admission and math.isinf(self._saturation()):
            self._admission = False
            logger.info("admission off: worker-saturation is inf (queuing disabled)")
        old = scheduler.periodic_callbacks.get("autorestrictor-release")
        if old is not None:  # a plugin registered again replaces the old one's check
            old.stop()
        pc = PeriodicCallback(self._tick, self.options.check_interval * 1000)
        scheduler.periodic_callbacks["autorestrictor-release"] = pc
        if getattr(scheduler, "status", None) is not None and scheduler.status.name == "running":
            pc.start()
        try:
            add_dashboard(scheduler)
        except Exception as e:  # a page must never stop the plugin
            self._fault("dashboard page", e)

    def restart(self, scheduler) -> None:
        # Every task is forgotten on restart; so are our pins.
        self.state.runs.clear()
        self.state.held.clear()
        self.state.held_at.clear()

    def _tick(self) -> None:
        """The periodic check: release held roots, rebalance, or hand back if removed."""
        scheduler = self.scheduler
        if scheduler is None:
            return
        current = scheduler.plugins.get(self.name)
        if not isinstance(current, AutoRestrictor):
            self._hand_back("the plugin was unregistered")
            return
        try:
            self._sweep()
            self._check_unavailable()
        except Exception as e:
            self._fault("periodic check", e, hand_back=True)
            return
        self._release_all()

    def _hand_back(self, why: str) -> None:
        """Stop, and give every held or pinned task back to Dask."""
        scheduler = self.scheduler
        pc = scheduler.periodic_callbacks.pop("autorestrictor-release", None)
        if pc is not None:
            pc.stop()
        st = self.state
        keys = {k: None for units in st.runs.values() for u in units for k in u.keys}
        keys.update(dict.fromkeys(st.held_at))
        st.runs.clear()
        st.held.clear()
        st.held_at.clear()
        st.wanted.clear()
        if getattr(scheduler, "_autorestrictor", None) is st:
            del scheduler._autorestrictor
        self._unpin(scheduler, list(keys), why)

    # -- graphs --------------------------------------------------------------

    def update_graph(
        self,
        scheduler,
        *,
        client: str,
        keys: set,
        tasks: list,
        annotations: dict,
        priority: dict,
        stimulus_id: str,
        **kwargs: Any,
    ) -> None:
        self._attach(scheduler)
        if not self.options.enabled:
            return
        start = perf_counter()
        self.state.n_plans += 1
        with _collections_postponed():
            self._plan_and_apply(scheduler, tasks, annotations, start)

    def _plan_and_apply(self, scheduler, tasks: list, annotations: dict, start: float) -> None:
        try:
            p = self._plan(scheduler, tasks, annotations)
        except Exception as e:  # the planner must never break a computation
            self._record(
                {"n_tasks": len(tasks), "reason": f"planning failed: {e!r}"},
                start, level=logging.WARNING, exc_info=e,
            )
            return
        if not p.applied:
            level = logging.DEBUG if "min-tasks" in (p.reason or "") else logging.INFO
            self._record(p.summary(), start, level=level)
            return
        try:
            self._apply(scheduler, p)
        except Exception as e:
            self._record(
                {**p.summary(), "reason": f"applying failed: {e!r}"},
                start, level=logging.WARNING, exc_info=e,
            )
            return
        self._record(p.summary(), start)
        self.state.last_plan, self.state.last_plan_id = p, self.state.n_plans

    def _plan(self, scheduler, keys: list, annotations: dict) -> Plan:
        """Read the graph from scheduler state and call the planner.

        Touched tasks that must not move (already placed, restricted by the
        user or by P2P, actors, opted out, no longer ``released``) stay in
        the graph so its shape is right, as located or skipped nodes. Each
        task's cost is its prefix's expected duration, and each worker's
        pinned work still waiting is passed as ``busy``, so that graphs
        submitted together spread over the cluster.
        """
        tasks = scheduler.tasks
        opted_out = annotations.get("autorestrict", {})
        keys = graph_order(keys)
        dependencies: dict = {}
        nbytes: dict = {}  # measured
        prefix_of: dict = {}
        priority: dict = {}
        who_has: dict = {}
        cost: dict = {}
        skip: list = []
        p2p: list = []  # P2P barriers: P2P places their outputs at run time
        per_prefix: dict = {}  # prefix -> (name, expected seconds), read once
        for key in keys:
            ts = tasks.get(key)
            if ts is None:
                continue
            dependencies[key] = [dts.key for dts in ts.dependencies]
            prefix = ts.prefix
            known = per_prefix.get(prefix)
            if known is None:
                known = per_prefix[prefix] = (
                    prefix.name if prefix is not None else None, self._expected(ts))
            cost[key] = known[1]
            if known[0] is not None:
                prefix_of[key] = known[0]
            if ts.priority is not None:
                priority[key] = ts.priority[-1]
            if ts.nbytes >= 0:
                nbytes[key] = ts.nbytes
            if is_p2p_barrier(ts.key, ts.run_spec):
                p2p.append(key)
            if not _free(ts, opted_out):
                where = _where(ts, self.state.held_at)
                if where is not None:
                    who_has[key] = where
                else:
                    skip.append(key)
            for dts in ts.dependencies:
                if dts.key in dependencies or dts.key in who_has:
                    continue
                if dts.who_has:
                    who_has[dts.key] = [ws.address for ws in dts.who_has]
                    nbytes[dts.key] = dts.get_nbytes()
                else:  # in flight: bound to a worker by an earlier plan?
                    where = _where(dts, self.state.held_at)
                    if where is not None:
                        who_has[dts.key] = where
        workers = running_workers(scheduler)
        busy = {a: self._waiting_work(a) for a in workers}
        learned = {k: v for k, (v, _) in self.state.prefix_bytes.items()}
        sizes = estimate_sizes(nbytes, prefix_of, learned)
        p = plan(
            dependencies, workers, nbytes=sizes.nbytes, priority=priority, who_has=who_has,
            skip=skip, cost=cost, busy=busy, placed_at_run_time=p2p,
            **dataclasses.asdict(self.options),
        )
        return dataclasses.replace(p, sizes=sizes.counts())

    def _apply(self, scheduler, p: Plan) -> None:
        """Pin each planned key. All or nothing: a failure undoes what was done.

        Roots are held for admission (see the module docstring); the first
        ones are released on the next tick of the event loop, once the
        scheduler has moved them to ``no-worker``.

        Allocation is kept low on purpose: every object made here on a
        scheduler holding millions of them brings the next full garbage
        collection closer, and that runs on the event loop. Tasks pinned to
        one worker share one restriction set (distributed only ever replaces
        ``worker_restrictions``, never mutates it in place).
        """
        tasks = scheduler.tasks
        pins = [{addr} for addr in p.workers]
        hold = {HOLD}
        held = []
        n_done = 0
        is_rootish = getattr(scheduler, "is_rootish", None)
        by_group: dict = {}  # Dask decides root-ishness per task group

        def rootish(ts) -> bool:
            tg = ts.group
            if tg not in by_group:
                by_group[tg] = is_rootish is not None and is_rootish(ts)
            return by_group[tg]

        try:
            for key, w in zip(p.keys, p.worker_of.tolist()):
                ts = tasks[key]
                # Hold what Dask's queue would hold: roots, and tasks of a
                # large group with few inputs (seven tasks reading one small
                # task). Asked before the pin is set: a pinned task is not
                # root-ish to Dask.
                if self._admission and (not ts.dependencies or rootish(ts)):
                    ts.worker_restrictions = hold
                    held.append((w, ts))
                else:
                    ts.worker_restrictions = pins[w]
                ts.loose_restrictions = False
                n_done += 1
        except BaseException:
            for key in p.keys[:n_done]:
                tasks[key].worker_restrictions = set()
            raise
        for w, ts in held:
            self._hold(p.workers[w], ts)
        # Forget finished units before adding this plan's, which are all
        # pending: pruning them too would walk the new graph a second time on
        # the event loop.
        self._prune()
        self._add_units(p)
        if held:
            self._schedule_release()

    def _add_units(self, p: Plan) -> None:
        """Record the plan's units in each worker's run, in priority order.

        One pass over plain lists: on a scheduler receiving 100,000 units,
        numpy's split into as many small arrays cost more than the rest.
        """
        tasks = self.scheduler.tasks
        keys = p.keys
        order = np.argsort(p.units, kind="stable")
        heads = p.units[order]
        starts = np.flatnonzero(np.r_[True, heads[1:] != heads[:-1]]).tolist()
        starts.append(len(order))
        order, heads = order.tolist(), heads.tolist()
        worker_of, piece_of = p.worker_of.tolist(), p.piece_of.tolist()
        base = self.state.n_pieces
        self.state.n_pieces += max(piece_of, default=-1) + 1
        new: dict[str, list[Unit]] = defaultdict(list)
        for a, b in zip(starts, starts[1:]):
            head = heads[a]
            members = [keys[head]]
            members.extend(keys[i] for i in order[a:b] if i != head)
            unit = Unit(members, base + piece_of[head], tasks[keys[head]].priority)
            new[p.workers[worker_of[head]]].append(unit)
        for addr, units in new.items():
            units.sort(key=_by_priority)
            self.state.runs[addr].extend(units)

    # -- admission -----------------------------------------------------------

    def _hold(self, addr: str, ts) -> None:
        """Queue a held root for ``addr``; a later queue for the same key wins."""
        # (a task submitted without dask.order's pass may have no priority yet)
        # ``seq`` breaks ties between equal priorities: keys of mixed types
        # (strings, tuples) cannot be compared
        st = self.state
        st.seq += 1
        heapq.heappush(st.held[addr], (ts.priority or (), st.seq, ts.key))
        self.state.held_at[ts.key] = addr

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish == "no-worker" and key in self.state.held_at:
            # a held task whose inputs just became ready: release it soon
            self._schedule_release()
            return
        if start != "processing":
            return
        if finish == "memory":
            try:
                self._observe(key, kwargs)
                ts = self.scheduler.tasks.get(key)
                if self.state.held_at and ts is not None and ts.who_has:
                    # (the release it may need is scheduled just below)
                    self._wanted(ts, {ws.address for ws in ts.who_has}, _WANTED_MISSING)
            except Exception as e:
                self._fault("transition", e)
        # A task leaving "processing" frees a slot on its worker.
        if self.state.held or self.state.runs:
            self._schedule_release()

    def _wanted(self, ts, here: set, missing: int) -> None:
        """Note the small held roots that readers of ``ts`` on ``here`` wait for.

        Each worker's admission releases its own roots in priority order. A
        small operand that other workers' chunks read (a column's weight, a
        bias) may come late in its worker's order, and meanwhile the other
        workers keep computing their own chunks, whose results wait in
        memory for it. So when a root is released to a worker, or a task
        finishes there, each reader of it pinned to that worker and waiting
        for at most ``missing`` inputs is looked at: an input that is a root
        held on another worker (or waits for one, such as its ``getitem``
        slice) takes that worker's next free slot, ahead of its own queue
        (in ``_release``), and is computed while this worker computes its
        own. Only a small one: its prefix's outputs (learned) at most
        ``light-edge-fraction`` of ``ts``'s. Computing a big input early (a
        product's block) would hold it on its own worker until that
        worker's own readers reach it, and not knowing the size, nothing
        jumps. A reader waiting for many inputs (a collection's final
        concatenation) is not about to run. Looks at no more than
        :data:`_WANTED_SCAN` edges.
        """
        st = self.state
        held_at, size = st.held_at, self._output_bytes
        mine = size(ts)
        if mine <= 0:
            return
        small = self.options.light_edge_fraction * mine
        budget = _WANTED_SCAN
        for reader in ts.dependents:
            if reader.state != "waiting" or len(reader.waiting_on) > missing \
                    or not reader.worker_restrictions or not reader.worker_restrictions <= here:
                continue
            for t in reader.waiting_on:
                if t is ts:
                    continue
                budget -= 1
                inputs = t.waiting_on if t.state == "waiting" else (t,)
                for u in inputs:
                    budget -= u is not t
                    at = held_at.get(u.key)
                    if at is None or at in here:
                        continue
                    if 0 <= size(u) <= small:
                        st.wanted.setdefault(at, {})[u.key] = u
                        st.wanted_new = True
                if budget <= 0:
                    return

    def _output_bytes(self, ts) -> float:
        """Bytes of ``ts``'s output: measured, else its prefix's learned
        average; -1 when neither is known."""
        if ts.nbytes >= 0:
            return float(ts.nbytes)
        known = self.state.prefix_bytes.get(ts.prefix.name) if ts.prefix is not None else None
        return known[0] if known else -1.0

    def _schedule_release(self) -> None:
        if not self._release_soon and self.scheduler is not None:
            self._release_soon = True
            self.scheduler.loop.add_callback(self._release_all)

    def _saturation(self) -> float:
        s = getattr(self.scheduler, "WORKER_SATURATION", None)
        if s is None:
            s = dask.config.get("distributed.scheduler.worker-saturation", 1.1)
        return float(s)

    def _free_slots(self, ws, saturation: float, queued: int) -> int:
        """How many held roots ``ws`` may be sent now (Dask's queuing rule,
        except for up to ``slots`` tasks waiting for inputs: see :func:`fetching`)."""
        if math.isinf(saturation):
            return queued
        slots = max(math.ceil(saturation * ws.nthreads), 1)
        busy = len(ws.processing) - len(ws.long_running)
        if busy >= slots and ws.needs_what:
            # Up to ``slots`` tasks waiting for inputs do not count: enough
            # to keep computing through a transfer, while every waiting task
            # holds its local inputs in memory.
            busy = max(busy - fetching(ws), busy - slots)
        return slots - busy

    def _release_all(self) -> None:
        """Send held roots to their workers, as many as each has free slots."""
        self._release_soon = False
        if self.scheduler is None:
            return
        try:
            self._maybe_rebalance()
            self._release()
        except Exception as e:
            self._fault("release", e, hand_back=True)

    def _release(self) -> None:
        scheduler = self.scheduler
        st = self.state
        if not st.held:
            return
        saturation = self._saturation()
        recs: dict = {}
        tasks = scheduler.tasks
        hold = {HOLD}
        st.wanted_new = False
        for addr in [a for a in st.wanted if a not in st.held]:
            del st.wanted[addr]  # (its queue is empty: released, moved or gone)
        for addr in list(st.held):
            heap = st.held[addr]
            ws = scheduler.workers.get(addr)
            if ws is None or ws not in scheduler.running:
                continue
            free = self._free_slots(ws, saturation, len(heap))
            pin = {addr}
            # First the roots that readers on other workers wait for (see
            # _wanted): they take this worker's next slots, ahead of its order.
            wanted = st.wanted.get(addr, {})
            while wanted and free > 0:
                key, ts = next(iter(wanted.items()))
                del wanted[key]
                if st.held_at.get(key) != addr or ts.worker_restrictions != hold \
                        or ts.state != "no-worker":
                    continue  # moved, released, done, or its inputs are not ready
                del st.held_at[key]  # (its heap entry is skipped below)
                ts.worker_restrictions = pin
                recs[key] = "processing"
                free -= 1
                st.n_wanted += 1
            if not wanted:
                st.wanted.pop(addr, None)
            waiting = []  # held tasks whose inputs are not ready yet stay held
            while heap and free > 0:
                entry = heapq.heappop(heap)
                key = entry[-1]
                if st.held_at.get(key) != addr:
                    continue  # moved to another worker's queue
                ts = tasks.get(key)
                if ts is None or ts.worker_restrictions != hold or ts.state not in _PENDING:
                    del st.held_at[key]
                    continue  # cancelled, forgotten or done meanwhile
                if ts.state != "no-worker":
                    waiting.append(entry)
                    continue
                del st.held_at[key]
                ts.worker_restrictions = pin
                recs[key] = "processing"
                free -= 1
                self._wanted(ts, pin, _WANTED_MISSING + 1)  # (+1: ts itself)
            for entry in waiting:
                heapq.heappush(heap, entry)
            if not heap:
                del st.held[addr]
        if recs:
            scheduler.transitions(recs, f"autorestrictor-release-{time()}")
        if st.wanted_new:  # found while releasing: another worker may have a slot
            self._schedule_release()

    # -- rebalancing ---------------------------------------------------------

    def _observe(self, key, kwargs: dict) -> None:
        """Learn durations and sizes per prefix, and each worker's pace on each prefix."""
        worker = kwargs.get("worker")
        ts = self.scheduler.tasks.get(key) if self.scheduler is not None else None
        if worker is None or ts is None or ts.prefix is None:
            return
        took = sum(
            ss["stop"] - ss["start"]
            for ss in kwargs.get("startstops") or ()
            if ss.get("action") == "compute"
        )
        if took <= 0:
            return
        st = self.state
        name = ts.prefix.name
        nbytes = kwargs.get("nbytes")
        if isinstance(nbytes, int) and nbytes >= 0:
            size, m = st.prefix_bytes.get(name, (nbytes, 0))
            m = min(m + 1, 100)
            st.prefix_bytes[name] = (size + (nbytes - size) / m, m)
        mean, n = st.prefix_mean.get(name, (took, 0))
        n = min(n + 1, 100)  # a running mean that keeps following a drift
        mean += (took - mean) / n
        st.prefix_mean[name] = (mean, n)
        recent, seen = st.local.get((worker, name), (took, 0))
        seen += 1
        st.local[(worker, name)] = (recent + (took - recent) / min(seen, _PACE_WINDOW), seen)

    def _expected(self, ts) -> float:
        """Expected compute seconds of a task: its prefix's average so far."""
        return expected_seconds(ts.prefix, self.state.prefix_mean, unknown_duration(self.scheduler))

    def _movable(self, addr: str) -> list[Unit]:
        """The units of ``addr``'s run that have not started (root still held there)."""
        held_at = self.state.held_at
        return [u for u in self.state.runs.get(addr, ()) if held_at.get(u.keys[0]) == addr]

    def _task_seconds(self) -> float:
        """A typical task's compute seconds so far (the unknown-task default at first)."""
        means = [m for m, _ in self.state.prefix_mean.values()]
        if means:
            return sum(means) / len(means)
        return unknown_duration(self.scheduler)

    def _waiting_work(self, addr: str) -> float:
        """Expected seconds of pinned work not yet done on ``addr`` (for the next plan).

        Counts every task of the units still in its run, started or not: a
        chain whose root has run still has the rest of the chain to run.
        """
        return self._task_seconds() * sum(u.cost for u in self.state.runs.get(addr, ()))

    def _slowdowns(self, addrs) -> dict[str, float]:
        """How many times longer each worker's tasks take than the other workers'.

        Per prefix, a worker's recent mean against the median of the
        workers' means (of the other worker's, when there are two); the
        geometric mean of those ratios, weighted by tasks seen. 1.0 where
        nothing compares yet. O(pairs of worker and prefix seen).
        """
        addrs = set(addrs)
        by_prefix: dict[str, list] = defaultdict(list)
        for (w, name), (recent, seen) in self.state.local.items():
            if w in addrs and seen >= _PACE_MIN_TASKS and recent > 0:
                by_prefix[name].append((w, recent, min(seen, 100)))
        logs: dict[str, float] = defaultdict(float)
        weights: dict[str, float] = defaultdict(float)
        for rows in by_prefix.values():
            if len(rows) < 2:
                continue
            median = float(np.median([r for _, r, _ in rows]))
            for w, recent, seen in rows:
                if len(rows) == 2:
                    (other,) = [r for v, r, _ in rows if v != w]
                else:
                    other = median
                logs[w] += seen * math.log(recent / other)
                weights[w] += seen
        return {w: math.exp(logs[w] / weights[w]) if weights[w] else 1.0 for w in addrs}

    @staticmethod
    def _kinds(tss) -> dict:
        """How many of the task states ``tss`` (``None`` skipped) have each prefix."""
        return dict(Counter(ts.prefix.name for ts in tss if ts is not None and ts.prefix))

    def _unit_seconds(self, addr: str, u: Unit, own: bool) -> float:
        """Expected seconds of a unit on ``addr`` (its prefixes counted once)."""
        if u.kinds is None:
            tasks = self.scheduler.tasks
            u.kinds = self._kinds(tasks.get(k) for k in u.keys)
        return self._kinds_seconds(addr, u.kinds, own)

    def _kinds_seconds(self, addr: str, kinds: dict, own: bool) -> float:
        """Expected seconds of so many tasks of each prefix on ``addr``: its
        own recent pace per prefix if ``own`` (a slow worker), else the
        prefix's average."""
        prefixes = self.scheduler.task_prefixes
        unknown = unknown_duration(self.scheduler)
        means = self.state.prefix_mean
        local = self.state.local
        total = 0.0
        for name, n in kinds.items():
            mine = local.get((addr, name)) if own else None
            if mine is not None and mine[1] >= _PACE_MIN_TASKS:
                total += n * mine[0]
            else:
                total += n * expected_seconds(prefixes.get(name), means, unknown)
        return total

    def _seams(self, addr: str, units: list[Unit]) -> list[float]:
        """Seconds that cutting ``addr``'s movable ``units`` before each one costs.

        A cut before unit ``s`` moves units ``s..`` to the thief, except the
        tasks :meth:`_move` keeps with the donor (those that read more from
        the donor's side than from the moving side: the top of a reduction
        whose last block moves). Each task therefore moves for the cuts up to
        its *reach*: its unit's index for a unit's first task, else the
        smaller of that index and the cut up to which half its inputs move;
        -1 for a task that stays on ``addr`` anyway (started, or done and
        kept there). An edge between tasks of reach ``a < b`` crosses every
        cut in ``(a, b]``. Bytes are measured sizes, else the prefix's
        average output, sent at the scheduler's bandwidth. Linear in the
        units' tasks and their edges.
        """
        tasks = self.scheduler.tasks
        n = len(units)
        pos = {k: i for i, u in enumerate(units) for k in u.keys}
        firsts = {u.keys[0] for u in units}
        here = {addr}

        def stays(ts) -> bool:
            if ts.state == "memory":
                return any(ws.address == addr for ws in ts.who_has)
            return ts.worker_restrictions == here or (
                ts.processing_on is not None and ts.processing_on.address == addr)

        def nbytes(ts) -> float:  # (unknown sizes cost nothing)
            return max(self._output_bytes(ts), 0.0)

        reach: dict = {}  # key -> last cut that moves it; -1 stays; None elsewhere

        def outside(ts):
            return -1 if stays(ts) else None

        for k in pos:  # depth-first, inputs before the tasks that read them
            if k in reach or k not in tasks:
                continue
            stack = [tasks[k]]
            while stack:
                ts = stack[-1]
                if ts.key in reach:
                    stack.pop()
                    continue
                todo = [d for d in ts.dependencies
                        if d.key in pos and d.key not in reach and ts.key not in firsts]
                if todo:
                    stack.extend(todo)
                    continue
                stack.pop()
                i = pos[ts.key]
                if ts.key in firsts or not ts.dependencies:
                    reach[ts.key] = i
                    continue
                # _move keeps a task whose moving inputs are fewer than half
                ins = sorted((reach[d.key] if d.key in pos else -1
                              for d in ts.dependencies), reverse=True)
                reach[ts.key] = min(i, ins[(len(ins) + 1) // 2 - 1])

        diff = [0.0] * (n + 1)

        def cross(a: int, b: int, nb: float) -> None:
            if a != b:
                diff[min(a, b) + 1] += nb
                diff[max(a, b) + 1] -= nb

        for k, b in reach.items():
            ts = tasks[k]
            for d in ts.dependencies:  # inputs: from the run, or from what stays
                a = reach[d.key] if d.key in pos else outside(d)
                if a is not None:
                    cross(a, b, nbytes(d))
            for d in ts.dependents:  # readers that stay (the top of a reduction)
                if d.key not in pos and stays(d):
                    cross(-1, b, nbytes(ts))
        bandwidth = float(getattr(self.scheduler, "bandwidth", 100e6)) or 100e6
        out, acc = [], 0.0
        for s in range(n):
            acc += diff[s]
            out.append(acc / bandwidth)
        return out

    def _maybe_rebalance(self, force: bool = False) -> None:
        """Let workers that ran out of unstarted units take the far end of others' runs."""
        st = self.state
        if not (self.options.rebalance and self._admission and st.runs):
            return
        now = monotonic()
        if not force and now - st.last_rebalance < self.options.rebalance_interval:
            return
        running = list(self.scheduler.running)
        # Cheap test first (the walk below is linear in pinned units): does
        # any worker have an empty admission queue while another has a few?
        queued = [len(st.held.get(ws.address, ())) for ws in running]
        if min(queued, default=0) > 0 or max(queued, default=0) < 1:
            return
        try:
            self._rebalance_walk(running)
        finally:
            # The walk is linear in pinned units: on a very large graph,
            # wait twenty times as long as it took before the next one (at
            # most 5% of the event loop).
            st.last_rebalance = monotonic() + 19 * (monotonic() - now)

    def _rebalance_walk(self, running: list) -> None:
        st = self.state
        movable = {ws.address: self._movable(ws.address) for ws in running}
        idle = [a for a, m in movable.items() if not m]
        # Near the end of its run, who finishes first is noise: a worker of
        # ordinary pace gives work only while rebalance-min-left of its run
        # has not started. A slow worker gives whenever others run out.
        left = self.options.rebalance_min_left
        slowdown = self._slowdowns(ws.address for ws in running)
        # Slow stays slow until its run is done: a thief that took a slow
        # worker's expensive chunks becomes as slow, and the median with it.
        slow = {a for a in st.slow | {a for a, x in slowdown.items() if x >= _PACE_NOISE}
                if st.runs.get(a)}
        st.slow = slow
        gives = {a: m for a, m in movable.items() if m and (
            a in slow or len(m) >= left * len(st.runs.get(a, ())))}
        if not idle or not gives:
            return
        runs = {}
        for ws in running:
            a = ws.address
            own = a in slow
            mine = gives.get(a, ())
            started = self._kinds_seconds(a, self._kinds(ws.processing), own)
            if a not in gives:
                started += sum(self._unit_seconds(a, u, own) for u in movable[a])
            runs[a] = Run(
                units=[self._unit_seconds(a, u, own) for u in mine],
                pieces=[u.piece for u in mine],
                started=started,
                # a slow thief takes in less
                speed=ws.nthreads / (max(slowdown[a], 1.0) if own and a in idle else 1.0),
            )
        # Worth the seams only if the donor finishes rebalance-min-gain
        # seconds earlier, and earlier than what the seams send. What each
        # cut sends is walked only for the donors that would give.
        min_gain = self.options.rebalance_min_gain
        moves = rebalance(runs, idle=idle, min_gain=min_gain)
        if moves:
            for a in {mv.donor for mv in moves}:
                runs[a] = dataclasses.replace(runs[a], seams=self._seams(a, gives[a]))
            moves = rebalance(runs, idle=idle, min_gain=min_gain)
        for mv in moves:
            self._move(gives[mv.donor][mv.start : mv.start + mv.count], mv.donor, mv.thief)
            self._record_rebalance(mv.donor, mv.thief, gives[mv.donor][mv.start:][: mv.count],
                                   mv.seconds, slowdown)
        if moves:
            self._schedule_release()

    def _move(self, units: list[Unit], donor: str, thief: str) -> None:
        """Move unstarted units: their roots change queue, the rest change pin.

        A task of a moved unit that reads more from the donor's side than
        from the moved units (the top of a reduction whose last block moves)
        stays with the donor, in a unit of its own: at the seam, the smaller
        side's result travels, as the planner's seams do.
        """
        tasks = self.scheduler.tasks
        moving = {k for u in units for k in u.keys}
        staying: list = []
        for _ in range(2):  # a second pass sees what the first left behind
            for u in units:
                keep = [u.keys[0]]
                for k in u.keys[1:]:
                    deps = tasks[k].dependencies if k in tasks else ()
                    inside = sum(d.key in moving for d in deps)
                    if 2 * inside < len(deps):
                        staying.append(k)
                        moving.discard(k)
                    else:
                        keep.append(k)
                u.keys, u.kinds = keep, None
        pin = {thief}
        for u in units:
            root = tasks.get(u.keys[0])
            if root is not None:
                self._hold(thief, root)
            for k in u.keys[1:]:
                ts = tasks.get(k)
                if ts is not None and ts.worker_restrictions == {donor}:
                    ts.worker_restrictions = pin
        gone = set(map(id, units))
        st = self.state
        st.runs[donor] = [u for u in st.runs[donor] if id(u) not in gone]
        if staying:
            st.runs[donor].append(Unit(staying, units[0].piece, units[-1].priority))
            st.runs[donor].sort(key=_by_priority)
        st.runs[thief].extend(units)
        st.runs[thief].sort(key=_by_priority)

    def _record_rebalance(self, donor: str, thief: str, units: list[Unit], seconds: float,
                          slowdown: dict[str, float]) -> None:
        n = sum(len(u.keys) for u in units)
        msg = {
            "action": "rebalance", "from": donor, "to": thief, "tasks": n,
            "units": len(units), "seconds": round(seconds, 3),
            "why": f"{thief} ran out of unstarted work; {donor} would finish last "
                   f"(its tasks take {slowdown.get(donor, 1.0):.2f}x the median worker's)",
            "time": time(),
        }
        self.state.moves.append(msg)
        self.scheduler.log_event(TOPIC, msg)
        logger.debug("rebalance: %d task(s) in %d unit(s) from %s to %s",
                     n, len(units), donor, thief)

    # -- workers -------------------------------------------------------------

    def remove_worker(self, scheduler, worker: str, *, stimulus_id: str, **kwargs: Any) -> None:
        """Move the pending units of a departed worker onto the survivors.

        Runs after the scheduler has released the worker's tasks; the ones
        pinned to it sit in ``no-worker``.
        """
        self._attach(scheduler)
        st = self.state
        st.slow.discard(worker)
        for key in [k for k in st.local if k[0] == worker]:
            del st.local[key]
        try:
            self._rehome(worker, stimulus_id, f"worker {worker} left")
        except Exception as e:
            self._fault("remove_worker", e)
            self._sweep()  # whatever is still pinned to the gone worker

    def _rehome(self, worker: str, stimulus_id: str, why: str) -> None:
        """Move ``worker``'s pending units to the survivors, each piece whole.

        A piece goes to the running worker with the least pinned work per
        thread; roots join its admission queue, the rest is sent to it once
        its inputs exist. Tasks already sent to ``worker`` stay there.
        """
        scheduler = self.scheduler
        st = self.state
        st.unavailable.pop(worker, None)
        units = st.runs.pop(worker, [])
        for *_, key in st.held.pop(worker, ()):
            if st.held_at.get(key) == worker:
                del st.held_at[key]
        live = [u for u in units if self._pending(scheduler, u.keys, worker)]
        if not live:
            return
        running = list(scheduler.running)
        if not running:
            # No worker at all: nothing can run anyway. Unpin, so the
            # scheduler treats these tasks like any other when workers come.
            self._unpin(scheduler, [k for u in live for k in u.keys], "no running worker left")
            return
        pieces: dict[int, list[Unit]] = defaultdict(list)
        for u in live:
            pieces[u.piece].append(u)
        heap = [(self._waiting_work(ws.address) / ws.nthreads, ws.address, ws.nthreads)
                for ws in running]
        heapq.heapify(heap)
        recs: dict = {}
        for piece in sorted(pieces.values(), key=lambda us: -sum(u.cost for u in us)):
            load, addr, nthreads = heapq.heappop(heap)
            for u in piece:
                self._repin(scheduler, u.keys, addr, recs)
            st.runs[addr].extend(piece)
            st.runs[addr].sort(key=_by_priority)
            heapq.heappush(heap, (load + sum(u.cost for u in piece) / nthreads, addr, nthreads))
        scheduler.transitions(recs, stimulus_id)
        self._schedule_release()
        moved = sum(len(u.keys) for u in live)
        msg = {"action": "rehomed", "worker": worker, "pieces": len(pieces),
               "tasks": moved, "why": why}
        scheduler.log_event(TOPIC, msg)
        logger.info("%s: %d pinned task(s) in %d piece(s) moved to %d other worker(s)",
                    why, moved, len(pieces), len(running))

    def add_worker(self, scheduler, worker: str) -> None:
        """A joining worker is an idle worker: it takes the far end of the busiest runs."""
        self._attach(scheduler)
        if not self.state.runs:
            return
        try:
            self._prune()
            self._maybe_rebalance(force=True)
        except Exception as e:
            self._fault("add_worker", e)

    # -- safety nets ---------------------------------------------------------

    def _fault(self, where: str, e: BaseException, hand_back: bool = False) -> None:
        """A hook raised: say so once, and never leave a task stranded."""
        st = self.state
        if where not in st.faults:
            st.faults.add(where)
            logger.warning("autorestrictor: %s failed; %s", where,
                           "handing every pin back to Dask" if hand_back else "carrying on",
                           exc_info=e)
        if self.scheduler is not None:
            self.scheduler.log_event(TOPIC, {"action": "fault", "where": where,
                                             "error": repr(e), "hand_back": hand_back})
        if hand_back:
            self._hand_back(f"{where} failed: {e!r}")

    def _sweep(self) -> None:
        """Re-home pins to workers that are gone, and give orphaned held roots to Dask.

        Nothing should be left this way; this catches what a failed hook left.
        """
        scheduler, st = self.scheduler, self.state
        for addr in [a for a in (st.runs.keys() | st.held.keys()) if a not in scheduler.workers]:
            self._rehome(addr, f"autorestrictor-sweep-{time()}", f"worker {addr} is gone")
        hold = {HOLD}
        orphans = [ts.key for ts in scheduler.unrunnable
                   if ts.worker_restrictions == hold and ts.key not in st.held_at]
        if orphans:
            self._unpin(scheduler, orphans, "held roots no queue owns")

    def _check_unavailable(self) -> None:
        """Pinned work of a paused or closing worker moves after ``paused-timeout``.

        A paused worker keeps its results and may resume; until it does, the
        units pinned to it would wait, and consumers that would free its
        memory cannot run anywhere else. Never later than half of the
        scheduler's ``no-workers-timeout``, so no pinned task reaches it.
        """
        scheduler, st = self.scheduler, self.state
        wait = self.options.paused_timeout
        limit = getattr(scheduler, "no_workers_timeout", None)
        if limit:
            wait = min(wait, limit / 2)
        now = monotonic()
        for addr in list(st.runs.keys() | st.held.keys()):
            ws = scheduler.workers.get(addr)
            if ws is None or ws in scheduler.running:
                st.unavailable.pop(addr, None)
                continue
            since = st.unavailable.setdefault(addr, now)
            if now - since >= wait:
                self._rehome(addr, f"autorestrictor-unavailable-{time()}",
                             f"worker {addr} is {ws.status.name} for {now - since:.1f} s")

    # -- helpers -------------------------------------------------------------

    @staticmethod
    def _pending(scheduler, keys: list, addr: str) -> list:
        """The keys of a unit still pinned by us (to ``addr`` or held) and not yet run."""
        tasks = scheduler.tasks
        mine = ({addr}, {HOLD})
        out = []
        for k in keys:
            ts = tasks.get(k)
            if ts is not None and ts.state in _PENDING and ts.worker_restrictions in mine:
                out.append(k)
        return out

    def _repin(self, scheduler, keys: list, addr: str, recs: dict) -> None:
        """Pin ``keys`` to ``addr``; roots join its admission queue.

        A task already sent to another worker (a paused one) is asked back
        through the work-stealing extension, which moves it only if that
        worker has not started it. (Such roots reach ``addr`` beyond its
        admission slots: at most the paused worker's few queued roots,
        which would otherwise wait for it to resume.)
        """
        tasks = scheduler.tasks
        pin = {addr}
        stealing = scheduler.extensions.get("stealing")
        for k in keys:
            ts = tasks.get(k)
            if ts is None or ts.state not in _PENDING:
                continue  # done, or forgotten
            if ts.state == "processing":
                victim = ts.processing_on
                if stealing is not None and victim is not None and victim.address != addr:
                    ts.worker_restrictions = pin
                    stealing.move_task_request(ts, victim, scheduler.workers[addr])
                continue
            if ts.worker_restrictions == {HOLD} or (
                self._admission and not ts.dependencies and ts.state == "no-worker"
            ):
                # A root the departed worker held or was running: it waits
                # for a free thread on its new worker like any held root.
                ts.worker_restrictions = {HOLD}
                self._hold(addr, ts)
                continue
            ts.worker_restrictions = pin
            ts.loose_restrictions = False
            if ts.state == "no-worker":
                recs[k] = "processing"

    def _unpin(self, scheduler, keys: list, why: str) -> None:
        # Unpinned tasks in no-worker are picked up by the scheduler as soon
        # as any worker arrives (bulk_schedule_unrunnable_after_adding_worker).
        recs = {}
        for k in keys:
            self.state.held_at.pop(k, None)
            ts = scheduler.tasks.get(k)
            if ts is not None:
                ts.worker_restrictions = set()
                if ts.state == "no-worker" and scheduler.running:
                    recs[k] = "processing"
        if recs:
            scheduler.transitions(recs, f"autorestrictor-unpin-{time()}")
        logger.info("unpinned %d task(s): %s", len(keys), why)
        scheduler.log_event(TOPIC, {"action": "unpinned", "tasks": len(keys), "reason": why})

    def _prune(self) -> None:
        """Forget units whose tasks have all run, so state stays bounded.

        A pin lasts until its task has run: the restrictions of a forgotten
        unit are cleared, so if one of its results is lost later and must be
        recomputed, Dask places it freely instead of waiting for a worker
        that may be gone.
        """
        if self.scheduler is None:
            return
        tasks = self.scheduler.tasks
        runs = self.state.runs
        for addr in list(runs):
            live = []
            for u in runs[addr]:
                if self._pending(self.scheduler, u.keys, addr):
                    live.append(u)
                    continue
                for k in u.keys:
                    ts = tasks.get(k)
                    if ts is not None and ts.worker_restrictions == {addr}:
                        ts.worker_restrictions = set()
            if live:
                runs[addr] = live
            else:
                del runs[addr]

    def _record(
        self, record: dict, start: float, level: int = logging.INFO, exc_info=None
    ) -> None:
        """Keep, publish (event) and log, once, what happened to a graph."""
        record = {
            "id": self.state.n_plans,
            "time": time(),
            **record,
            "total_s": perf_counter() - start,
        }
        record.setdefault("plan_s", record["total_s"])
        self.state.history.append(record)
        if self.scheduler is not None:
            self.scheduler.log_event(TOPIC, {"action": "plan", **record})
        if record.get("reason") is None:
            logger.log(
                level,
                "pinned %d of %d task(s) in %d group(s) onto %d worker(s); "
                "predicted transfer %.1f MB; planned in %.3f s",
                record["n_pinned"], record["n_tasks"], record["n_groups"],
                len(record["pinned_per_worker"]), record["predicted_bytes"] / 1e6,
                record["plan_s"],
            )
        else:
            logger.log(level, "left a graph of %s task(s) to Dask: %s",
                       record.get("n_tasks"), record["reason"], exc_info=exc_info)


def _log_with_the_scheduler(scheduler) -> None:
    """Let the plugin's log lines go where the scheduler's own go.

    Dask sets up only the loggers its ``logging`` config names
    (``distributed`` at INFO, on stderr), so without this the plugin's
    INFO lines (what it pinned, what it left to Dask and why, re-homings)
    would be dropped. Unless the ``autorestrictor`` logger's level was set
    (``logging: {autorestrictor: warning}`` in the Dask config, or by
    hand), it takes the level and handlers of ``distributed``; either way
    its lines also join the scheduler's own log (``client.get_scheduler_logs()``
    and the dashboard's log page) while that scheduler lives.
    """
    ours, theirs = logger, logging.getLogger("distributed")
    if ours.level == logging.NOTSET:  # (checked at every attach: tools reset levels)
        ours.setLevel(theirs.getEffectiveLevel())
        if theirs.handlers:  # else both propagate to the same place
            for h in theirs.handlers:
                if h not in ours.handlers:
                    ours.addHandler(h)
            ours.propagate = theirs.propagate
    kept = getattr(scheduler, "_deque_handler", None)
    if isinstance(kept, logging.Handler) and kept not in ours.handlers:
        ours.addHandler(kept)
        weakref.finalize(scheduler, ours.removeHandler, kept)


def fetching(ws) -> int:
    """Tasks processing on ``ws`` that still wait for an input from another worker.

    They hold no thread, so admission does not count up to a slot's worth
    of them per slot: a worker that waits for a reduction's partial results
    keeps computing its own chunks meanwhile, and the transfer is hidden
    behind that work. Looks at no more than :data:`_FETCH_SCAN` tasks.
    """
    needs = ws.needs_what
    n = 0
    for ts in itertools.islice(ws.processing, _FETCH_SCAN):
        if any(d in needs for d in ts.dependencies):
            n += 1
    return n


def running_workers(scheduler) -> dict[str, int]:
    """``address -> threads`` of the running workers, sorted by address.

    The planner deals work to workers in this order. Sorted, so that the
    same graph on the same workers gets the same plan whoever asks
    (:func:`autorestrictor.explain` calls the planner with this order too);
    ``scheduler.running`` is a set.
    """
    return {ws.address: ws.nthreads for ws in sorted(scheduler.running, key=_address)}


def _address(ws) -> str:
    return ws.address


@contextlib.contextmanager
def _collections_postponed():
    """Postpone Python's garbage collector while a graph is planned and pinned.

    Planning and pinning allocate an object or two per task in a burst, on a
    scheduler that already holds millions of objects; each collection that
    burst triggers walks all of them. Measured on a 200,000-task graph: the
    plugin took 2.6 s with collections during the burst, and recording its
    units alone went from 1.15 s to 0.24 s with them postponed. The
    collections still happen, once, after the burst.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _by_priority(u: Unit):
    return u.priority or ()


def graph_order(keys) -> list:
    """A graph's keys in the order the planner is given them.

    The planner keeps groups in the order it is given them. Sorted keys are
    chunk order for Dask collections, ("x", 0, 9) before ("x", 0, 10), so
    neighbouring chunks land on one worker and a later graph combining them
    finds them together. Keys that do not compare keep the given order.
    """
    try:
        return sorted(keys, key=_by_type_then_value)
    except TypeError:
        logger.debug("keys that do not compare: planning in the given order")
        return list(keys)


def _by_type_then_value(key):
    # Dask graphs mix tuple keys (chunks) with a few string keys (finalize).
    return type(key).__name__, key


def is_p2p_barrier(key, run_spec) -> bool:
    """A P2P shuffle's or rechunk's barrier. P2P reads its ``worker_restrictions``
    to choose the workers that take part, and pins each output where its
    partition is, at run time; the planner leaves it and all that follows
    it to Dask (``placed_at_run_time``)."""
    if _P2PBarrierTask is not None:
        return isinstance(run_spec, _P2PBarrierTask)
    return isinstance(key, str) and key.startswith("shuffle-barrier-")


def expected_seconds(prefix, prefix_mean: dict, unknown: float) -> float:
    """Expected compute seconds of a task of ``prefix`` (a ``TaskPrefix`` or
    ``None``): the plugin's own average for it (``prefix_mean``: name ->
    (mean, count)), else the scheduler's, else ``unknown``."""
    if prefix is not None:
        mean = prefix_mean.get(prefix.name)
        if mean is not None:
            return mean[0]
        if prefix.duration_average > 0:
            return prefix.duration_average
    return unknown


def unknown_duration(scheduler) -> float:
    """The scheduler's expected duration of a task of a kind never seen."""
    return float(getattr(scheduler, "UNKNOWN_TASK_DURATION", 0.5))


def _free(ts, opted_out: dict) -> bool:
    """May the plugin pin this task?"""
    return (
        ts.state == "released"
        and ts.run_spec is not None
        # (a task the scheduler has not given a priority cannot be sent by
        # us: distributed asserts one when a task goes to a worker)
        and ts.priority is not None
        and not ts.actor
        and not ts.worker_restrictions
        and not ts.host_restrictions
        and not ts.resource_restrictions
        and opted_out.get(ts.key, True) is not False
        and (ts.annotations or {}).get("autorestrict", True) is not False
    )


def _where(ts, held_at: dict) -> list[str] | None:
    """Where a task we may not pin already is, or is bound to, if one place.

    A root held for admission is bound to the worker whose queue holds it.
    """
    if ts.who_has:
        return [ws.address for ws in ts.who_has]
    if ts.processing_on is not None:
        return [ts.processing_on.address]
    if len(ts.worker_restrictions or ()) == 1 and not ts.loose_restrictions:
        (addr,) = ts.worker_restrictions
        if addr != HOLD:
            return [addr]
        queue = held_at.get(ts.key)
        return [queue] if queue is not None else None
    return None
