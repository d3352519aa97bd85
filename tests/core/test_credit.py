"""Credit assignment: hand-computed trees, properties on random trees, the estimate() registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from core_strategies import descendant_leaves, random_trees
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.core.credit import (
    ADV_MODES,
    CREDIT_ESTIMATORS,
    VALUE_MODES,
    Credit,
    estimate,
    node_values,
    turn_advantages,
)
from at2po.core.tree import TurnTree, stack_trees

VALUE_MODE_NAMES = tuple(VALUE_MODES)  # the built-ins, snapshotted before any test registers more
ADV_MODE_NAMES = tuple(ADV_MODES)  # the built-ins, snapshotted before any test registers more

NAN = math.nan
# root 0 ── 1 (H .5+) ── 3 (H .5, r 1)
#        │           └── 4 (H 1.5, r 0)
#        └── 2 (H 2) ── 5 (H 1, r 1)
PARENT = np.array([-1, 0, 0, 1, 1, 2])
ENTROPY = np.array([0.0, 1.0, 2.0, 0.5, 1.5, 1.0])
REWARD = np.array([NAN, NAN, NAN, 1.0, 0.0, 1.0])
E = math.e
# V by hand, unnormalised leaves (V(leaf) = r)
V_HAND = {
    # node 1: w = .5/2, 1.5/2 -> .25 ; node 2: single child -> 1 ; root: w = 1/3, 2/3 -> .25/3 + 2/3
    "child_weighted": [0.25 / 3 + 2 / 3, 0.25, 1.0, 1.0, 0.0, 1.0],
    # node 1: softmax(.5, 1.5) = (1/(1+e), e/(1+e)) -> 1/(1+e); root: softmax(1, 2) -> same weights
    "child_softmax": [(1 / (1 + E)) ** 2 + E / (1 + E), 1 / (1 + E), 1.0, 1.0, 0.0, 1.0],
    "child_mean": [0.75, 0.5, 1.0, 1.0, 0.0, 1.0],
    "leaf_mean": [2 / 3, 0.5, 1.0, 1.0, 0.0, 1.0],
}


def a_hand(v: list[float], mode: str) -> list[float]:
    """Advantages written out node by node for this tree (parents: 1,2 <- 0; 3,4 <- 1; 5 <- 2)."""
    v0, v1, v2, v3, v4, v5 = v
    if mode == "value":
        return [0, v1, v2, v3, v4, v5]
    if mode == "td":
        return [0, v1 - v0, v2 - v0, v3 - v1, v4 - v1, v5 - v2]
    if mode == "global":
        return [0, v1 - v0, v2 - v0, v3 - v0, v4 - v0, v5 - v0]
    return [0, 2 * v1 - 2 * v0, 2 * v2 - 2 * v0, 2 * v3 - v1 - v0, 2 * v4 - v1 - v0, 2 * v5 - v2 - v0]


@pytest.mark.parametrize("value_mode", VALUE_MODE_NAMES)
def test_node_values_hand(value_mode: str) -> None:
    v = node_values(PARENT, ENTROPY, REWARD, value_mode, normalize_leaves=False)
    np.testing.assert_allclose(v, V_HAND[value_mode], rtol=1e-12)


@pytest.mark.parametrize("adv_mode", ADV_MODE_NAMES)
@pytest.mark.parametrize("value_mode", VALUE_MODE_NAMES)
def test_turn_advantages_hand(value_mode: str, adv_mode: str) -> None:
    a = turn_advantages(PARENT, ENTROPY, REWARD, value_mode, adv_mode, normalize_leaves=False)
    np.testing.assert_allclose(a, a_hand(V_HAND[value_mode], adv_mode), rtol=1e-12, atol=1e-12)


def test_leaf_normalisation_population_std_hand() -> None:
    # leaves r = 1, 0, 1: mean 2/3, population std sqrt(2/9)
    sd = math.sqrt(2 / 9)
    hi, lo = (1 - 2 / 3) / (sd + 1e-6), (0 - 2 / 3) / (sd + 1e-6)
    v = node_values(PARENT, ENTROPY, REWARD, "child_mean")
    np.testing.assert_allclose(v, [(hi + lo) / 4 + hi / 2, (hi + lo) / 2, hi, hi, lo, hi], rtol=1e-12)
    # sample std (ddof 1) = sqrt(1/3)
    v = node_values(PARENT, ENTROPY, REWARD, "child_mean", std="sample", eps=0.0)
    sd = math.sqrt(1 / 3)
    np.testing.assert_allclose(v[3:], [(1 / 3) / sd, (-2 / 3) / sd, (1 / 3) / sd], rtol=1e-12)


def test_child_weighted_zero_entropy_falls_back_to_mean() -> None:
    ent = ENTROPY.copy()
    ent[[3, 4]] = 0.0  # both children of node 1 have H = 0
    v = node_values(PARENT, ent, REWARD, "child_weighted", normalize_leaves=False)
    assert v[1] == pytest.approx(0.5)
    ent[3] = 0.7  # one zero-entropy child gets weight 0
    v = node_values(PARENT, ent, REWARD, "child_weighted", normalize_leaves=False)
    assert v[1] == pytest.approx(1.0)


def test_all_equal_rewards_give_zero_and_finite() -> None:
    r = np.where(np.isnan(REWARD), NAN, 1.0)
    for vm in VALUE_MODE_NAMES:
        for am in ADV_MODE_NAMES:
            a = turn_advantages(PARENT, np.zeros(6), r, vm, am)
            assert np.isfinite(a).all() and np.abs(a).max() < 1e-9


def test_root_only_and_single_leaf_trees() -> None:
    assert node_values(np.array([-1]), np.zeros(1), np.array([NAN])).tolist() == [0.0]
    v = node_values(np.array([-1, 0, 1]), np.array([0, 1.0, 1.0]), np.array([NAN, NAN, 3.0]))
    assert v.tolist() == [0.0, 0.0, 0.0]  # one leaf: r̂ = 0


def test_bad_inputs_raise_with_node() -> None:
    with pytest.raises(ValueError, match="leaf node 4"):
        node_values(PARENT, ENTROPY, np.array([NAN, NAN, NAN, 1.0, NAN, 1.0]))
    with pytest.raises(ValueError, match="node 2 has parent 3"):
        node_values(np.array([-1, 0, 3, 1]), np.zeros(4), np.array([NAN, NAN, 1.0, 0.0]))
    with pytest.raises(ValueError, match="value_mode"):
        node_values(PARENT, ENTROPY, REWARD, "child_max")
    with pytest.raises(ValueError, match="adv_mode"):
        turn_advantages(PARENT, ENTROPY, REWARD, adv_mode="gae")
    with pytest.raises(ValueError, match="negative entropy"):
        node_values(PARENT, -ENTROPY, REWARD)
    with pytest.raises(ValueError, match="tree_index disagrees"):
        node_values(np.r_[PARENT, PARENT + 6 * (PARENT >= 0)], np.r_[ENTROPY, ENTROPY], np.r_[REWARD, REWARD],
                    tree_index=np.zeros(12, int))


# --- properties on random trees -------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(tree=random_trees(), value_mode=st.sampled_from(VALUE_MODE_NAMES), norm=st.booleans())
def test_values_within_leaf_range(tree, value_mode: str, norm: bool) -> None:
    parent, entropy, reward = tree
    v = node_values(parent, entropy, reward, value_mode, normalize_leaves=norm)
    below = descendant_leaves(parent)
    for i, leaves in enumerate(below):
        if leaves:
            lv = v[leaves]
            assert lv.min() - 1e-9 <= v[i] <= lv.max() + 1e-9


@settings(max_examples=60, deadline=None)
@given(tree=random_trees())
def test_leaf_mean_equals_brute_force(tree) -> None:
    parent, entropy, reward = tree
    v = node_values(parent, entropy, reward, "leaf_mean")
    leaves = [i for i, ls in enumerate(descendant_leaves(parent)) if ls == [i]]
    r = reward[leaves]
    rhat = dict(zip(leaves, (r - r.mean()) / (r.std() + 1e-6), strict=True))
    for i, ls in enumerate(descendant_leaves(parent)):
        expect = np.mean([rhat[j] for j in ls]) if ls else 0.0
        assert v[i] == pytest.approx(expect, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 5), min_size=1, max_size=8),
    data=st.data(),
    value_mode=st.sampled_from(VALUE_MODE_NAMES),
    std=st.sampled_from(["population", "sample"]),
)
def test_chains_reduce_to_grpo(lengths: list[int], data, value_mode: str, std: str) -> None:
    """Chain mode (root with single-path children): every turn's AT²PO advantage = its trajectory's GRPO one."""
    tree = TurnTree(prompt_ids=[1])
    leaves = []
    for length in lengths:
        p = 0
        for _ in range(length):
            p = tree.add_node(p, gen_logprobs=[-data.draw(st.floats(0.0, 3.0))])
        tree.nodes[p].reward = data.draw(st.sampled_from([-1.0, 0.0, 1.0]))
        leaves.append(p)
    arrays, tidx, _ = stack_trees([tree])
    grpo = estimate("grpo", arrays, tidx, std=std).values
    at2po = estimate("at2po", arrays, tidx, value_mode=value_mode, adv_mode="value", std=std).values
    for traj, leaf in zip(tree.trajectories(), leaves, strict=True):
        np.testing.assert_allclose(at2po[traj], grpo[leaf], atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(trees=st.lists(random_trees(max_nodes=9), min_size=1, max_size=5), value_mode=st.sampled_from(VALUE_MODE_NAMES),
       adv_mode=st.sampled_from(ADV_MODE_NAMES))
def test_forest_equals_per_tree(trees, value_mode: str, adv_mode: str) -> None:
    """One vectorised call over concatenated trees = one call per tree."""
    tts = [TurnTree.from_arrays(p, e, r) for p, e, r in trees]
    arrays, tidx, off = stack_trees(tts)
    got = estimate("at2po", arrays, tidx, value_mode=value_mode, adv_mode=adv_mode).values
    for t, (p, e, r) in enumerate(trees):
        one = turn_advantages(p, e, r, value_mode, adv_mode)
        np.testing.assert_allclose(got[off[t] : off[t + 1]], one, atol=1e-9)


# --- estimators -------------------------------------------------------------------------------------------
def _prompt_with_groups(rng: np.random.Generator) -> TurnTree:
    """One prompt, 3 Tree-GRPO trees (groups), each a chain plus a fork."""
    tree = TurnTree(prompt_ids=[1])
    for g in range(3):
        a = tree.add_node(0, group=g, gen_logprobs=[-0.3])
        b = tree.add_node(a, gen_logprobs=[-0.2])
        c = tree.add_node(a, gen_logprobs=[-0.5])
        for leaf in (b, c):
            tree.nodes[leaf].reward = float(rng.integers(0, 2))
        tree.nodes[a].info["x"] = 1
    return tree


def test_tree_grpo_is_intra_plus_inter_brute_force() -> None:
    rng = np.random.default_rng(3)
    trees = [_prompt_with_groups(rng) for _ in range(4)]
    arrays, tidx, off = stack_trees(trees)
    assert arrays.group is not None
    got = estimate("tree_grpo", arrays, tidx)
    assert got.per_trajectory
    for t, tree in enumerate(trees):
        leaves = tree.leaves()
        r_all = np.array([tree.nodes[i].reward for i in leaves])
        for i in leaves:
            g = tree.nodes[i].group
            r_g = np.array([tree.nodes[j].reward for j in leaves if tree.nodes[j].group == g])
            intra = (tree.nodes[i].reward - r_g.mean()) / (r_g.std() + 1e-6)
            inter = (tree.nodes[i].reward - r_all.mean()) / (r_all.std() + 1e-6)
            assert got.values[off[t] + i] == pytest.approx(intra + inter, abs=1e-9)
        internal = [i for i in range(len(tree)) if i not in leaves]
        assert np.all(got.values[off[t] + np.array(internal)] == 0.0)
    # one tree per prompt: intra == inter, so Tree-GRPO = 2 × GRPO
    single = estimate("tree_grpo", arrays, tidx, group=np.zeros_like(arrays.group)).values
    np.testing.assert_allclose(single, 2 * estimate("grpo", arrays, tidx).values)


def test_grpo_normalises_per_prompt() -> None:
    t1 = TurnTree.from_arrays(np.array([-1, 0, 0, 0]), None, np.array([NAN, 1.0, 0.0, 0.0]))
    t2 = TurnTree.from_arrays(np.array([-1, 0, 0]), None, np.array([NAN, 5.0, 7.0]))
    arrays, tidx, _ = stack_trees([t1, t2])
    c = estimate("grpo", arrays, tidx, eps=0.0)
    s1 = math.sqrt(2 / 9)
    np.testing.assert_allclose(c.values, [0, (1 / 3) / s1 * 2, -(1 / 3) / s1, -(1 / 3) / s1, 0, -1, 1], atol=1e-12)
    assert isinstance(c, Credit) and c.per_trajectory


def test_estimate_registry_and_errors() -> None:
    assert {"grpo", "tree_grpo", "at2po"} <= set(CREDIT_ESTIMATORS)
    arrays, tidx, _ = stack_trees([TurnTree.from_arrays(PARENT, ENTROPY, REWARD)])
    c = estimate("at2po", arrays, tidx, value_mode="child_mean", adv_mode="td", normalize_leaves=False)
    assert not c.per_trajectory
    np.testing.assert_allclose(c.values, a_hand(V_HAND["child_mean"], "td"), atol=1e-12)
    with pytest.raises(ValueError, match="unknown credit estimator 'ppo'"):
        estimate("ppo", arrays, tidx)
    with pytest.raises(TypeError, match="value_mod"):
        estimate("at2po", arrays, tidx, value_mod="child_mean")
    arrays.group = None
    with pytest.raises(ValueError, match="group"):
        estimate("tree_grpo", arrays, tidx)


def test_token_advantages_broadcast() -> None:
    import torch

    from at2po.core.credit import token_advantages

    tree = TurnTree.from_arrays(PARENT, ENTROPY, REWARD)
    arrays, tidx, off = stack_trees([tree, tree])
    # rows: root→3 of tree 1 and root→5 of tree 0, tree-local node ids, 2 prompt tokens each
    node_ids = torch.tensor([[-1, -1, 1, 1, 3, 3], [-1, -1, 2, 2, 5, 5]])
    leaf = torch.tensor([3, 5])
    row_off = torch.tensor([off[1], off[0]])
    turn = estimate("at2po", arrays, tidx, value_mode="child_mean", normalize_leaves=False)
    got = token_advantages(turn, node_ids, leaf, row_off)
    v = V_HAND["child_mean"]
    expect = torch.tensor([[0, 0, v[1], v[1], v[3], v[3]], [0, 0, v[2], v[2], v[5], v[5]]], dtype=torch.float32)
    torch.testing.assert_close(got, expect)
    traj = estimate("grpo", arrays, tidx)
    got = token_advantages(traj, node_ids, leaf, row_off)
    assert torch.all(got[:, :2] == 0)
    assert torch.all(got[0, 2:] == float(traj.values[off[1] + 3]))
    assert torch.all(got[1, 2:] == float(traj.values[5]))
