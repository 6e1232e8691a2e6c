"""Where a departed (or paused) worker's pinned pieces go.

Pure: plain numbers in, a mapping out; it never imports ``distributed``.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Mapping


def place_pieces(pieces: Mapping[Hashable, float], load: Mapping[str, float],
                 nthreads: Mapping[str, int]) -> dict[Hashable, str]:
    """Give each piece, whole, to the worker with the least pinned work per thread.

    Largest pieces first (a greedy longest-processing-time rule); each
    placement adds the piece's ``cost`` to its worker's load. A piece stays
    whole: its tasks share inputs, and splitting it would send them across.
    Ties go to the smaller address. O(p log w) for p pieces on w workers.

    Parameters
    ----------
    pieces
        piece -> its work (tasks, or seconds).
    load
        worker -> work already pinned there, in the same unit.
    nthreads
        worker -> threads; the workers that may take a piece.

    Raises
    ------
    ValueError
        If there is no worker to take the pieces.

    Examples
    --------
    >>> place_pieces({"p": 6.0, "q": 2.0, "r": 2.0}, {"a": 0.0, "b": 4.0}, {"a": 1, "b": 2})
    {'p': 'a', 'q': 'b', 'r': 'b'}
    """
    if pieces and not nthreads:
        raise ValueError("no worker to place pieces on")
    heap = [(load.get(a, 0.0) / n, a) for a, n in nthreads.items()]
    heapq.heapify(heap)
    out = {}
    for piece, cost in sorted(pieces.items(), key=lambda kv: -kv[1]):
        per_thread, addr = heapq.heappop(heap)
        out[piece] = addr
        heapq.heappush(heap, (per_thread + cost / nthreads[addr], addr))
    return out
