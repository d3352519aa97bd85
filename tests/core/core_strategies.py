"""Shared hypothesis strategies for core tests: random turn trees in array form."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st


@st.composite
def random_trees(draw, max_nodes: int = 14, reward_values: tuple[float, ...] | None = None):
    """(parent, entropy, reward) of one random tree with at least one leaf (node 0 = root)."""
    n = draw(st.integers(2, max_nodes))
    parent = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    parent_a = np.array(parent, dtype=np.int64)
    is_leaf = np.ones(n, bool)
    is_leaf[parent_a[1:]] = False
    is_leaf[0] = False
    entropy = np.array([0.0] + [draw(st.floats(0.0, 4.0)) for _ in range(n - 1)])
    if reward_values is None:
        rew = [draw(st.floats(-2.0, 2.0)) for _ in range(n)]
    else:
        rew = [draw(st.sampled_from(reward_values)) for _ in range(n)]
    reward = np.where(is_leaf, np.array(rew), np.nan)
    return parent_a, entropy, reward


def descendant_leaves(parent: np.ndarray) -> list[list[int]]:
    """Brute force: for every node, the leaves in its subtree (a leaf's list is itself)."""
    n = len(parent)
    children: list[list[int]] = [[] for _ in range(n)]
    for i in range(1, n):
        children[parent[i]].append(i)
    out: list[list[int]] = [[] for _ in range(n)]
    for i in range(n - 1, -1, -1):
        out[i] = [i] if (i > 0 and not children[i]) else [x for c in children[i] for x in out[c]]
    return out
