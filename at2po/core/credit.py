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
from at2po.core.registry import Registry
from at2po.core.tree import TreeArrays


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


def _levels(depth: np.ndarray) -> list[np.ndarray]:
    """Node indices grouped by depth, deepest first (so children are final before their parents)."""
    order = np.argsort(depth, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(depth))])
    return [order[bounds[d] : bounds[d + 1]] for d in range(len(bounds) - 2, 0, -1)]


def propagate_weighted(parent: np.ndarray, weights: np.ndarray, leaf_values: np.ndarray) -> np.ndarray:
    """V(leaf) = leaf_values(leaf), V(n) = Σ_{c ∈ children(n)} w_c · V(c), bottom-up one depth level at a time over
    the whole forest (``weights`` [N]: w_c of each non-root node; roots' entries are ignored).  # [N] float64"""
    parent = np.asarray(parent, dtype=np.int64)
    v = np.asarray(leaf_values, dtype=np.float64).copy()  # internal nodes start at 0
    w = np.asarray(weights, dtype=np.float64)
    n = parent.size
    for lvl in _levels(node_depth(parent)):
        v += np.bincount(parent[lvl], weights=w[lvl] * v[lvl], minlength=n)
    return v


# --- value modes: fn(parent [N], entropy [N], leaf_values [N] (r̂ on leaves, 0 elsewhere), leaves [N]) -> V [N] --
ValueFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
VALUE_MODES: Registry[ValueFn] = Registry("value mode", "at2po.core.credit.register_value_mode")


def register_value_mode(name: str) -> Callable[[ValueFn], ValueFn]:
    """Decorator adding a value mode ``fn(parent, entropy, leaf_values, leaves) -> V`` [N]; then
    ``credit.value_mode: <name>`` selects it (:func:`propagate_weighted` builds V from per-child weights)."""
    return VALUE_MODES.decorator(name)


def _sibling_stats(parent: np.ndarray, entropy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nonroot = parent >= 0
    p = parent[nonroot]
    return nonroot, p, entropy[nonroot]


def _scatter_nonroot(nonroot: np.ndarray, w: np.ndarray) -> np.ndarray:
    out = np.zeros(nonroot.size)
    out[nonroot] = w
    return out


@register_value_mode("child_weighted")
def _child_weighted(parent: np.ndarray, entropy: np.ndarray, leaf_values: np.ndarray, leaves: np.ndarray) -> np.ndarray:
    """Paper, Eq. 3: w_c = H(c) / Σ_{siblings} H, uniform when the siblings' H sum to 0."""
    nonroot, p, h = _sibling_stats(parent, entropy)
    if (h < 0).any():
        j = int(np.flatnonzero(nonroot)[np.flatnonzero(h < 0)[0]])
        raise ValueError(f"node {j} has negative entropy {entropy[j]}: child_weighted needs H >= 0")
    total = np.bincount(p, weights=h, minlength=parent.size)[p]
    cnt = child_count(parent)[p].astype(np.float64)
    # all-zero entropies among siblings (e.g. greedy turns): fall back to the plain mean
    w = np.where(total > 0, h / np.where(total > 0, total, 1.0), 1.0 / cnt)
    return propagate_weighted(parent, _scatter_nonroot(nonroot, w), leaf_values)


@register_value_mode("child_softmax")
def _child_softmax(parent: np.ndarray, entropy: np.ndarray, leaf_values: np.ndarray, leaves: np.ndarray) -> np.ndarray:
    """Reference code: w_c = exp(H(c)) / Σ_{siblings} exp(H) (max-shifted for stability)."""
    nonroot, p, h = _sibling_stats(parent, entropy)
    hmax = np.full(parent.size, -np.inf)
    np.maximum.at(hmax, p, h)
    e = np.exp(h - hmax[p])
    w = e / np.bincount(p, weights=e, minlength=parent.size)[p]
    return propagate_weighted(parent, _scatter_nonroot(nonroot, w), leaf_values)


@register_value_mode("child_mean")
def _child_mean(parent: np.ndarray, entropy: np.ndarray, leaf_values: np.ndarray, leaves: np.ndarray) -> np.ndarray:
    """w_c = 1 / |siblings|."""
    nonroot, p, _ = _sibling_stats(parent, entropy)
    w = 1.0 / child_count(parent)[p].astype(np.float64)
    return propagate_weighted(parent, _scatter_nonroot(nonroot, w), leaf_values)


@register_value_mode("leaf_mean")
def _leaf_mean(parent: np.ndarray, entropy: np.ndarray, leaf_values: np.ndarray, leaves: np.ndarray) -> np.ndarray:
    """V(n) = mean of r̂ over the leaves below n (sum and count accumulated bottom-up); 0 where none."""
    n = parent.size
    s = np.asarray(leaf_values, dtype=np.float64).copy()
    c = np.asarray(leaves, dtype=np.float64).copy()
    for lvl in _levels(node_depth(parent)):
        s += np.bincount(parent[lvl], weights=s[lvl], minlength=n)
        c += np.bincount(parent[lvl], weights=c[lvl], minlength=n)
    return np.where(c > 0, s / np.maximum(c, 1.0), 0.0)


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
    ``child_mean`` w = 1/|children|), or ``leaf_mean``: V(n) = mean of r̂ over the leaves below n; or any mode
    added with :func:`register_value_mode`. A root with no children gets V = 0.
    """
    fn = VALUE_MODES.lookup(value_mode)
    parent, entropy, reward, leaves = _check_inputs(parent, entropy, reward, tree_index)
    tidx = forest_tree_index(parent)
    if normalize_leaves:
        rhat = segment_normalize(reward, tidx, leaves, std=std, eps=eps)
    else:
        rhat = np.where(leaves, reward, 0.0)
    v = np.asarray(fn(parent, entropy, rhat, leaves), dtype=np.float64)
    if v.shape != parent.shape:
        raise ValueError(f"value mode {value_mode!r} returned shape {v.shape}, expected {parent.shape}")
    return v


# --- advantage modes: fn(values [N], parent [N]) -> A [N] (roots are set to 0 afterwards) ------------------------
AdvFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
ADV_MODES: Registry[AdvFn] = Registry("advantage mode", "at2po.core.credit.register_adv_mode")


def register_adv_mode(name: str) -> Callable[[AdvFn], AdvFn]:
    """Decorator adding an advantage mode ``fn(values, parent) -> A`` [N] (roots get 0 afterwards); then
    ``credit.adv_mode: <name>`` selects it."""
    return ADV_MODES.decorator(name)


@register_adv_mode("value")
def _adv_value(values: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """A(n) = V(n)."""
    return values.copy()


@register_adv_mode("td")
def _adv_td(values: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """A(n) = V(n) − V(parent(n))."""
    return values - values[np.maximum(parent, 0)]


@register_adv_mode("global")
def _adv_global(values: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """A(n) = V(n) − V(root)."""
    return values - values[root_of(parent)]


@register_adv_mode("td+global")
def _adv_td_global(values: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """A(n) = [V(n) − V(parent(n))] + [V(n) − V(root)]."""
    return _adv_td(values, parent) + _adv_global(values, parent)


def advantages_from_values(values: np.ndarray, parent: np.ndarray, adv_mode: str = "value") -> np.ndarray:
    """A(n) from V(n) by ``adv_mode``; roots get 0.  # [N] float64

    value: A = V(n); td: A = V(n) − V(parent(n)); global: A = V(n) − V(root);
    td+global: A = [V(n) − V(parent(n))] + [V(n) − V(root)]; or a mode added with :func:`register_adv_mode`.
    """
    fn = ADV_MODES.lookup(adv_mode)
    parent = np.asarray(parent, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    a = np.asarray(fn(values, parent), dtype=np.float64)
    if a.shape != parent.shape:
        raise ValueError(f"advantage mode {adv_mode!r} returned shape {a.shape}, expected {parent.shape}")
    return np.where(parent >= 0, a, 0.0)


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
    ADV_MODES.lookup(adv_mode)  # fail before any work
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
CREDIT_ESTIMATORS: Registry[Estimator] = Registry("credit estimator", "at2po.core.credit.register_estimator")


def register_estimator(name: str) -> Callable[[Estimator], Estimator]:
    """Decorator adding an estimator ``fn(arrays, tree_index, group, **options) -> Credit`` to the registry."""
    return CREDIT_ESTIMATORS.decorator(name)


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
    fn = CREDIT_ESTIMATORS.lookup(name)
    validate_forest(arrays.parent, tree_index)
    return fn(arrays, np.asarray(tree_index), group, **options)


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
    "propagate_weighted",
    "register_adv_mode",
    "register_estimator",
    "register_value_mode",
    "token_advantages",
    "turn_advantages",
]
