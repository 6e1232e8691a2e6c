"""Hypothesis strategies and plain generators for random task graphs."""

from __future__ import annotations

import random

from hypothesis import strategies as st


def random_dag(rng: random.Random, n: int, max_deps: int = 3, prefix: str = "t") -> dict:
    """A random DAG: task i depends on up to ``max_deps`` earlier tasks."""
    deps = {}
    for i in range(n):
        k = rng.randint(0, min(i, max_deps))
        deps[f"{prefix}{i}"] = [f"{prefix}{j}" for j in rng.sample(range(i), k)]
    return deps


def independent_subgraphs(rng: random.Random, k: int, n: int) -> list[dict]:
    """``k`` random connected DAGs of ``n`` tasks each, with disjoint keys."""
    graphs = []
    for g in range(k):
        deps = {}
        for i in range(n):
            if i == 0:
                chosen = []
            else:
                # always one earlier task, so the subgraph is connected
                first = rng.randrange(i)
                extra = rng.sample(range(i), rng.randint(0, min(i, 2)))
                chosen = sorted({first, *extra})
            deps[("g", g, i)] = [("g", g, j) for j in chosen]
        graphs.append(deps)
    return graphs


@st.composite
def dags(draw, min_size: int = 1, max_size: int = 120) -> dict:
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(min_size, max_size))
    max_deps = draw(st.integers(0, 4))
    return random_dag(random.Random(seed), n, max_deps)


@st.composite
def clusters(draw, max_workers: int = 8) -> dict:
    n = draw(st.integers(1, max_workers))
    return {f"tcp://10.0.0.{i}:8786": draw(st.integers(1, 4)) for i in range(n)}


def runs() -> st.SearchStrategy:
    """``worker -> Run`` for the rebalancer: random costs, started work, paces
    and (for some runs) what each cut would send."""
    from autorestrictor.rebalance import Run

    @st.composite
    def run(draw):
        units = draw(st.lists(st.floats(0.01, 10), max_size=30))
        seams = draw(st.one_of(
            st.just(()),
            st.lists(st.floats(0, 3), min_size=len(units), max_size=len(units))))
        return Run(units, started=draw(st.sampled_from([0.0, 0.5, 5.0])),
                   speed=draw(st.floats(0.1, 4)), seams=seams)

    return st.dictionaries(st.sampled_from(list("abcdef")), run(), min_size=1)
