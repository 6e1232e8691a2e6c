"""The scheduler plugin: hooks that read the scheduler, ask a policy, and act.

Each hook reads scheduler state through :mod:`autorestrictor.intake`, asks a
pure policy (:func:`autorestrictor.plan`, :mod:`~autorestrictor.admission`,
:func:`~autorestrictor.rebalance.rebalance` with :mod:`~autorestrictor.elastic`,
:mod:`~autorestrictor.recovery`, :mod:`~autorestrictor.learning`) and hands
the answer to :mod:`autorestrictor.actions`, the one module that writes
restrictions and calls transitions. What it did is kept by
:mod:`autorestrictor.records`; what it holds between hooks is
:class:`autorestrictor.state.State`, which lives on the scheduler so that a
plugin registered again takes over. The design, and why pins are hard and
roots admitted rather than pushed, is in ``docs/design.md``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
from time import monotonic
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin
from tornado.ioloop import PeriodicCallback

from autorestrictor import actions, admission, balancing, intake, membership, planning, records
from autorestrictor.config import Options
from autorestrictor.learning import compute_seconds
from autorestrictor.state import NAME, State, Unit

logger = logging.getLogger("autorestrictor")

_CHECK = "autorestrictor-release"  # the periodic check's name on the scheduler


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

    name = NAME

    def __init__(self, **options: Any):
        self.options = Options.from_config(**options)
        self.state = State(self.options)
        self.scheduler = None
        self._release_soon = False

    # Views of the shared state, for users and tests.
    @property
    def history(self):
        return self.state.history

    @property
    def moves(self):
        return self.state.moves

    @property
    def runs(self) -> dict[str, list[Unit]]:
        return self.state.runs

    @property
    def held(self) -> dict[str, list]:
        return self.state.queues.held

    # -- lifecycle -----------------------------------------------------------

    async def start(self, scheduler) -> None:
        self._attach(scheduler)

    def _attach(self, scheduler) -> None:
        if self.scheduler is scheduler:
            return
        self.scheduler = scheduler
        records.log_with_the_scheduler(scheduler)
        from autorestrictor.http import add_dashboard, add_routes

        add_routes(scheduler)
        previous = getattr(scheduler, "_autorestrictor", None)
        if previous is not None:  # registered again: take over the old instance's work
            previous.keep(self.options)
            self.state = previous
        scheduler._autorestrictor = self.state
        self.state.admission = self._admission_possible(scheduler)
        old = scheduler.periodic_callbacks.get(_CHECK)
        if old is not None:  # a plugin registered again replaces the old one's check
            old.stop()
        pc = PeriodicCallback(self._tick, self.options.check_interval * 1000)
        scheduler.periodic_callbacks[_CHECK] = pc
        if getattr(scheduler, "status", None) is not None and scheduler.status.name == "running":
            pc.start()
        try:
            add_dashboard(scheduler)
        except Exception as e:  # a page must never stop the plugin
            self._fault("dashboard page", e)

    def _admission_possible(self, scheduler) -> bool:
        if not self.options.admission:
            return False
        if getattr(scheduler, "no_workers_timeout", None):
            # Held roots sit in no-worker; a timeout there would fail them.
            logger.info("admission off: distributed.scheduler.no-workers-timeout is set")
            return False
        if math.isinf(intake.saturation(scheduler)):
            logger.info("admission off: worker-saturation is inf (queuing disabled)")
            return False
        return True

    def restart(self, scheduler) -> None:
        # Every task is forgotten on restart; so are our pins.
        self.state.forget_pins()

    def _tick(self) -> None:
        """The periodic check: release held roots, rebalance, or hand back if removed."""
        if self.scheduler is None:
            return
        if not isinstance(self.scheduler.plugins.get(self.name), AutoRestrictor):
            self._hand_back("the plugin was unregistered")
            return
        st = self.state
        try:
            moved = membership.sweep(self.scheduler, st)
            membership.check_memory(self.scheduler, st)
            if membership.check_unavailable(self.scheduler, st) or moved:
                self._schedule_release()
            # a graph kept for want of workers, once joining has settled
            if st.deferred and monotonic() - st.joined_at >= self.options.check_interval:
                if planning.late_plans(self.scheduler, st):
                    self._schedule_release()
        except Exception as e:
            self._fault("periodic check", e, hand_back=True)
            return
        self._release_all()

    def _hand_back(self, why: str) -> None:
        """Stop, and give every held or pinned task back to Dask."""
        scheduler, st = self.scheduler, self.state
        pc = scheduler.periodic_callbacks.pop(_CHECK, None)
        if pc is not None:
            pc.stop()
        keys = {k: None for units in st.runs.values() for u in units for k in u.keys}
        keys.update(dict.fromkeys(st.queues.held_at))
        st.forget_pins()
        if getattr(scheduler, "_autorestrictor", None) is st:
            del scheduler._autorestrictor
        membership.unpin(scheduler, st, list(keys), why)

    # -- graphs --------------------------------------------------------------

    def update_graph(self, scheduler, *, tasks: list, annotations: dict,
                     **kwargs: Any) -> None:
        self._attach(scheduler)
        if not self.options.enabled:
            return
        with _collections_postponed():
            if planning.plan_graph(scheduler, self.state, tasks, annotations):
                self._schedule_release()

    # -- admission and learning ----------------------------------------------

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        st = self.state
        if finish == "no-worker" and key in st.queues.held_at:
            # a held task whose inputs just became ready: release it soon
            self._schedule_release()
            return
        if start != "processing":
            return
        if finish == "memory":
            try:
                self._learn(key, kwargs)
            except Exception as e:
                self._fault("transition", e)
        # A task leaving "processing" frees a slot on its worker.
        if st.queues.held or st.has_runs():
            self._schedule_release()

    def _learn(self, key, kwargs: dict) -> None:
        """Learn from a finished task, and note held roots its readers wait for."""
        st = self.state
        ts = self.scheduler.tasks.get(key)
        if ts is None:
            return
        worker = kwargs.get("worker")
        if worker is not None and ts.prefix is not None:
            st.learned.observe(ts.prefix.name, worker,
                               compute_seconds(kwargs.get("startstops")), kwargs.get("nbytes"),
                               shape=intake.shape(ts, st.learned),
                               position=key[1:] if type(key) is tuple else None)
        if st.queues.held_at and ts.who_has:
            # (the release it may need is scheduled by the caller)
            admission.note_wanted(st.queues, ts, {ws.address for ws in ts.who_has},
                                  admission.WANTED_MISSING, self._size,
                                  self.options.light_edge_fraction)

    def _size(self, ts) -> float:
        return intake.output_bytes(ts, self.state.learned)

    def _schedule_release(self) -> None:
        if not self._release_soon and self.scheduler is not None:
            self._release_soon = True
            self.scheduler.loop.add_callback(self._release_all)

    def _release_all(self) -> None:
        """Rebalance if a worker ran out, then send each worker the held roots
        it has slots for."""
        self._release_soon = False
        if self.scheduler is None:
            return
        try:
            if balancing.maybe_rebalance(self.scheduler, self.state):
                self._schedule_release()
            self._release()
        except Exception as e:
            self._fault("release", e, hand_back=True)

    def _release(self) -> None:
        scheduler, q = self.scheduler, self.state.queues
        if not q.held:
            return
        saturation = intake.saturation(scheduler)
        tasks = scheduler.tasks
        q.wanted_new = False
        for addr in [a for a in q.wanted if a not in q.held]:
            del q.wanted[addr]  # (its queue is empty: released, moved or gone)

        def status(key):
            return intake.held_status(tasks, key)

        def size(key):
            return self._size(tasks[key])

        released = []
        thresholds = intake.spill_thresholds()
        front: tuple | None | bool = False  # (looked up once, when first needed)
        for addr in list(q.held):
            ws = scheduler.workers.get(addr)
            if ws is None or ws not in scheduler.running:
                continue
            free = admission.free_slots(
                ws.nthreads, len(ws.processing) - len(ws.long_running), saturation,
                len(q.held[addr]), (lambda ws=ws: intake.fetching(ws)) if ws.needs_what else None,
                intake.stalled(tasks, q.stalled, addr))
            room = intake.memory_room(ws, thresholds, self.state.learned) if free > 0 else math.inf
            memory = None
            if room != math.inf:
                if front is False:
                    front = q.front()
                memory = admission.Memory(room, size, bool(ws.processing), front)
            here = {addr}
            for key in admission.take(q, addr, free, status, memory):
                released.append((key, addr))
                admission.note_wanted(q, tasks[key], here, admission.WANTED_MISSING + 1,
                                      self._size, self.options.light_edge_fraction)
                for reader in admission.stalled_readers(tasks[key], here, q.held_at):
                    q.stalled.setdefault(addr, {})[reader] = key
        actions.release(scheduler, released)
        if q.wanted_new:  # found while releasing: another worker may have a slot
            self._schedule_release()

    # -- workers -------------------------------------------------------------

    def add_worker(self, scheduler, worker: str) -> None:
        """A joining worker is an idle worker: it takes the far end of the busiest runs."""
        self._attach(scheduler)
        self.state.joined_at = monotonic()
        if not self.state.has_runs():
            return
        self.state.joined.add(worker)
        try:
            membership.prune(scheduler, self.state)
            if balancing.maybe_rebalance(scheduler, self.state, force=True):
                self._schedule_release()
        except Exception as e:
            self._fault("add_worker", e)

    def remove_worker(self, scheduler, worker: str, *, stimulus_id: str, **kwargs: Any) -> None:
        """Move the pending units of a departed worker onto the survivors.

        Runs after the scheduler has released the worker's tasks; the ones
        pinned to it sit in ``no-worker``.
        """
        self._attach(scheduler)
        self.state.slow.discard(worker)
        self.state.joined.discard(worker)
        self.state.learned.forget_worker(worker)
        try:
            if membership.rehome(scheduler, self.state, worker, stimulus_id,
                                 f"worker {worker} left"):
                self._schedule_release()
        except Exception as e:
            self._fault("remove_worker", e)
            # whatever is still pinned to the gone worker
            if membership.sweep(scheduler, self.state):
                self._schedule_release()

    # -- safety nets ---------------------------------------------------------

    def _fault(self, where: str, e: BaseException, hand_back: bool = False) -> None:
        """A hook raised: say so once, and never leave a task stranded."""
        records.fault_record(self.scheduler, self.state, where, e, hand_back)
        if hand_back:
            self._hand_back(f"{where} failed: {e!r}")

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
