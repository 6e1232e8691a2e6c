"""Synthetic task graphs as plain mappings, for planner benchmarks and tests.

Keys are tuples like Dask's own (``("name", i)``); every generator returns
``(dependencies, nbytes)``.
"""

from __future__ import annotations


def reduction(n_roots: int, split: int = 4, chunk_bytes: float = 8e6):
    """``n_roots`` roots, one map task each, then a tree reduction ``split`` wide.

    100,000 roots give 233,333 tasks, 1,000,000 roots give 2,333,333.
    """
    deps: dict = {}
    nbytes: dict = {}
    for i in range(n_roots):
        deps[("root", i)] = ()
        deps[("map", i)] = (("root", i),)
    nbytes.update(dict.fromkeys(deps, chunk_bytes))
    level = [("map", i) for i in range(n_roots)]
    depth = 0
    while len(level) > 1:
        depth += 1
        name = f"partial-{depth}"
        nxt = []
        for j in range(0, len(level), split):
            k = (name, j // split)
            deps[k] = tuple(level[j : j + split])
            nbytes[k] = chunk_bytes
            nxt.append(k)
        level = nxt
    return deps, nbytes


def chains(n_chains: int, length: int = 4, chunk_bytes: float = 8e6):
    """``n_chains`` independent chains of ``length`` tasks."""
    deps: dict = {}
    for i in range(n_chains):
        deps[("stage-0", i)] = ()
        for s in range(1, length):
            deps[(f"stage-{s}", i)] = ((f"stage-{s - 1}", i),)
    return deps, dict.fromkeys(deps, chunk_bytes)


def halo(n_chunks: int, chunk_bytes: float = 8e6, edge_fraction: float = 0.01):
    """Chunks that need their neighbours' edges (``map_overlap``), then a sum.

    Each chunk yields a left and a right edge slice; overlapped chunk ``i``
    reads chunk ``i`` and the facing edges of ``i - 1`` and ``i + 1``.
    """
    deps: dict = {}
    nbytes: dict = {}
    edge = chunk_bytes * edge_fraction
    for i in range(n_chunks):
        deps[("x", i)] = ()
        deps[("left", i)] = (("x", i),)
        deps[("right", i)] = (("x", i),)
        nbytes[("x", i)] = chunk_bytes
        nbytes[("left", i)] = nbytes[("right", i)] = edge
    for i in range(n_chunks):
        d = [("x", i)]
        if i > 0:
            d.append(("right", i - 1))
        if i < n_chunks - 1:
            d.append(("left", i + 1))
        deps[("overlap", i)] = tuple(d)
        deps[("total", i)] = (("overlap", i),)
        nbytes[("overlap", i)] = chunk_bytes
        nbytes[("total", i)] = 8
    return deps, nbytes


def all_to_all(n_in: int, n_out: int, chunk_bytes: float = 8e6):
    """A rechunk from rows to columns: every output takes a piece of every input."""
    deps: dict = {}
    nbytes: dict = {}
    for i in range(n_in):
        deps[("in", i)] = ()
        nbytes[("in", i)] = chunk_bytes
        for j in range(n_out):
            deps[("piece", i, j)] = (("in", i),)
            nbytes[("piece", i, j)] = chunk_bytes / n_out
    for j in range(n_out):
        deps[("out", j)] = tuple(("piece", i, j) for i in range(n_in))
        nbytes[("out", j)] = chunk_bytes
    return deps, nbytes


GRAPHS = {
    "reduction": lambda n: reduction(max(1, int(n * 3 / 7))),
    "chains": lambda n: chains(max(1, n // 4)),
    "halo": lambda n: halo(max(1, n // 5)),
    "all-to-all": lambda n: all_to_all(max(1, int(n**0.5)), max(1, int(n**0.5))),
}
"""Generators by name, each taking an approximate task count."""
