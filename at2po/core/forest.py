"""Vectorised helpers over a *forest*: several turn trees concatenated in array form.

A forest is the ``parent`` array of :func:`at2po.core.tree.stack_trees`: each tree's nodes are contiguous,
its root comes first (``parent == -1``) and every other node's parent lies earlier in the same tree. All
helpers here work on the whole forest at once; the only Python loops are over depth levels, never over
nodes or trees.
"""

from __future__ import annotations

import numpy as np

STD_MODES = ("population", "sample")


def forest_tree_index(parent: np.ndarray) -> np.ndarray:
    """Tree id of every node, derived from the roots: ``cumsum(parent == -1) - 1``.  # [N] int64"""
    parent = np.asarray(parent)
    return np.cumsum(parent < 0) - 1


def validate_forest(parent: np.ndarray, tree_index: np.ndarray | None = None) -> np.ndarray:
    """Check a concatenated ``parent`` array and return it as int64; raise ValueError naming the bad node.

    Rules: 1-D, non-empty, ``parent[0] == -1``, roots are exactly -1, and every other node's parent lies
    earlier in the *same* tree (topological order). If ``tree_index`` is given it must agree with the roots.
    """
    parent = np.asarray(parent)
    if parent.ndim != 1 or parent.size == 0:
        raise ValueError(f"parent must be a non-empty 1-D array, got shape {parent.shape}")
    if not np.issubdtype(parent.dtype, np.integer):
        raise ValueError(f"parent must be an integer array, got dtype {parent.dtype}")
    parent = parent.astype(np.int64, copy=False)
    if parent[0] != -1:
        raise ValueError(f"parent[0] must be -1 (the first tree's root), got {parent[0]}")
    bad_root = parent < -1
    if bad_root.any():
        j = int(np.flatnonzero(bad_root)[0])
        raise ValueError(f"node {j} has parent {parent[j]}: roots must use -1")
    tidx = forest_tree_index(parent)
    starts = np.flatnonzero(parent < 0)  # [n_trees] index of each root
    idx = np.arange(parent.size)
    nonroot = parent >= 0
    bad = nonroot & ((parent >= idx) | (parent < starts[tidx]))
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"node {j} has parent {parent[j]}: a parent must precede its child within the same tree "
            f"(tree {tidx[j]} starts at node {starts[tidx[j]]})"
        )
    if tree_index is not None:
        tree_index = np.asarray(tree_index)
        if tree_index.shape != parent.shape:
            raise ValueError(f"tree_index has shape {tree_index.shape}, parent has {parent.shape}")
        # tree ids may be any labels, but they must change exactly at the roots
        change = np.concatenate([[True], tree_index[1:] != tree_index[:-1]])
        mismatch = change != (parent < 0)
        if mismatch.any():
            j = int(np.flatnonzero(mismatch)[0])
            raise ValueError(
                f"tree_index disagrees with parent at node {j}: tree ids must change exactly at roots (parent == -1)"
            )
    return parent


def child_count(parent: np.ndarray) -> np.ndarray:
    """|children(n)| for every node.  # [N] int64"""
    n = parent.size
    return np.bincount(parent[parent >= 0], minlength=n).astype(np.int64)


def leaf_mask(parent: np.ndarray) -> np.ndarray:
    """Leaves: non-root nodes with no children.  # [N] bool"""
    return (child_count(parent) == 0) & (parent >= 0)


def node_depth(parent: np.ndarray) -> np.ndarray:
    """Turns from the root to each node (root: 0), one vectorised pass per depth level.  # [N] int64"""
    depth = np.zeros(parent.size, dtype=np.int64)
    anc = parent.copy()
    while True:  # loop over depth levels, not nodes
        live = anc >= 0
        if not live.any():
            return depth
        depth += live
        anc = np.where(live, parent[np.maximum(anc, 0)], -1)


def root_of(parent: np.ndarray, tree_index: np.ndarray | None = None) -> np.ndarray:
    """Index of each node's tree root.  # [N] int64"""
    tidx = forest_tree_index(parent) if tree_index is None else _dense_ids(np.asarray(tree_index))
    return np.flatnonzero(parent < 0)[tidx]


def _dense_ids(labels: np.ndarray) -> np.ndarray:
    """Map arbitrary integer labels to 0..G-1 (order of first appearance is not needed, only equality)."""
    _, inv = np.unique(labels, return_inverse=True)
    return inv.reshape(-1)


def segment_normalize(
    x: np.ndarray, segment: np.ndarray, select: np.ndarray, std: str = "population", eps: float = 1e-6
) -> np.ndarray:
    """GRPO-style normalisation within segments: x̂ = (x − mean_s) / (std_s + eps) over the selected entries.

    ``segment`` [N] labels, ``select`` [N] bool (e.g. leaves). ``std``: "population" (ddof 0, the AT²PO
    reference code) or "sample" (ddof 1, ``torch.std`` as in verl's GRPO; a one-element segment gets std 0).
    Unselected entries get 0.  # [N] float64
    """
    if std not in STD_MODES:
        raise ValueError(f"std must be one of {STD_MODES}, got {std!r}")
    out = np.zeros(x.shape, dtype=np.float64)
    if not select.any():
        return out
    seg = _dense_ids(np.asarray(segment)[select])
    v = np.asarray(x, dtype=np.float64)[select]
    cnt = np.bincount(seg).astype(np.float64)
    mean = np.bincount(seg, weights=v) / cnt
    dev = v - mean[seg]
    ss = np.bincount(seg, weights=dev * dev)
    ddof = 0.0 if std == "population" else 1.0
    var = np.where(cnt - ddof > 0, ss / np.maximum(cnt - ddof, 1.0), 0.0)
    out[select] = dev / (np.sqrt(var)[seg] + eps)
    return out
