"""Credit assignment: from leaf rewards to advantages, vectorised over many concatenated trees.

Kernels (spec ``AT2PO.md``, Component 2):

* :func:`node_values` — V(leaf) = r̂(leaf), V(n) = Σ_{c ∈ children(n)} w_c · V(c), bottom-up one depth level
  at a time over the whole forest;
* :func:`turn_advantages` — A(n) from V (modes ``value``, ``td``, ``global``, ``td+global``);
* :func:`estimate` — the registry entry point the trainer calls: ``grpo``, ``tree_grpo``, ``at2po``.

Inputs are the plain array form of :class:`at2po.core.tree.TreeArrays`: ``parent`` [N] int (-1 for a root,
topological order), ``entropy`` [N] (H(n); the root's is ignored), ``reward`` [N] (NaN on internal nodes).
Several trees may be concatenated (``stack_trees``); tree membership is read from the roots, and an explicit
``tree_index`` keyword is checked against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from at2po.core.forest import (
    STD_MODES,
    child_count,
    forest_tree_index,
    leaf_mask,
    node_depth,
    root_of,
    segment_normalize,
    validate_forest,
)
from at2po.core.tree import TreeArrays

VALUE_MODES = ("child_weighted", "child_softmax", "child_mean", "leaf_mean")
ADV_MODES = ("value", "td", "global", "td+global")


# ---------------------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------------------
def _check_inputs(
    parent: np.ndarray, entropy: np.ndarray, reward: np.ndarray, tree_index: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    parent = validate_forest(parent, tree_index)
    entropy = np.asarray(entropy, dtype=np.float64)
    reward = np.asarray(reward, dtype=np.float64)
    for name, arr in (("entropy", entropy), ("reward", reward)):
        if arr.shape != parent.shape:
            raise ValueError(f"{name} has shape {arr.shape}, parent has {parent.shape}")
    leaves = leaf_mask(parent)
    bad = leaves & ~np.isfinite(reward)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(f"leaf node {j} has reward {reward[j]}: every leaf needs a finite reward")
    nonroot = parent >= 0
    bad = nonroot & ~np.isfinite(entropy)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(f"node {j} has entropy {entropy[j]}: entropies must be finite")
    return parent, entropy, reward, leaves


def _child_weights(parent: np.ndarray, entropy: np.ndarray, value_mode: str) -> np.ndarray:
    """w_c for every non-root node c, normalised over its siblings (roots get 0).  # [N]

    child_weighted: w_c = H(c) / Σ_{siblings} H, uniform when the siblings' H sum to 0 (paper, Eq. 3);
    child_softmax:  w_c = exp(H(c)) / Σ_{siblings} exp(H) (reference code; max-shifted for stability);
    child_mean:     w_c = 1 / |siblings|.
    """
    n = parent.size
    nonroot = parent >= 0
    p = parent[nonroot]
    h = entropy[nonroot]
    cnt = child_count(parent)[p].astype(np.float64)
    if value_mode == "child_mean":
        w = 1.0 / cnt
    elif value_mode == "child_weighted":
        if (h < 0).any():
            j = int(np.flatnonzero(nonroot)[np.flatnonzero(h < 0)[0]])
            raise ValueError(f"node {j} has negative entropy {entropy[j]}: child_weighted needs H >= 0")
        total = np.bincount(p, weights=h, minlength=n)[p]
        # all-zero entropies among siblings (e.g. greedy turns): fall back to the plain mean
        w = np.where(total > 0, h / np.where(total > 0, total, 1.0), 1.0 / cnt)
    elif value_mode == "child_softmax":
        hmax = np.full(n, -np.inf)
        np.maximum.at(hmax, p, h)
        e = np.exp(h - hmax[p])
        w = e / np.bincount(p, weights=e, minlength=n)[p]
    else:
        raise ValueError(f"value_mode must be one of {VALUE_MODES}, got {value_mode!r}")
    out = np.zeros(n)
    out[nonroot] = w
    return out


def _levels(depth: np.ndarray) -> list[np.ndarray]:
    """Node indices grouped by depth, deepest first (so children are final before their parents)."""
    order = np.argsort(depth, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(depth))])
    return [order[bounds[d] : bounds[d + 1]] for d in range(len(bounds) - 2, 0, -1)]


def node_values(
    parent: np.ndarray,
    entropy: np.ndarray,
    reward: np.ndarray,
    value_mode: str = "child_weighted",
    normalize_leaves: bool = True,
    *,
    tree_index: np.ndarray | None = None,
    std: str = "population",
    eps: float = 1e-6,
) -> np.ndarray:
    """Node values V for one tree or several concatenated trees.  # [N] float64

    Leaves: V(ℓ) = r̂(ℓ) = (r(ℓ) − mean_T r) / (std_T r + eps) over the leaves of ℓ's tree T
    (``normalize_leaves=False``: V(ℓ) = r(ℓ); ``std``: "population" (reference code) or "sample").
    Internal nodes, bottom-up: V(n) = Σ_{c ∈ children(n)} w_c · V(c) with w from ``value_mode``
    (``child_weighted`` w_c = H(c)/Σ H — uniform if all H are 0; ``child_softmax`` w = softmax(H);
    ``child_mean`` w = 1/|children|), or ``leaf_mean``: V(n) = mean of r̂ over the leaves below n.
    A root with no children gets V = 0.
    """
    if value_mode not in VALUE_MODES:
        raise ValueError(f"value_mode must be one of {VALUE_MODES}, got {value_mode!r}")
    parent, entropy, reward, leaves = _check_inputs(parent, entropy, reward, tree_index)
    tidx = forest_tree_index(parent)
    if normalize_leaves:
        rhat = segment_normalize(reward, tidx, leaves, std=std, eps=eps)
    else:
        rhat = np.where(leaves, reward, 0.0)
    n = parent.size
    levels = _levels(node_depth(parent))
    if value_mode == "leaf_mean":
        # sum and count of leaf values below each node, accumulated bottom-up
        s = rhat.copy()
        c = leaves.astype(np.float64)
        for lvl in levels:
            s += np.bincount(parent[lvl], weights=s[lvl], minlength=n)
            c += np.bincount(parent[lvl], weights=c[lvl], minlength=n)
        return np.where(c > 0, s / np.maximum(c, 1.0), 0.0)
    w = _child_weights(parent, entropy, value_mode)
    v = rhat.copy()  # internal nodes start at 0 and receive Σ w_c V(c) once their children are final
    for lvl in levels:
        v += np.bincount(parent[lvl], weights=w[lvl] * v[lvl], minlength=n)
    return v


def advantages_from_values(values: np.ndarray, parent: np.ndarray, adv_mode: str = "value") -> np.ndarray:
    """A(n) from V(n); roots get 0.  # [N] float64

    value: A = V(n); td: A = V(n) − V(parent(n)); global: A = V(n) − V(root);
    td+global: A = [V(n) − V(parent(n))] + [V(n) − V(root)].
    """
    if adv_mode not in ADV_MODES:
        raise ValueError(f"adv_mode must be one of {ADV_MODES}, got {adv_mode!r}")
    nonroot = parent >= 0
    v_parent = values[np.maximum(parent, 0)]
    v_root = values[root_of(parent)]
    if adv_mode == "value":
        a = values.copy()
    elif adv_mode == "td":
        a = values - v_parent
    elif adv_mode == "global":
        a = values - v_root
    else:
        a = (values - v_parent) + (values - v_root)
    return np.where(nonroot, a, 0.0)


def turn_advantages(
    parent: np.ndarray,
    entropy: np.ndarray,
    reward: np.ndarray,
    value_mode: str = "child_weighted",
    adv_mode: str = "value",
    normalize_leaves: bool = True,
    *,
    tree_index: np.ndarray | None = None,
    std: str = "population",
    eps: float = 1e-6,
) -> np.ndarray:
    """One advantage per node (turn), the root's is 0: A = f_adv_mode(V) with V from :func:`node_values`.

    ``value``: A(n) = V(n); ``td``: V(n) − V(parent); ``global``: V(n) − V(root); ``td+global``: the sum of the
    two. The trainer broadcasts A(n) to every generated token of n's turn.  # [N] float64
    """
    if adv_mode not in ADV_MODES:
        raise ValueError(f"adv_mode must be one of {ADV_MODES}, got {adv_mode!r}")
    v = node_values(
        parent, entropy, reward, value_mode, normalize_leaves, tree_index=tree_index, std=std, eps=eps
    )
    return advantages_from_values(v, np.asarray(parent, dtype=np.int64), adv_mode)


# ---------------------------------------------------------------------------------------------------------
# registry of estimators (trainer entry point)
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Credit:
    """Advantages for a forest.

    ``per_trajectory=True`` (grpo, tree_grpo): the trajectory ending at leaf ℓ gets ``values[ℓ]`` on every
    generated token; internal nodes hold 0. ``per_trajectory=False`` (at2po): a token generated in node n
    gets ``values[n]``; roots hold 0.
    """

    values: np.ndarray  # [N] float64
    per_trajectory: bool


def token_advantages(
    credit: Credit,
    node_ids: torch.Tensor,
    leaf: torch.Tensor,
    row_offset: torch.Tensor | None = None,
    response_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Broadcast a :class:`Credit` to tokens: the ``advantages`` [B, T] tensor of the policy loss.

    ``node_ids`` [B, T]: node index of each token (-1 on prompt tokens), ``leaf`` [B]: each row's leaf, both
    tree-local (as in ``rollout.rows.Row``) with ``row_offset`` [B] = ``offsets[row.tree_index]`` from
    ``stack_trees``, or already global when ``row_offset`` is None. per_trajectory credit: A_it = values[leaf_i]
    on every non-prompt token; per-node credit: A_it = values[node_it]. Prompt tokens get 0. With
    ``response_mask`` [B, T] (what the trainer passes) every token off the mask — observation and padding too —
    gets 0; without it observation tokens keep their node's value (the loss masks them anyway).
    """
    values = torch.as_tensor(credit.values, dtype=torch.float32, device=node_ids.device)  # [N]
    off = torch.zeros_like(leaf) if row_offset is None else row_offset.to(leaf.device)
    in_row = node_ids >= 0  # [B, T]
    if credit.per_trajectory:
        a = values[(leaf + off).long()][:, None].expand_as(node_ids)  # [B, T]
    else:
        a = values[torch.where(in_row, node_ids + off[:, None], 0).long()]  # [B, T]
    keep = in_row if response_mask is None else in_row & response_mask.bool()
    return torch.where(keep, a, torch.zeros_like(a))


Estimator = Callable[..., Credit]
CREDIT_ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(name: str) -> Callable[[Estimator], Estimator]:
    """Decorator adding an estimator ``fn(arrays, tree_index, group, **options) -> Credit`` to the registry."""

    def deco(fn: Estimator) -> Estimator:
        old = CREDIT_ESTIMATORS.get(name)
        same = old is not None and (old.__module__, old.__qualname__) == (fn.__module__, fn.__qualname__)
        if old is not None and not same:  # the same function again (a plugin imported twice) is fine
            raise ValueError(f"credit estimator {name!r} is already registered")
        CREDIT_ESTIMATORS[name] = fn
        return fn

    return deco


def estimate(
    name: str,
    arrays: TreeArrays,
    tree_index: np.ndarray,
    group: np.ndarray | None = None,
    **options: Any,
) -> Credit:
    """Advantages for several trees concatenated with ``stack_trees``, by registered estimator ``name``.

    ``grpo`` (options: std, eps), ``tree_grpo`` (std, eps; needs ``group`` or ``arrays.group``),
    ``at2po`` (value_mode, adv_mode, normalize_leaves, std, eps). Unknown names/options raise with the list
    of valid ones.
    """
    if name not in CREDIT_ESTIMATORS:
        raise ValueError(f"unknown credit estimator {name!r}; registered: {sorted(CREDIT_ESTIMATORS)}")
    validate_forest(arrays.parent, tree_index)
    return CREDIT_ESTIMATORS[name](arrays, np.asarray(tree_index), group, **options)


def _leaf_rewards(arrays: TreeArrays) -> tuple[np.ndarray, np.ndarray]:
    _, _, reward, leaves = _check_inputs(arrays.parent, arrays.entropy, arrays.reward, None)
    if arrays.is_leaf is not None and not np.array_equal(np.asarray(arrays.is_leaf, dtype=bool), leaves):
        j = int(np.flatnonzero(np.asarray(arrays.is_leaf, dtype=bool) != leaves)[0])
        raise ValueError(f"arrays.is_leaf[{j}] disagrees with parent (a leaf is a non-root node with no children)")
    return reward, leaves


@register_estimator("grpo")
def _grpo(
    arrays: TreeArrays, tree_index: np.ndarray, group: np.ndarray | None, *, std: str = "population", eps: float = 1e-6
) -> Credit:
    """GRPO: A(ℓ) = (r(ℓ) − mean_x r) / (std_x r + eps) over all trajectories (leaves) of the prompt x."""
    reward, leaves = _leaf_rewards(arrays)
    return Credit(segment_normalize(reward, tree_index, leaves, std=std, eps=eps), per_trajectory=True)


@register_estimator("tree_grpo")
def _tree_grpo(
    arrays: TreeArrays, tree_index: np.ndarray, group: np.ndarray | None, *, std: str = "population", eps: float = 1e-6
) -> Credit:
    """Tree-GRPO (Ji et al. 2025, arXiv 2509.21240): A(ℓ) = Â_intra(ℓ) + Â_inter(ℓ).

    Â_intra = (r − mean_T r)/(std_T r + eps) over the leaves of ℓ's own tree T (leaves sharing the prompt and
    ``group``); Â_inter = the same over all leaves of the prompt (all its trees).
    """
    g = group if group is not None else arrays.group
    if g is None:
        raise ValueError("tree_grpo needs the per-node group ids (TurnNode.group): pass group= or arrays.group")
    g = np.asarray(g)
    if g.shape != np.shape(arrays.parent):
        raise ValueError(f"group has shape {g.shape}, parent has {np.shape(arrays.parent)}")
    reward, leaves = _leaf_rewards(arrays)
    g = g.astype(np.int64) - g.min()
    key = np.asarray(tree_index, dtype=np.int64) * (int(g.max()) + 1) + g  # one id per (prompt, tree)
    intra = segment_normalize(reward, key, leaves, std=std, eps=eps)
    inter = segment_normalize(reward, tree_index, leaves, std=std, eps=eps)
    return Credit(intra + inter, per_trajectory=True)


@register_estimator("at2po")
def _at2po(
    arrays: TreeArrays,
    tree_index: np.ndarray,
    group: np.ndarray | None,
    *,
    value_mode: str = "child_weighted",
    adv_mode: str = "value",
    normalize_leaves: bool = True,
    std: str = "population",
    eps: float = 1e-6,
) -> Credit:
    """AT²PO turn-wise credit: one advantage per turn, :func:`turn_advantages`."""
    if arrays.is_leaf is not None:
        _leaf_rewards(arrays)  # is_leaf consistency check
    a = turn_advantages(
        arrays.parent,
        arrays.entropy,
        arrays.reward,
        value_mode,
        adv_mode,
        normalize_leaves,
        tree_index=tree_index,
        std=std,
        eps=eps,
    )
    return Credit(a, per_trajectory=False)


__all__ = [
    "ADV_MODES",
    "CREDIT_ESTIMATORS",
    "STD_MODES",
    "VALUE_MODES",
    "Credit",
    "advantages_from_values",
    "estimate",
    "node_values",
    "register_estimator",
    "token_advantages",
    "turn_advantages",
]
