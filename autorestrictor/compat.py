"""What differs between the ``dask`` and ``distributed`` releases the plugin supports.

Every difference is detected here, by looking for the feature itself, never
by comparing version numbers; the rest of the package asks this module.
Each fallback says once, at import, why it is taken.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("autorestrictor")

try:  # P2P's barrier task; its module is private, so a rename must not break us
    from distributed.shuffle._core import P2PBarrierTask
except ImportError:  # pragma: no cover - depends on the distributed release
    P2PBarrierTask = None
    logger.info(
        "distributed.shuffle._core.P2PBarrierTask not found: P2P barriers are "
        "recognised by their key prefix 'shuffle-barrier-'"
    )


def is_p2p_barrier(key, run_spec) -> bool:
    """A P2P shuffle's or rechunk's barrier. P2P reads its ``worker_restrictions``
    to choose the workers that take part, and pins each output where its
    partition is, at run time; the planner leaves it and all that follows
    it to Dask (``placed_at_run_time``)."""
    if P2PBarrierTask is not None:
        return isinstance(run_spec, P2PBarrierTask)
    return isinstance(key, str) and key.startswith("shuffle-barrier-")
