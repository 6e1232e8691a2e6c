"""The scheduler plugin: a thin adapter between the scheduler and the planner.

It reads the new tasks of each graph from ``scheduler.tasks``, asks
:func:`autorestrictor.plan` where they should run, and applies the answer as
worker restrictions before the scheduler transitions the tasks. It then keeps
its promises as the cluster changes: pins to a worker that leaves move to the
survivors, and a worker that joins takes over pieces that have not started.

Two design decisions, and why:

*Pins are hard* (``loose_restrictions=False``). With loose ones the
work-stealing extension lets any idle worker take a pinned task, and every
stolen root drags its output back across the network: exactly the traffic
the plan avoids. Hard pins are safe only because this plugin re-homes them
whenever a worker leaves (``remove_worker``), in the same event-loop tick in
which the scheduler parks them in ``no-worker``, and because a pin is
cleared once its task has run (a lost result is then recomputed anywhere).

*Pinned roots are admitted, not pushed* (option ``admission``). Dask's
queuing holds root tasks on the scheduler and hands them out as threads free
up; tasks with restrictions bypass that queue, and a worker sent all of its
roots at once runs ahead of their consumers and fills its memory. So the
plugin keeps its own queue per worker: pinned roots wait in ``no-worker``,
restricted to a placeholder address no worker has, and are released in
priority order whenever their worker has fewer tasks processing than
``worker-saturation`` allows, the same rule Dask's queue uses. A periodic
check releases them even if no transition prompts it.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
from collections import defaultdict, deque
from time import perf_counter, time
from typing import Any

import dask.config
import numpy as np
from distributed.diagnostics.plugin import SchedulerPlugin
from tornado.ioloop import PeriodicCallback

from autorestrictor.config import Options
from autorestrictor.planner import Plan, plan

logger = logging.getLogger("autorestrictor")

TOPIC = "autorestrictor"

#: Where held roots are "restricted" to: no worker has this address, so the
#: scheduler keeps them in ``no-worker`` until the plugin releases them.
HOLD = "autorestrictor://held"

#: Task states in which a pin still matters: the task has not run yet.
_PENDING = frozenset({"released", "waiting", "no-worker", "queued", "processing"})


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
        self.history: deque[dict] = deque(maxlen=self.options.history)
        # worker address -> pieces (lists of keys) this plugin pinned there
        self.pieces: dict[str, list[list]] = defaultdict(list)
        # worker address -> heap of (priority, key) of roots waiting for a slot
        self.held: dict[str, list] = defaultdict(list)
        self._held_at: dict = {}  # key -> the queue that currently owns it
        self.scheduler = None
        self._n_plans = 0
        self._release_soon = False
        self._admission = self.options.admission

    # -- lifecycle -----------------------------------------------------------

    async def start(self, scheduler) -> None:
        self._attach(scheduler)

    def _attach(self, scheduler) -> None:
        if self.scheduler is scheduler:
            return
        self.scheduler = scheduler
        from autorestrictor.http import add_routes

        add_routes(scheduler)
        if self._admission and dask.config.get("distributed.scheduler.no-workers-timeout", None):
            # Held roots sit in no-worker; a timeout there would fail them.
            self._admission = False
            logger.info("admission off: distributed.scheduler.no-workers-timeout is set")
        if self._admission and math.isinf(self._saturation()):
            self._admission = False
            logger.info("admission off: worker-saturation is inf (queuing disabled)")
        previous = scheduler.periodic_callbacks.get("autorestrictor-release")
        if previous is not None:  # a plugin registered again replaces the old one
            previous.stop()
        pc = PeriodicCallback(self._release_all, 500)
        scheduler.periodic_callbacks["autorestrictor-release"] = pc
        if getattr(scheduler, "status", None) is not None and scheduler.status.name == "running":
            pc.start()

    def restart(self, scheduler) -> None:
        # Every task is forgotten on restart; so are our pins.
        self.pieces.clear()
        self.held.clear()
        self._held_at.clear()

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
        self._n_plans += 1
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

    def _plan(self, scheduler, keys: list, annotations: dict) -> Plan:
        """Read the graph from scheduler state and call the planner.

        Touched tasks that must not move (already placed, restricted by the
        user or by P2P, actors, opted out, no longer ``released``) stay in
        the graph so its shape is right, as located or skipped nodes.
        """
        tasks = scheduler.tasks
        opted_out = annotations.get("autorestrict", {})
        try:
            # The planner keeps groups in the order it is given them. Sorted
            # keys are chunk order for Dask collections, ("x", 0, 9) before
            # ("x", 0, 10), so neighbouring chunks land on one worker and a
            # later graph combining them finds them together.
            keys = sorted(keys, key=_by_type_then_value)
        except TypeError:
            logger.debug("keys of mixed types: planning in the scheduler's order")
        dependencies: dict = {}
        nbytes: dict = {}
        priority: dict = {}
        who_has: dict = {}
        skip: list = []
        for key in keys:
            ts = tasks.get(key)
            if ts is None:
                continue
            dependencies[key] = [dts.key for dts in ts.dependencies]
            if ts.priority is not None:
                priority[key] = ts.priority[-1]
            if ts.nbytes >= 0:
                nbytes[key] = ts.nbytes
            if not _free(ts, opted_out):
                where = _where(ts)
                if where is not None:
                    who_has[key] = where
                else:
                    skip.append(key)
            for dts in ts.dependencies:
                if dts.key not in dependencies and dts.who_has:
                    who_has[dts.key] = [ws.address for ws in dts.who_has]
                    nbytes[dts.key] = dts.get_nbytes()
        workers = {ws.address: ws.nthreads for ws in scheduler.running}
        return plan(
            dependencies, workers, nbytes=nbytes, priority=priority,
            who_has=who_has, skip=skip, **dataclasses.asdict(self.options),
        )

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
        try:
            for key, w in zip(p.keys, p.worker_of.tolist()):
                ts = tasks[key]
                if self._admission and not ts.dependencies:
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
        # Forget finished pieces before adding this plan's, which are all
        # pending: pruning them too would walk the new graph a second time on
        # the event loop.
        self._prune()
        # pieces: runs of keys with one piece number (the plan lists a piece's
        # keys together, in order)
        order = np.argsort(p.piece_of, kind="stable")
        cuts = np.flatnonzero(np.diff(p.piece_of[order])) + 1
        keys = p.keys
        for run in np.split(order, cuts):
            self.pieces[p.workers[p.worker_of[run[0]]]].append(
                list(map(keys.__getitem__, run.tolist()))
            )
        if held:
            self._schedule_release()

    # -- admission -----------------------------------------------------------

    def _hold(self, addr: str, ts) -> None:
        """Queue a held root for ``addr``; a later queue for the same key wins."""
        heapq.heappush(self.held[addr], (ts.priority, ts.key))
        self._held_at[ts.key] = addr

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        # A task leaving "processing" frees a slot on its worker.
        if start == "processing" and self.held:
            self._schedule_release()

    def _schedule_release(self) -> None:
        if not self._release_soon and self.scheduler is not None:
            self._release_soon = True
            self.scheduler.loop.add_callback(self._release_all)

    def _saturation(self) -> float:
        s = getattr(self.scheduler, "WORKER_SATURATION", None)
        if s is None:
            s = dask.config.get("distributed.scheduler.worker-saturation", 1.1)
        return float(s)

    def _release_all(self) -> None:
        """Send held roots to their workers, as many as each has free slots."""
        self._release_soon = False
        scheduler = self.scheduler
        if scheduler is None or not self.held:
            return
        saturation = self._saturation()
        recs: dict = {}
        tasks = scheduler.tasks
        hold = {HOLD}
        for addr in list(self.held):
            heap = self.held[addr]
            ws = scheduler.workers.get(addr)
            if ws is None or ws not in scheduler.running:
                continue
            if math.isinf(saturation):
                free = len(heap)
            else:
                busy = len(ws.processing) - len(ws.long_running)
                free = max(math.ceil(saturation * ws.nthreads), 1) - busy
            pin = {addr}
            while heap and free > 0:
                _, key = heapq.heappop(heap)
                if self._held_at.get(key) != addr:
                    continue  # moved to another worker's queue
                del self._held_at[key]
                ts = tasks.get(key)
                if ts is None or ts.worker_restrictions != hold:
                    continue  # cancelled or forgotten meanwhile
                ts.worker_restrictions = pin
                if ts.state == "no-worker":
                    recs[key] = "processing"
                    free -= 1
            if not heap:
                del self.held[addr]
        if recs:
            scheduler.transitions(recs, f"autorestrictor-release-{time()}")

    # -- workers -------------------------------------------------------------

    def remove_worker(self, scheduler, worker: str, *, stimulus_id: str, **kwargs: Any) -> None:
        """Move the pending pieces of a departed worker onto the survivors.

        Runs after the scheduler has released the worker's tasks; the ones
        pinned to it sit in ``no-worker``. Each piece goes whole to the
        survivor with the least pinned work per thread; whatever is runnable
        is sent to it at once, held roots join its queue.
        """
        self._attach(scheduler)
        pieces = self.pieces.pop(worker, [])
        for _, key in self.held.pop(worker, ()):
            if self._held_at.get(key) == worker:
                del self._held_at[key]
        live = [keys for keys in (self._pending(scheduler, k, worker) for k in pieces) if keys]
        if not live:
            return
        running = list(scheduler.running)
        if not running:
            # No worker at all: nothing can run anyway. Unpin, so the
            # scheduler treats these tasks like any other when workers come.
            self._unpin(scheduler, [k for keys in live for k in keys], "no running worker left")
            return
        heap = [(self._pinned_load(ws.address) / ws.nthreads, ws.address, ws.nthreads)
                for ws in running]
        heapq.heapify(heap)
        moved = 0
        recs: dict = {}
        for keys in sorted(live, key=len, reverse=True):
            load, addr, nthreads = heapq.heappop(heap)
            self._repin(scheduler, keys, addr, recs)
            self.pieces[addr].append(keys)
            moved += len(keys)
            heapq.heappush(heap, (load + len(keys) / nthreads, addr, nthreads))
        scheduler.transitions(recs, stimulus_id)
        self._schedule_release()
        msg = {"action": "worker-removed", "worker": worker, "pieces": len(live), "tasks": moved}
        scheduler.log_event(TOPIC, msg)
        logger.info("worker %s left: %d pinned task(s) in %d piece(s) moved to %d survivor(s)",
                    worker, moved, len(live), len(running))

    def add_worker(self, scheduler, worker: str) -> None:
        """Give a new worker its share of the pieces that have not started.

        Pieces are taken whole, from the most loaded workers first. Held
        roots change queue, tasks not yet sent are re-pinned, and roots
        already sent but not running are asked back through the
        work-stealing extension, which moves them only if the old worker has
        not started them.
        """
        self._attach(scheduler)
        ws_new = scheduler.workers.get(worker)
        if ws_new is None or not self.pieces:
            return
        self._prune()
        total_threads = sum(ws.nthreads for ws in scheduler.running) or 1
        movable: list[tuple[int, str, list]] = []
        for addr, pieces in self.pieces.items():
            for keys in pieces:
                if self._unstarted(scheduler, keys, addr):
                    movable.append((len(keys), addr, keys))
        load = {a: self._pinned_load(a) for a in self.pieces}
        want = sum(load.values()) * ws_new.nthreads / total_threads
        if not movable or want <= 0:
            return
        stealing = scheduler.extensions.get("stealing")
        taken = 0
        recs: dict = {}
        # The most loaded workers give first, their largest pieces first.
        for n, addr, keys in sorted(movable, key=lambda m: (-load[m[1]], -m[0])):
            if taken + n / 2 > want:
                break
            if max(load[addr] - n, taken + n) >= load[addr]:
                continue  # moving this piece would not even out donor and newcomer
            self.pieces[addr].remove(keys)
            self.pieces[worker].append(keys)
            self._repin(scheduler, keys, worker, recs, stealing=stealing)
            load[addr] -= n
            taken += n
        if taken:
            scheduler.transitions(recs, f"autorestrictor-add-worker-{time()}")
            self._schedule_release()
            scheduler.log_event(TOPIC, {"action": "worker-added", "worker": worker, "tasks": taken})
            logger.info("worker %s joined: %d unstarted pinned task(s) moved to it", worker, taken)

    # -- helpers -------------------------------------------------------------

    @staticmethod
    def _pending(scheduler, keys: list, addr: str) -> list:
        """The keys of a piece still pinned by us (to ``addr`` or held) and not yet run."""
        tasks = scheduler.tasks
        mine = ({addr}, {HOLD})
        out = []
        for k in keys:
            ts = tasks.get(k)
            if ts is not None and ts.state in _PENDING and ts.worker_restrictions in mine:
                out.append(k)
        return out

    @staticmethod
    def _unstarted(scheduler, keys: list, addr: str) -> bool:
        tasks = scheduler.tasks
        mine = ({addr}, {HOLD})
        for k in keys:
            ts = tasks.get(k)
            if ts is None or ts.state not in _PENDING or ts.worker_restrictions not in mine:
                return False
            if ts.state == "processing" and ts.dependencies:
                # Non-root tasks are sent once their inputs exist: the piece has started.
                return False
        return True

    def _pinned_load(self, addr: str) -> int:
        return sum(len(keys) for keys in self.pieces.get(addr, ()))

    def _repin(self, scheduler, keys: list, addr: str, recs: dict, stealing=None) -> None:
        tasks = scheduler.tasks
        thief = scheduler.workers[addr]
        for k in keys:
            ts = tasks.get(k)
            if ts is None:
                continue
            if ts.worker_restrictions == {HOLD}:
                self._hold(addr, ts)
                continue
            ts.worker_restrictions = {addr}
            ts.loose_restrictions = False
            if ts.state == "no-worker":
                recs[k] = "processing"
            elif ts.state == "processing" and ts.processing_on is not thief:
                if stealing is not None:
                    stealing.move_task_request(ts, ts.processing_on, thief)
                else:
                    # Without the stealing extension a sent task stays where it
                    # is; unpin it so it is not bound to two workers' fates.
                    ts.worker_restrictions = set()

    def _unpin(self, scheduler, keys: list, why: str) -> None:
        # Unpinned tasks in no-worker are picked up by the scheduler as soon
        # as any worker arrives (bulk_schedule_unrunnable_after_adding_worker).
        for k in keys:
            self._held_at.pop(k, None)
            ts = scheduler.tasks.get(k)
            if ts is not None:
                ts.worker_restrictions = set()
        logger.info("unpinned %d task(s): %s", len(keys), why)
        scheduler.log_event(TOPIC, {"action": "unpinned", "tasks": len(keys), "reason": why})

    def _prune(self) -> None:
        """Forget pieces whose tasks have all run, so state stays bounded.

        A pin lasts until its task has run: the restrictions of a forgotten
        piece are cleared, so if one of its results is lost later and must be
        recomputed, Dask places it freely instead of waiting for a worker
        that may be gone.
        """
        if self.scheduler is None:
            return
        tasks = self.scheduler.tasks
        for addr in list(self.pieces):
            live = []
            for keys in self.pieces[addr]:
                if self._pending(self.scheduler, keys, addr):
                    live.append(keys)
                    continue
                for k in keys:
                    ts = tasks.get(k)
                    if ts is not None and ts.worker_restrictions == {addr}:
                        ts.worker_restrictions = set()
            if live:
                self.pieces[addr] = live
            else:
                del self.pieces[addr]

    def _record(
        self, record: dict, start: float, level: int = logging.INFO, exc_info=None
    ) -> None:
        """Keep, publish (event) and log, once, what happened to a graph."""
        record = {
            "id": self._n_plans,
            "time": time(),
            **record,
            "total_s": perf_counter() - start,
        }
        record.setdefault("plan_s", record["total_s"])
        self.history.append(record)
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


def _by_type_then_value(key):
    # Dask graphs mix tuple keys (chunks) with a few string keys (finalize).
    return type(key).__name__, key


def _free(ts, opted_out: dict) -> bool:
    """May the plugin pin this task?"""
    return (
        ts.state == "released"
        and ts.run_spec is not None
        and not ts.actor
        and not ts.worker_restrictions
        and not ts.host_restrictions
        and not ts.resource_restrictions
        and opted_out.get(ts.key, True) is not False
        and (ts.annotations or {}).get("autorestrict", True) is not False
    )


def _where(ts) -> list[str] | None:
    """Where a task we may not pin already is, or is bound to, if one place."""
    if ts.who_has:
        return [ws.address for ws in ts.who_has]
    if ts.processing_on is not None:
        return [ts.processing_on.address]
    if len(ts.worker_restrictions or ()) == 1 and not ts.loose_restrictions:
        (addr,) = ts.worker_restrictions
        return None if addr == HOLD else [addr]
    return None
