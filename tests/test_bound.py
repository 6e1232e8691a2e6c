"""The lower bound on bytes a balanced plan must move (``tools/bound.py``)."""

from __future__ import annotations

import doctest

import pytest

from autorestrictor.tools import bound


def test_examples_run():
    result = doctest.testmod(bound)
    assert result.failed == 0 and result.attempted > 0


def test_tighter_balance_costs_more_bytes_on_the_seed_example():
    deps, nbytes, cost = bound.measure_graph("seed-sum", 0.01)
    assert set(deps) <= set(nbytes) and set(deps) <= set(cost)
    # Per-prefix means, as the plugin plans with: one task's own duration
    # (a pause on a loaded machine) could alone pass a share of 0.27.
    cost = bound.per_prefix(cost)
    loose = bound.min_transfer(deps, nbytes, cost, 4, 1.0)
    tight = bound.min_transfer(deps, nbytes, cost, 4, 0.27)
    assert loose["bound"] == 0.0
    # 200 columns in subtrees of 64, 64, 64 and 8: balance needs cut seams,
    # each one a partial sum of one column's size.
    column = max(nbytes.values())
    assert tight["optimal"] and tight["bound"] >= 3 * column
    assert max(tight["shares"]) <= 0.27 + 1e-9


def test_bad_share_is_rejected():
    with pytest.raises(ValueError, match="share must be in"):
        bound.min_transfer({"a": []}, {"a": 1}, {"a": 1}, 2, 0.0)
    with pytest.raises(ValueError, match="unknown workload"):
        bound.measure_graph("no-such-workload", 1.0)
