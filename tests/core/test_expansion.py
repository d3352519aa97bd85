"""Expansion selection: entropy-guided top-K with branch penalty, random mode, forest version."""

from __future__ import annotations

import numpy as np
import pytest
from core_strategies import random_trees
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.core.expansion import expansion_scores, select_nodes, select_nodes_forest
from at2po.core.tree import TurnTree, stack_trees

# root 0 has 3 children (1, 2, 3); 1 -> 4 -> 6 (leaf); 1 -> 5 (leaf); 2 -> 7 (leaf); 3 is a leaf
PARENT = np.array([-1, 0, 0, 0, 1, 1, 4, 2])
ENTROPY = np.array([0.0, 1.0, 0.5, 2.0, 0.75, 5.0, 1.0, 4.0])  # dyadic: exact ties
IS_LEAF = np.array([False, False, False, True, False, True, True, True])


def test_scores_hand() -> None:
    s = expansion_scores(PARENT, ENTROPY, alpha=0.25)
    # root: 0 - .25*3; 1, 2, 3: H - .25*3 (siblings under root); 4, 5: H - .25*2; 6: H - .25*1; 7: H - .25*1
    assert s.tolist() == [-0.75, 0.25, -0.25, 1.25, 0.25, 4.5, 0.75, 3.75]


def test_entropy_topk_excludes_leaves_and_breaks_ties_by_index() -> None:
    # candidates 0, 1, 2, 4 with scores -.75, .25, -.25, .25 -> 1, 4 (tie, lower index first), 2, 0
    assert select_nodes(PARENT, ENTROPY, IS_LEAF, k=3, alpha=0.25) == [1, 4, 2]
    assert select_nodes(PARENT, ENTROPY, IS_LEAF, k=4, alpha=0.25) == [1, 4, 2, 0]


def test_fewer_candidates_than_k_repeats_ranking() -> None:
    assert select_nodes(PARENT, ENTROPY, IS_LEAF, k=6, alpha=0.25) == [1, 4, 2, 0, 1, 4]
    # a fresh tree: only the root is a candidate -> K new chains
    assert select_nodes(np.array([-1]), np.zeros(1), np.array([False]), k=3) == [0, 0, 0]


def test_branch_penalty_moves_choice() -> None:
    # with a huge alpha the penalty dominates: node 4 (2 siblings) beats node 1 (3 siblings) despite lower H
    assert select_nodes(PARENT, ENTROPY, IS_LEAF, k=1, alpha=10.0) == [4]
    assert select_nodes(PARENT, ENTROPY, IS_LEAF, k=1, alpha=0.0) == [1]


def test_allow_leaves() -> None:
    assert select_nodes(PARENT, ENTROPY, IS_LEAF, k=2, alpha=0.25, allow_leaves=True) == [5, 7]


def test_random_mode_uniform_over_candidates_and_seeded() -> None:
    rng = np.random.default_rng(0)
    counts = np.zeros(len(PARENT))
    for _ in range(2000):
        for i in select_nodes(PARENT, ENTROPY, IS_LEAF, k=2, mode="random", rng=rng):
            counts[i] += 1
    assert counts[IS_LEAF].sum() == 0
    frac = counts[~IS_LEAF] / counts.sum()
    assert np.abs(frac - 0.25).max() < 0.03  # 4 candidates, 4,000 draws
    assert select_nodes(PARENT, ENTROPY, IS_LEAF, 3, mode="random", rng=7) == select_nodes(
        PARENT, ENTROPY, IS_LEAF, 3, mode="random", rng=7
    )
    picks = select_nodes(PARENT, ENTROPY, IS_LEAF, k=4, mode="random", rng=1)
    assert sorted(picks) == [0, 1, 2, 4]  # without replacement when enough candidates


def test_errors() -> None:
    with pytest.raises(ValueError, match="expansion mode"):
        select_nodes(PARENT, ENTROPY, IS_LEAF, 2, mode="beam")
    with pytest.raises(ValueError, match="is_leaf has shape"):
        select_nodes(PARENT, ENTROPY, IS_LEAF[:3], 2)
    with pytest.raises(ValueError, match="topological"):
        select_nodes(np.array([-1, 2, 0]), np.zeros(3), np.zeros(3, bool), 1)


@settings(max_examples=40, deadline=None)
@given(trees=st.lists(random_trees(max_nodes=10), min_size=1, max_size=5), k=st.integers(0, 8))
def test_forest_matches_per_tree(trees, k: int) -> None:
    tts = [TurnTree.from_arrays(p, e, r) for p, e, r in trees]
    arrays, _, off = stack_trees(tts)
    got = select_nodes_forest(arrays.parent, arrays.entropy, arrays.is_leaf, k)
    assert got.shape == (len(trees), k)
    for t, (p, e, _) in enumerate(trees):
        leaf = arrays.is_leaf[off[t] : off[t + 1]]
        one = select_nodes(p, e, leaf, k)
        assert [int(x) - off[t] for x in got[t]] == one


def test_forest_random_mode_stays_in_tree() -> None:
    t = TurnTree.from_arrays(PARENT, ENTROPY, np.where(IS_LEAF, 1.0, np.nan))
    arrays, _, off = stack_trees([t, t, t])
    got = select_nodes_forest(arrays.parent, arrays.entropy, arrays.is_leaf, 6, mode="random", rng=0)
    for row, start in zip(got, off[:-1], strict=True):
        local = row - start
        assert set(local.tolist()) == {0, 1, 2, 4}  # 4 candidates, K=6: permutation then repeats


def _relabel(perm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PARENT/ENTROPY/IS_LEAF with non-root node i renamed inv[i] (a valid topological order is kept: parents
    first), and the map old → new."""
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size)
    parent = np.full(perm.size, -1)
    for new, old in enumerate(perm):
        parent[new] = -1 if PARENT[old] < 0 else inv[PARENT[old]]
    return parent, ENTROPY[perm], IS_LEAF[perm], inv


@pytest.mark.parametrize("mode", ["entropy", "random"])
def test_keys_make_the_pick_independent_of_node_order(mode: str) -> None:
    """Continuous batching adds nodes in the order turns end: with per-node keys the same nodes are picked
    whatever their indices (ties included: nodes 1 and 4 tie at alpha 0.25)."""
    keys = np.array([0.9, 0.3, 0.6, 0.1, 0.2, 0.8, 0.4, 0.7])
    base = select_nodes_forest(PARENT, ENTROPY, IS_LEAF, 3, 0.25, mode, keys=keys)[0]
    # entropy: the 1/4 tie goes to the lower key (4), not the lower index; random: candidates 0, 1, 2, 4 ranked
    # by key: 4 (.2), 1 (.3), 2 (.6), 0 (.9)
    assert base.tolist() == [4, 1, 2]
    perm = np.array([0, 2, 1, 4, 3, 7, 5, 6])  # parents still before children
    parent, ent, leaf, inv = _relabel(perm)
    got = select_nodes_forest(parent, ent, leaf, 3, 0.25, mode, keys=keys[perm])[0]
    assert got.tolist() == inv[base].tolist()
    with pytest.raises(ValueError, match="keys has shape"):
        select_nodes_forest(PARENT, ENTROPY, IS_LEAF, 3, keys=keys[:3])
