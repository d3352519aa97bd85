"""Rows → padded tensors, credit → per-token advantages, mini/micro-batch splitting."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.core.credit import estimate, token_advantages
from at2po.core.tree import TurnTree, stack_trees
from at2po.rollout.rows import flatten
from at2po.train.batching import collate, micro_batches, prompt_mini_batches


def _tree(prompt: list[int], shape: list[tuple[int, list[int], list[int]]], rewards: dict[int, float]) -> TurnTree:
    t = TurnTree(prompt_ids=prompt)
    for parent, obs, gen in shape:
        t.add_node(parent, obs_ids=obs, gen_ids=gen, gen_logprobs=[-0.5 - 0.1 * i for i in range(len(gen))])
    for leaf, r in rewards.items():
        t.nodes[leaf].reward = r
    return t


def _forest() -> list[TurnTree]:
    # tree 0: root → 1 → {2, 3}; tree 1: root → {1, 2}
    a = _tree([1, 2, 3], [(0, [], [10, 11]), (1, [20, 21], [12]), (1, [22], [13, 14])], {2: 1.0, 3: 0.0})
    b = _tree([4, 5], [(0, [], [30]), (0, [], [31, 32, 33])], {1: 0.0, 2: 1.0})
    return [a, b]


def test_collate_pads_right_and_keeps_masks() -> None:
    rows = flatten(_forest())
    batch = collate(rows, pad_id=0)
    assert batch.input_ids.shape == (4, max(len(r.input_ids) for r in rows))
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        assert batch.input_ids[i, :n].tolist() == r.input_ids
        assert batch.attention_mask[i].sum() == n and batch.attention_mask[i, n:].sum() == 0
        assert batch.response_mask[i, :n].tolist() == r.response_mask
        assert (batch.turn_ids[i, n:] == -1).all() and (batch.node_ids[i, n:] == -1).all()
    # observation tokens are masked out of the loss
    assert batch.response_mask[0, 5:7].tolist() == [0.0, 0.0]
    sub = batch.select([2, 3])
    assert sub.input_ids.shape[1] == max(len(rows[2].input_ids), len(rows[3].input_ids))


def _adv(batch, credit, rt, rl, offsets):
    """What the trainer does (experience.build_batch): core.credit.token_advantages under the response mask."""
    return token_advantages(credit, batch.node_ids, torch.as_tensor(rl), torch.as_tensor(offsets[rt]),
                            batch.response_mask)


def test_token_advantages_match_brute_force() -> None:
    trees = _forest()
    arrays, tree_index, offsets = stack_trees(trees)
    rows = flatten(trees)
    batch = collate(rows, pad_id=0)
    rt = np.array([r.tree_index for r in rows])
    rl = np.array([r.leaf for r in rows])
    for name in ("grpo", "at2po"):
        credit = estimate(name, arrays, tree_index)
        adv = _adv(batch, credit, rt, rl, offsets)
        for i, r in enumerate(rows):
            for t in range(len(r.input_ids)):
                if r.response_mask[t]:
                    node = r.leaf if credit.per_trajectory else r.node_ids[t]
                    expect = credit.values[offsets[r.tree_index] + node]
                else:
                    expect = 0.0
                assert adv[i, t].item() == np.float32(expect)
    # at2po: the shared first turn of tree 0 gets the same advantage in both of its trajectories
    credit = estimate("at2po", arrays, tree_index)
    adv = _adv(batch, credit, rt, rl, offsets)
    assert adv[0, 3] == adv[1, 3]


def test_prompt_mini_batches_keep_trees_together() -> None:
    tree_index = np.array([0, 0, 1, 2, 2, 2, 3])
    parts = prompt_mini_batches(tree_index, 2, np.random.default_rng(0))
    assert sorted(np.concatenate(parts).tolist()) == list(range(7))
    for p in parts:
        for t in np.unique(tree_index[p]):
            assert set(np.flatnonzero(tree_index == t)) <= set(p.tolist())
    assert [len(p) for p in prompt_mini_batches(np.array([0]), 3)] == [1, 0, 0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=0, max_size=30), st.integers(1, 120))
def test_micro_batches_cover_once_and_respect_budget(lengths: list[int], budget: int) -> None:
    groups = micro_batches(lengths, budget)
    flat = sorted(i for g in groups for i in g)
    assert flat == list(range(len(lengths)))
    for g in groups:
        assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= budget


def test_collate_rejects_empty() -> None:
    import pytest

    with pytest.raises(ValueError):
        collate([], 0)
    assert torch.is_tensor(collate(flatten(_forest())[:1], 0).advantages)
