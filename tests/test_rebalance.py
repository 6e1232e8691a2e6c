"""The rebalancer as a pure function: hand-drawn cases and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import runs as random_runs

from autorestrictor.rebalance import Move, Run, rebalance


def apply(runs: dict[str, Run], moves: list[Move]) -> dict[str, list]:
    """Each worker's units (as (owner, index) labels) after the moves."""
    out = {w: [(w, i) for i in range(len(r.units))] for w, r in runs.items()}
    for m in moves:
        taken = out[m.donor][m.start : m.start + m.count]
        assert len(taken) == m.count, "a move takes units the donor has"
        assert m.start + m.count == len(out[m.donor]), "a move takes the donor's tail"
        del out[m.donor][m.start :]
        out[m.thief].extend(taken)
    return out


def finishes(runs: dict[str, Run], after: dict[str, list]) -> dict[str, float]:
    cost = {(w, i): u for w, r in runs.items() for i, u in enumerate(r.units)}
    return {
        w: (runs[w].started + sum(cost[x] for x in after[w])) / runs[w].speed for w in runs
    }


def test_joining_worker_takes_the_far_half():
    """
    a: [0 1 2 3 4 5 6 7]      a: [0 1 2 3]
    b: []                -->  b: [4 5 6 7]
    """
    moves = rebalance({"a": Run([1.0] * 8), "b": Run([])})
    assert moves == [Move("a", "b", 4, 4)]


def test_slow_worker_gives_by_pace_not_count():
    """A worker three times slower keeps a quarter of what is left."""
    runs = {"slow": Run([1.0] * 40, speed=1 / 3), "fast": Run([], speed=1.0)}
    (m,) = rebalance(runs)
    assert m.donor == "slow" and m.thief == "fast"
    assert m.count == 30  # 10 units at 1/3 speed finish with 30 at full speed


def test_whole_groups_move_before_a_group_is_cut():
    """
    pieces: 0 0 0 0 0 0 0 0 0 0 0 0 | 1 1 1 1 1 1 1 1     (the even cut is at 10)
    the tail from the change of piece (8 units) moves: one seam, no group cut
    """
    runs = {"a": Run([1.0] * 20, pieces=[0] * 12 + [1] * 8), "b": Run([])}
    assert rebalance(runs) == [Move("a", "b", 12, 8)]


def test_idle_worker_takes_from_the_latest_finisher_first():
    runs = {
        "a": Run([1.0] * 10),
        "b": Run([1.0] * 30),
        "c": Run([], started=1.0),
    }
    moves = rebalance(runs)
    assert moves[0].donor == "b" and moves[0].thief == "c"


def test_nobody_idle_means_no_move():
    assert rebalance({"a": Run([1.0] * 9), "b": Run([1.0])}) == []


def test_a_move_that_does_not_help_is_not_made():
    # one unit left: moving it would only swap who finishes last
    assert rebalance({"a": Run([5.0]), "b": Run([])}) == []
    # the gain (half a unit) is below min_gain
    assert rebalance({"a": Run([1.0, 1.0]), "b": Run([])}, min_gain=1.5) == []


def test_a_move_must_bring_the_last_finish_earlier():
    """``a`` and ``b`` would both finish at 10 s; ``b`` has started all its
    work and cannot give. Taking from ``a`` alone gains the graph nothing
    (and a seam would cost bytes), so nothing moves; with ``b`` done by
    5 s, the same move brings the last finish earlier and is made."""
    runs = {"a": Run([1.0] * 10), "b": Run([], started=10.0), "c": Run([])}
    assert rebalance(runs, idle=["c"]) == []
    runs = {"a": Run([1.0] * 10), "b": Run([], started=5.0), "c": Run([])}
    assert [m.donor for m in rebalance(runs, idle=["c"])] == ["a"]


def test_a_busy_slow_donor_gives_its_last_units():
    """A slow worker still running a task may give all it has not started."""
    runs = {"slow": Run([3.0, 3.0], started=3.0), "fast": Run([])}
    (m,) = rebalance(runs, min_gain=0.5)
    assert (m.start, m.count) == (0, 2) or (m.start, m.count) == (1, 1)
    # nothing started: the first unit stays
    assert all(m.start >= 1 for m in rebalance({"a": Run([3.0, 3.0]), "b": Run([])}))


def test_the_cut_moves_to_the_cheap_seam_only_when_it_pays():
    """
    units:  1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1     the even cut is at 8
    seams:  a cut at 6 sends nothing, every other cut costs the seam
    """
    cheap = [5.0] * 16
    cheap[6] = 0.0
    runs = {"a": Run([1.0] * 16, seams=cheap), "b": Run([])}
    assert rebalance(runs)[0].start == 6  # 5 s of transfer saved for 2 s of balance
    cheap = [0.5] * 16
    cheap[6] = 0.0
    runs = {"a": Run([1.0] * 16, seams=cheap), "b": Run([])}
    assert rebalance(runs)[0].start == 8  # half a second saved is not worth 2 s


def test_moves_from_one_donor_are_judged_together():
    """Three idle workers each take one of a slow worker's last units: each
    move alone gains 1 s, below min_gain; together they gain 3 s."""
    runs = {"slow": Run([1.0] * 4, started=1.0), **{w: Run([]) for w in "abc"}}
    moves = rebalance(runs, min_gain=1.5)
    assert sorted(m.thief for m in moves) == ["a", "b", "c"]
    assert all(m.donor == "slow" and m.count == 1 for m in moves)


def test_a_move_must_pay_for_its_seam():
    runs = {"a": Run([1.0] * 4, seams=[3.0] * 4), "b": Run([])}
    assert rebalance(runs) == []  # the gain (2 s) is less than the seam (3 s)
    runs = {"a": Run([1.0] * 4, seams=[1.5] * 4), "b": Run([])}
    assert rebalance(runs, min_gain=1.0) == [Move("a", "b", 2, 2)]  # 2 s > 1.5 s, 1 s


def test_bad_input_names_the_worker():
    with pytest.raises(ValueError, match="'w1'.*speed"):
        rebalance({"w1": Run([1.0], speed=0.0)})
    with pytest.raises(ValueError, match="'w2'.*negative"):
        rebalance({"w2": Run([-1.0])})
    with pytest.raises(ValueError, match="'w3'.*pieces"):
        rebalance({"w3": Run([1.0, 2.0], pieces=[0])})
    with pytest.raises(ValueError, match="'w5'.*seams"):
        rebalance({"w5": Run([1.0, 2.0], seams=[0.0])})
    with pytest.raises(ValueError, match="'w6'.*negative seam"):
        rebalance({"w6": Run([1.0], seams=[-1.0])})
    with pytest.raises(TypeError, match="Run"):
        rebalance({"w4": [1.0]})


@settings(max_examples=300, deadline=None)
@given(random_runs(), st.floats(0, 2))
def test_properties(runs, min_gain):
    moves = rebalance(runs, min_gain=min_gain)
    after = apply(runs, moves)  # asserts every move takes a tail the donor has
    labels = sorted(x for units in after.values() for x in units)
    before = sorted((w, i) for w, r in runs.items() for i in range(len(r.units)))
    assert labels == before, "no unit lost or duplicated"
    for w, units in after.items():
        own = [i for owner, i in units if owner == w]
        assert own == list(range(len(own))), "a donor keeps a prefix of its run"
    idle = {w for w, r in runs.items() if not r.units}
    assert all(m.thief in idle for m in moves)
    unmoved = {w: [(w, i) for i in range(len(r.units))] for w, r in runs.items()}
    old, new = finishes(runs, unmoved), finishes(runs, after)
    assert max(new.values()) <= max(old.values()) + 1e-9, "no move makes the finish later"
    if moves:
        assert max(new.values()) < max(old.values()) - min_gain + 1e-9, (
            "moves bring the last finish earlier by more than min_gain")
    for m in moves:
        assert m.count >= 1
        assert m.start >= 1 or runs[m.donor].started > 0, (
            "a donor with nothing started keeps the unit it is about to start")
        seam = runs[m.donor].seams[m.start] if len(runs[m.donor].seams) else 0.0
        gain = old[m.donor] - max(new[m.donor], new[m.thief])
        assert gain > max(min_gain, seam) - 1e-9 or len(moves) > 1, "a move pays for its seam"


@pytest.mark.parametrize("heavy_last", [False, True])
def test_the_cut_lands_between_subtrees(heavy_last):
    """
    units of a reduction's chunks in run order; one chunk of each block of
    four carries the block's partial sum (3 tasks), of sixteen the next level
    too. Heavy first:
      4 1 1 1 3 1 1 1 3 1 1 1 3 1 1 1 | 4 1 1 1 3 1 1 1 3 1 1 1 3 1 1 1
    or heavy last (the same, reversed). An even split would cut at 17 (15);
    the cut moves to 16, between two subtrees of sixteen.
    """
    units = [4.0 if i % 16 == 0 else 3.0 if i % 4 == 0 else 1.0 for i in range(32)]
    if heavy_last:
        units = units[::-1]
    (m,) = rebalance({"a": Run(units), "b": Run([])})
    assert m.start == 16
