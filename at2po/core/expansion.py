"""Expansion selection for tree rollouts (spec ``AT2PO.md``, Component 1).

A selected node n means "sample a new sibling of n from n's state" (the context up to, not including, n's
generated tokens); a selected root means "start a new chain".

* ``entropy`` (AT²PO): candidates are the non-leaf nodes including the root; score
  s(n) = H(n) − α·|children(parent(n))| (root: H = 0 and the penalty uses its own child count); the top-K
  by score, best first; with fewer than K candidates the ranked list is repeated (best first) until K.
* ``random`` (Tree-GRPO): K candidates uniformly at random (without replacement while enough exist).
"""

from __future__ import annotations

import numpy as np

from at2po.core.forest import child_count, forest_tree_index, validate_forest
from at2po.core.tree import validate_parent

EXPANSION_MODES = ("entropy", "random")


def expansion_scores(parent: np.ndarray, entropy: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """s(n) = H(n) − α·|children(parent(n))|; for a root s = 0 − α·|children(root)|.  # [N] float64"""
    parent = np.asarray(parent, dtype=np.int64)
    h = np.where(parent >= 0, np.asarray(entropy, dtype=np.float64), 0.0)
    cnt = child_count(parent)
    siblings = np.where(parent >= 0, cnt[np.maximum(parent, 0)], cnt)
    return h - alpha * siblings


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _candidates(parent: np.ndarray, is_leaf: np.ndarray, allow_leaves: bool) -> np.ndarray:
    is_leaf = np.asarray(is_leaf, dtype=bool)
    if is_leaf.shape != parent.shape:
        raise ValueError(f"is_leaf has shape {is_leaf.shape}, parent has {parent.shape}")
    return np.ones_like(is_leaf) if allow_leaves else ~is_leaf


def select_nodes(
    parent: np.ndarray,
    entropy: np.ndarray,
    is_leaf: np.ndarray,
    k: int,
    alpha: float = 0.05,
    mode: str = "entropy",
    rng: np.random.Generator | int | None = None,
    *,
    allow_leaves: bool = False,
) -> list[int]:
    """Pick K nodes of one tree to fork (indices may repeat).

    ``entropy`` mode: top-K of s(n) = H(n) − α·|children(parent(n))| over the candidates (non-leaf nodes and
    the root; leaves too when ``allow_leaves``), ties broken by lower index, the ranking repeated when there
    are fewer than K candidates. ``random`` mode: K candidates uniformly (``rng``: Generator or seed).
    """
    if mode not in EXPANSION_MODES:
        raise ValueError(f"expansion mode must be one of {EXPANSION_MODES}, got {mode!r}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    parent = np.asarray(parent, dtype=np.int64)
    validate_parent(parent)
    entropy = np.asarray(entropy, dtype=np.float64)
    if entropy.shape != parent.shape:
        raise ValueError(f"entropy has shape {entropy.shape}, parent has {parent.shape}")
    cand = np.flatnonzero(_candidates(parent, is_leaf, allow_leaves))
    if k == 0 or cand.size == 0:
        return []
    if mode == "random":
        picked = _rng(rng).choice(cand, size=k, replace=cand.size < k)
        return [int(i) for i in picked]
    s = expansion_scores(parent, entropy, alpha)[cand]
    ranked = cand[np.argsort(-s, kind="stable")]
    return [int(i) for i in ranked[np.arange(k) % ranked.size]]


def select_nodes_forest(
    parent: np.ndarray,
    entropy: np.ndarray,
    is_leaf: np.ndarray,
    k: int,
    alpha: float = 0.05,
    mode: str = "entropy",
    rng: np.random.Generator | int | None = None,
    *,
    allow_leaves: bool = False,
    keys: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`select_nodes` for every tree of a forest at once (``stack_trees`` layout).

    Returns global node indices, shape [n_trees, K] (row t = tree t's picks, best first in entropy mode);
    a tree with no candidate gets -1. One sort over the whole forest, no loop over trees. In ``random`` mode
    each tree's candidates are randomly permuted (sampling without replacement) and the permutation repeats
    when a tree has fewer than K candidates.

    ``keys`` [N]: optional per-node uniforms in [0, 1) that make the pick independent of node order (the driver
    derives them from each turn's random stream): ``random`` mode ranks by them instead of drawing from ``rng``,
    ``entropy`` mode breaks exact score ties with them (before the index).
    """
    if mode not in EXPANSION_MODES:
        raise ValueError(f"expansion mode must be one of {EXPANSION_MODES}, got {mode!r}")
    parent = validate_forest(parent)
    tidx = forest_tree_index(parent)
    n_trees = int(tidx[-1]) + 1
    cand_mask = _candidates(parent, is_leaf, allow_leaves)
    if keys is not None:
        keys = np.asarray(keys, dtype=np.float64)
        if keys.shape != parent.shape:
            raise ValueError(f"keys has shape {keys.shape}, parent has {parent.shape}")
    tie = keys if keys is not None else np.zeros(parent.size)
    if mode == "entropy":
        key = -expansion_scores(parent, entropy, alpha)
    else:  # a random permutation within each tree
        key = keys if keys is not None else _rng(rng).random(parent.size)
    cand = np.flatnonzero(cand_mask)
    out = np.full((n_trees, k), -1, dtype=np.int64)
    if cand.size == 0 or k == 0:
        return out
    order = cand[np.lexsort((cand, tie[cand], key[cand], tidx[cand]))]  # by tree, score, tie key, index
    t = tidx[order]
    n_per = np.bincount(t, minlength=n_trees)
    start = np.concatenate([[0], np.cumsum(n_per)[:-1]])
    has = n_per > 0
    # position j of tree t takes its (j mod n_t)-th ranked candidate: the ranking repeats when n_t < K
    j = np.arange(k)[None, :] % np.maximum(n_per, 1)[:, None]
    picks = order[np.minimum(start[:, None] + j, order.size - 1)]
    out[has] = picks[has]
    return out
