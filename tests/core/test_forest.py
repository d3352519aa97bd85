"""Forest helpers and the array form of turn trees (including the additive ``group`` field)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from at2po.core.forest import (
    child_count,
    forest_tree_index,
    leaf_mask,
    node_depth,
    root_of,
    segment_normalize,
    validate_forest,
)
from at2po.core.tree import TreeArrays, TurnTree, stack_trees

# two trees: [0: root, 1 <- 0, 2 <- 1, 3 <- 0] and [4: root, 5 <- 4]
FOREST = np.array([-1, 0, 1, 0, -1, 4])


def test_structure_helpers() -> None:
    assert forest_tree_index(FOREST).tolist() == [0, 0, 0, 0, 1, 1]
    assert node_depth(FOREST).tolist() == [0, 1, 2, 1, 0, 1]
    assert child_count(FOREST).tolist() == [2, 1, 0, 0, 1, 0]
    assert leaf_mask(FOREST).tolist() == [False, False, True, True, False, True]
    assert root_of(FOREST).tolist() == [0, 0, 0, 0, 4, 4]


def test_validate_forest_errors() -> None:
    assert validate_forest(FOREST, np.array([7, 7, 7, 7, 2, 2])).dtype == np.int64
    with pytest.raises(ValueError, match="node 5 has parent 2"):
        validate_forest(np.array([-1, 0, 1, 0, -1, 2]))  # parent in another tree
    with pytest.raises(ValueError, match="parent\\[0\\] must be -1"):
        validate_forest(np.array([0, -1]))
    with pytest.raises(ValueError, match="roots must use -1"):
        validate_forest(np.array([-1, -2]))
    with pytest.raises(ValueError, match="tree_index disagrees with parent at node 4"):
        validate_forest(FOREST, np.array([0, 0, 0, 0, 0, 1]))
    with pytest.raises(ValueError, match="integer"):
        validate_forest(np.array([-1.0, 0.0]))


def test_segment_normalize() -> None:
    x = np.array([1.0, 0.0, 0.0, 9.0, 5.0, 7.0])
    sel = np.array([True, True, True, False, True, True])
    seg = np.array([0, 0, 0, 0, 1, 1])
    s = math.sqrt(2 / 9)
    out = segment_normalize(x, seg, sel, eps=0.0)
    np.testing.assert_allclose(out, [(2 / 3) / s, -(1 / 3) / s, -(1 / 3) / s, 0.0, -1.0, 1.0])
    one = segment_normalize(np.array([3.0]), np.array([0]), np.array([True]), std="sample")
    assert one.tolist() == [0.0]  # one sample: std defined as 0, no NaN
    with pytest.raises(ValueError, match="std must be one of"):
        segment_normalize(x, seg, sel, std="mad")


def test_to_arrays_and_stack_trees_carry_group() -> None:
    t = TurnTree(prompt_ids=[1, 2])
    a = t.add_node(0, group=1, gen_logprobs=[-0.5, -1.5])
    b = t.add_node(a, gen_logprobs=[-2.0], reward=1.0)  # inherits group 1
    c = t.add_node(0, group=2, gen_logprobs=[-1.0], reward=0.0)
    arr = t.to_arrays()
    assert arr.group.tolist() == [0, 1, 1, 2]
    assert arr.entropy.tolist() == [0.0, 1.0, 2.0, 1.0]
    assert np.isnan(arr.reward[[0, a]]).all() and arr.reward[[b, c]].tolist() == [1.0, 0.0]
    stacked, tidx, off = stack_trees([t, t])
    assert stacked.group.tolist() == [0, 1, 1, 2] * 2
    assert stacked.parent.tolist() == [-1, 0, 1, 0, -1, 4, 5, 4]
    assert tidx.tolist() == [0] * 4 + [1] * 4 and off.tolist() == [0, 4, 8]
    # the 4-field constructor still works (group is optional)
    assert TreeArrays(stacked.parent, stacked.entropy, stacked.reward, stacked.is_leaf).group is None
