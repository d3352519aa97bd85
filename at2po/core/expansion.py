"""Expansion selection for tree rollouts (spec ``AT2PO.md``, Component 1).

A selected node n means "sample a new sibling of n from n's state" (the context up to, not including, n's
generated tokens); a selected root means "start a new chain".

* ``entropy`` (AT²PO): candidates are the non-leaf nodes including the root; score
  s(n) = H(n) − α·|children(parent(n))| (root: H = 0 and the penalty uses its own child count); the top-K
  by score, best first; with fewer than K candidates the ranked list is repeated (best first) until K.
* ``random`` (Tree-GRPO): K candidates uniformly at random (without replacement while enough exist); each initial
  chain and each new chain from the root is its own group (Tree-GRPO's trees).

Modes are entries of :data:`EXPANSION_MODES` (:func:`register_expansion_mode` adds one): a ranking key per node,
lower first, from the tree and a per-node uniform.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from at2po.core.forest import child_count, forest_tree_index, validate_forest
from at2po.core.registry import Registry, function_identity
from at2po.core.tree import validate_parent

RankKey = Callable[[np.ndarray, np.ndarray, float, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ExpansionMode:
    """A registered expansion mode. ``rank_key(parent [N], entropy [N], alpha, u [N]) -> key [N]``: candidates
    are forked in increasing key order (``u``: a uniform in [0, 1) per node, from the node's random stream);
    ``chain_groups``: every chain started from the root is its own group (Tree-GRPO), else one group per tree."""

    rank_key: RankKey
    chain_groups: bool = False


EXPANSION_MODES: Registry[ExpansionMode] = Registry(
    "expansion mode", "at2po.core.expansion.register_expansion_mode", identity=lambda m: function_identity(m.rank_key)
)


def register_expansion_mode(name: str, *, chain_groups: bool = False) -> Callable[[RankKey], RankKey]:
    """Decorator adding an expansion mode from its ranking key ``fn(parent, entropy, alpha, u) -> key`` [N] (lower
    forks first); then ``rollout.expansion: <name>`` selects it."""

    def deco(fn: RankKey) -> RankKey:
        EXPANSION_MODES.add(name, ExpansionMode(fn, chain_groups))
        return fn

    return deco


def expansion_scores(parent: np.ndarray, entropy: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """s(n) = H(n) − α·|children(parent(n))|; for a root s = 0 − α·|children(root)|.  # [N] float64"""
    parent = np.asarray(parent, dtype=np.int64)
    h = np.where(parent >= 0, np.asarray(entropy, dtype=np.float64), 0.0)
    cnt = child_count(parent)
    siblings = np.where(parent >= 0, cnt[np.maximum(parent, 0)], cnt)
    return h - alpha * siblings


@register_expansion_mode("entropy")
def _entropy_key(parent: np.ndarray, entropy: np.ndarray, alpha: float, u: np.ndarray) -> np.ndarray:
    """AT²PO: the highest s(n) = H(n) − α·|children(parent(n))| first."""
    return -expansion_scores(parent, entropy, alpha)


@register_expansion_mode("random", chain_groups=True)
def _random_key(parent: np.ndarray, entropy: np.ndarray, alpha: float, u: np.ndarray) -> np.ndarray:
    """Tree-GRPO: a uniformly random order."""
    return u


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
    """Pick K nodes of one tree to fork (indices may repeat): :func:`select_nodes_forest` on a single tree.

    ``entropy`` mode: top-K of s(n) = H(n) − α·|children(parent(n))| over the candidates (non-leaf nodes and
    the root; leaves too when ``allow_leaves``), ties broken by lower index, the ranking repeated when there
    are fewer than K candidates. ``random`` mode: a uniformly random order of the candidates (``rng``: Generator
    or seed), repeated when there are fewer than K.
    """
    EXPANSION_MODES.lookup(mode)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    parent = np.asarray(parent, dtype=np.int64)
    validate_parent(parent)  # one tree: a single root at index 0
    picks = select_nodes_forest(parent, entropy, is_leaf, k, alpha, mode, rng, allow_leaves=allow_leaves)[0]
    return [int(i) for i in picks if i >= 0]


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
    spec = EXPANSION_MODES.lookup(mode)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    parent = validate_forest(parent)
    tidx = forest_tree_index(parent)
    n_trees = int(tidx[-1]) + 1
    cand_mask = _candidates(parent, is_leaf, allow_leaves)
    if keys is not None:
        keys = np.asarray(keys, dtype=np.float64)
        if keys.shape != parent.shape:
            raise ValueError(f"keys has shape {keys.shape}, parent has {parent.shape}")
    tie = keys if keys is not None else np.zeros(parent.size)
    entropy = np.asarray(entropy, dtype=np.float64)
    if entropy.shape != parent.shape:
        raise ValueError(f"entropy has shape {entropy.shape}, parent has {parent.shape}")
    u = keys if keys is not None else _rng(rng).random(parent.size)
    key = np.asarray(spec.rank_key(parent, entropy, float(alpha), u), dtype=np.float64)
    if key.shape != parent.shape:
        raise ValueError(f"expansion mode {mode!r} returned keys of shape {key.shape}, expected {parent.shape}")
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
