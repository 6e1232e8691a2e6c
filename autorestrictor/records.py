"""What the plugin did, kept once: its history, the scheduler's events, its log.

Each plan (or graph left to Dask, and why), each rebalancing move, each
re-homing and each fault is kept in the state's bounded history, published
as a structured event on the scheduler (``scheduler.log_event(TOPIC, ...)``,
as distributed's extensions do) and logged once, with lazy ``%``-formatting.
"""

from __future__ import annotations

import logging
import weakref
from time import perf_counter, time

from autorestrictor.state import TOPIC, State

logger = logging.getLogger("autorestrictor")


def plan_record(scheduler, st: State, record: dict, start: float,
                level: int = logging.INFO, exc_info=None) -> None:
    """Keep, publish and log what happened to a graph."""
    record = {"id": st.n_plans, "time": time(), **record, "total_s": perf_counter() - start}
    record.setdefault("plan_s", record["total_s"])
    st.history.append(record)
    scheduler.log_event(TOPIC, {"action": "plan", **record})
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


def move_record(scheduler, st: State, donor: str, thief: str, tasks: int, units: int,
                seconds: float, slowdown: float, predicted_bytes: float = 0.0) -> None:
    """Keep, publish and log a rebalancing move (``predicted_bytes``: what its
    cut is expected to send between the two, of the sizes known)."""
    msg = {
        "action": "rebalance", "from": donor, "to": thief, "tasks": tasks,
        "units": units, "seconds": round(seconds, 3),
        "predicted_bytes": int(predicted_bytes),
        "why": f"{thief} ran out of unstarted work; {donor} would finish last "
               f"(its tasks take {slowdown:.2f}x the median worker's)",
        "time": time(),
    }
    st.moves.append(msg)
    scheduler.log_event(TOPIC, msg)
    logger.debug("rebalance: %d task(s) in %d unit(s) from %s to %s",
                 tasks, units, donor, thief)


def rehome_record(scheduler, worker: str, pieces: int, tasks: int, survivors: int,
                  why: str) -> None:
    scheduler.log_event(TOPIC, {"action": "rehomed", "worker": worker, "pieces": pieces,
                                "tasks": tasks, "why": why})
    logger.info("%s: %d pinned task(s) in %d piece(s) moved to %d other worker(s)",
                why, tasks, pieces, survivors)


def unpin_record(scheduler, n: int, why: str) -> None:
    logger.info("unpinned %d task(s): %s", n, why)
    scheduler.log_event(TOPIC, {"action": "unpinned", "tasks": n, "reason": why})


def fault_record(scheduler, st: State, where: str, e: BaseException, hand_back: bool) -> None:
    """A hook raised: say so once in the log, every time in the events."""
    if where not in st.faults:
        st.faults.add(where)
        logger.warning("autorestrictor: %s failed; %s", where,
                       "handing every pin back to Dask" if hand_back else "carrying on",
                       exc_info=e)
    if scheduler is not None:
        scheduler.log_event(TOPIC, {"action": "fault", "where": where,
                                    "error": repr(e), "hand_back": hand_back})


def log_with_the_scheduler(scheduler) -> None:
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
