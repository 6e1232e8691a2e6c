"""The one place that changes the scheduler: pins, holds, releases, transitions.

Every ``worker_restrictions`` the plugin writes, and every transition it
asks for, is written here; the policies decide, the plugin's hooks read
state and hand the decisions to these functions. As in distributed's active
memory manager, the decision is data and the side effects live in one
module, so what the plugin can do to a scheduler is read in one place.

Restrictions are replaced, never mutated in place (distributed does the
same), so tasks pinned to one worker may share one set.
"""

from __future__ import annotations

from time import time

from autorestrictor.admission import worth_holding
from autorestrictor.state import HOLD, PENDING, Queues


def pin_plan(tss: list, worker_of: list[int], workers: list[str],
             admission: bool, is_rootish, max_readers: int) -> list[list]:
    """Pin each task of ``tss`` to ``workers[worker_of[i]]``; hold roots for admission.

    All or nothing: a failure undoes what was done, and re-raises. Returns
    the held roots (tasks) per worker index, in plan order, for the caller
    to queue.

    Hold what Dask's queue would hold: roots, and tasks of a large group with
    few inputs (seven tasks reading one small task), unless it is read too
    widely for holding it to save memory
    (:func:`autorestrictor.admission.worth_holding`, ``max_readers``).
    Root-ishness is asked
    (``is_rootish``, the scheduler's own test) before the pin is set (a
    pinned task is not root-ish to Dask), once per task group, as Dask
    decides it. The tasks are those the plan was read from, in plan order:
    no key is looked up again. Allocation is kept low on purpose: every
    object made here on a scheduler holding millions of them brings the
    next full garbage collection closer, and that runs on the event loop.
    """
    pins = [{addr} for addr in workers]
    hold = {HOLD}
    held: list[list] = [[] for _ in workers]
    by_group: dict = {}

    def rootish(ts) -> bool:
        tg = ts.group
        if tg not in by_group:
            by_group[tg] = is_rootish is not None and is_rootish(ts)
        return by_group[tg]

    try:
        for ts, w in zip(tss, worker_of):
            if admission and (not ts.dependencies or rootish(ts)) \
                    and worth_holding(ts, max_readers):
                ts.worker_restrictions = hold
                held[w].append(ts)
            else:
                ts.worker_restrictions = pins[w]
            if ts.loose_restrictions:
                ts.loose_restrictions = False
    except BaseException:
        # Undo: every restriction set here is one of these objects.
        ours = {id(hold), *map(id, pins)}
        for ts in tss:
            if id(ts.worker_restrictions) in ours:
                ts.worker_restrictions = set()
        raise
    return held


def reschedule(scheduler, keys: list) -> None:
    """Hand pinned tasks that Dask had already placed in its queue or in
    ``no-worker`` back to the scheduler, so that their new restriction counts.

    A queued task goes back to ``released`` and on (released, waiting, then
    processing on its pinned worker, or no-worker if held); an unheld task
    in no-worker is sent on. Others wait for their inputs as before.
    """
    tasks = scheduler.tasks
    hold = {HOLD}
    recs = {}
    for k in keys:
        ts = tasks[k]
        if ts.state == "queued":
            recs[k] = "released"
        elif ts.state == "no-worker" and ts.worker_restrictions != hold:
            recs[k] = "processing"
    transitions(scheduler, recs, f"autorestrictor-late-plan-{time()}")


def release(scheduler, released: list[tuple[object, str]]) -> None:
    """Send held roots to the workers admission chose: ``(key, worker)`` pairs."""
    if not released:
        return
    tasks = scheduler.tasks
    pins: dict[str, set] = {}
    recs = {}
    for key, addr in released:
        pin = pins.get(addr)
        if pin is None:
            pin = pins[addr] = {addr}
        tasks[key].worker_restrictions = pin
        recs[key] = "processing"
    scheduler.transitions(recs, f"autorestrictor-release-{time()}")


def repin(scheduler, queues: Queues, keys: list, addr: str, admission: bool,
          recs: dict) -> None:
    """Pin ``keys`` to ``addr``; roots join its admission queue.

    Tasks in ``no-worker`` that can now run are added to ``recs`` for the
    caller's one call of :func:`transitions`. A task already sent to another
    worker (a paused one) is asked back through the work-stealing extension,
    which moves it only if that worker has not started it. (Such roots reach
    ``addr`` beyond its admission slots: at most the paused worker's few
    queued roots, which would otherwise wait for it to resume.)
    """
    tasks = scheduler.tasks
    pin = {addr}
    stealing = scheduler.extensions.get("stealing")
    for k in keys:
        ts = tasks.get(k)
        if ts is None or ts.state not in PENDING:
            continue  # done, or forgotten
        if ts.state == "processing":
            victim = ts.processing_on
            if stealing is not None and victim is not None and victim.address != addr:
                ts.worker_restrictions = pin
                stealing.move_task_request(ts, victim, scheduler.workers[addr])
            continue
        if ts.worker_restrictions == {HOLD} or (
            admission and not ts.dependencies and ts.state == "no-worker"
        ):
            # A root the departed worker held or was running: it waits for a
            # free thread on its new worker like any held root.
            ts.worker_restrictions = {HOLD}
            queues.hold(addr, ts.priority, ts.key)
            continue
        ts.worker_restrictions = pin
        ts.loose_restrictions = False
        if ts.state == "no-worker":
            recs[k] = "processing"


def move(scheduler, queues: Queues, roots: list, rest: list, donor: str, thief: str) -> None:
    """Carry out a rebalancing move: ``roots`` (held) join ``thief``'s queue,
    and the ``rest`` of the moved tasks still pinned to ``donor`` are pinned
    to ``thief``."""
    tasks = scheduler.tasks
    for k in roots:
        ts = tasks.get(k)
        if ts is not None:
            queues.hold(thief, ts.priority, k)
    pin, old = {thief}, {donor}
    for k in rest:
        ts = tasks.get(k)
        if ts is not None and ts.worker_restrictions == old:
            ts.worker_restrictions = pin


def unpin(scheduler, queues: Queues, keys: list, requeue: bool = False) -> None:
    """Give ``keys`` back to Dask: no restriction, and those in ``no-worker``
    are sent on, or with ``requeue`` released, so that Dask decides again
    as for a new task: a root then joins Dask's own queue instead of going
    to a worker at once. (Unpinned tasks in no-worker are picked up by the
    scheduler as soon as any worker arrives:
    ``bulk_schedule_unrunnable_after_adding_worker``.)"""
    recs = {}
    then = "released" if requeue else "processing"
    for k in keys:
        queues.held_at.pop(k, None)
        ts = scheduler.tasks.get(k)
        if ts is not None:
            ts.worker_restrictions = set()
            if ts.state == "no-worker" and scheduler.running:
                recs[k] = then
    transitions(scheduler, recs, f"autorestrictor-unpin-{time()}")


def clear_done(scheduler, keys: list, addr: str) -> None:
    """Clear the pins of a finished unit's tasks: a lost result is then
    recomputed wherever Dask likes, not on a worker that may be gone."""
    tasks = scheduler.tasks
    here = {addr}
    for k in keys:
        ts = tasks.get(k)
        if ts is not None and ts.worker_restrictions == here:
            ts.worker_restrictions = set()


def transitions(scheduler, recs: dict, stimulus_id: str) -> None:
    if recs:
        scheduler.transitions(recs, stimulus_id)
