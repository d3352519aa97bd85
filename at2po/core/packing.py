"""Tree packing: the rows of a batch merged into one sequence of their unique tokens (a trie of token ids).

Rows that share a prefix — every leaf of a turn tree shares the prompt and the turns above its fork, chains of a
prompt share the prompt — repeat those tokens in the flat ``[B, T]`` layout. Packed, each distinct prefix is a
trie node that appears once. A causal LM run over the packed sequence, with each token's position id = its depth in
the trie and each token attending only to its ancestors, gives every token exactly the hidden state it has in any
row that contains it (a causal LM's state at t depends only on the tokens ≤ t and their positions).

Construction (vectorised, no loop over rows): sort the rows lexicographically (``np.lexsort``; padding sorts first,
so a row that is a prefix of another comes before it). In sorted order, the longest prefix a row shares with *any*
earlier row is the one it shares with its predecessor, ``lcp[k]``; so row k adds exactly its positions
``lcp[k] ≤ t < len[k]`` as new trie nodes, and appending each row's new positions row by row yields the nodes in
depth-first pre-order. Two consequences the attention uses:

* the subtree of node v is the contiguous range ``[v, end[v])``, so v is an ancestor-or-self of u iff
  ``v ≤ u < end[v]``;
* the ancestors of any token of a contiguous range ``[q0, q1)`` that lie before ``q0`` are ancestors of ``q0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TriePack:
    """The unique tokens of a set of rows, in trie pre-order (``N`` tokens), and the map back to the rows."""

    ids: torch.Tensor  # [N] long: token id of each trie node
    pos: torch.Tensor  # [N] long: depth of the node = its position in every row through it (the position id)
    parent: torch.Tensor  # [N] long: packed index of the node's parent, -1 for a first token
    end: torch.Tensor  # [N] long: the node's subtree is [v, end[v])
    owner: torch.Tensor  # [N] long: the row (input order) that first introduced the node
    index: torch.Tensor  # [B, T] long: packed index of each row position, -1 on padding

    @property
    def n_tokens(self) -> int:
        return int(self.ids.shape[0])

    def ancestor_mask(self) -> torch.Tensor:
        """Dense ``[N, N]`` bool: row u attends to column v iff v is an ancestor-or-self of u (for tests and the
        ``dense`` attention; memory N²)."""
        u = torch.arange(self.n_tokens)
        return (u[None, :] <= u[:, None]) & (u[:, None] < self.end[None, :])


def _lexsort_rows(ids: np.ndarray) -> np.ndarray:
    """Row order sorting ``ids`` [B, T] (−1 padded) lexicographically, column 0 most significant."""
    return np.lexsort(ids.T[::-1]) if ids.shape[1] else np.arange(ids.shape[0])


def _sorted_lcp(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``lcp[k]`` = common prefix length of sorted rows k−1 and k (``lcp[0] = 0``).  # [B]"""
    B, T = ids.shape
    lcp = np.zeros(B, dtype=np.int64)
    if B > 1 and T:
        neq = ids[1:] != ids[:-1]  # [B-1, T]
        first = np.where(neq.any(1), neq.argmax(1), T)
        lcp[1:] = np.minimum(first, np.minimum(lengths[1:], lengths[:-1]))
    return lcp


def _padded(input_ids: torch.Tensor | np.ndarray, lengths: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(input_ids.cpu() if isinstance(input_ids, torch.Tensor) else input_ids, dtype=np.int64)
    lens = np.asarray(lengths.cpu() if isinstance(lengths, torch.Tensor) else lengths, dtype=np.int64)
    if ids.ndim != 2 or lens.shape != (ids.shape[0],):
        raise ValueError(f"pack_rows: input_ids must be [B, T] and lengths [B], got {ids.shape} and {lens.shape}")
    if (lens < 0).any() or (lens > ids.shape[1]).any():
        raise ValueError(f"pack_rows: lengths must lie in [0, {ids.shape[1]}]")
    cols = np.arange(ids.shape[1])
    return np.where(cols[None, :] < lens[:, None], ids, -1), lens  # −1: sorts before any token id


def pack_rows(input_ids: torch.Tensor | np.ndarray, lengths: torch.Tensor | np.ndarray) -> TriePack:
    """Pack right-padded rows ``input_ids`` [B, T] (real lengths ``lengths`` [B]) into their token trie.

    ``index[b, t]`` is the packed position of row b's token t: ``ids[index[b, t]] == input_ids[b, t]`` and
    ``pos[index[b, t]] == t`` for t < lengths[b]. Identical rows and rows that are prefixes of others add no nodes.
    """
    ids, lens = _padded(input_ids, lengths)
    B, T = ids.shape
    order = _lexsort_rows(ids)
    s_ids, s_len = ids[order], lens[order]  # sorted rows
    lcp = _sorted_lcp(s_ids, s_len)  # [B]
    new = np.maximum(s_len - lcp, 0)  # [B]: nodes each sorted row adds
    offset = np.concatenate([[0], np.cumsum(new)])  # [B+1]: packed start of each row's new nodes; offset[B] = N
    cols = np.arange(T)
    rows = np.arange(B)
    # owner[k, t]: the sorted row whose node at depth t row k goes through = the last row k' ≤ k with lcp[k'] ≤ t
    starts_here = lcp[:, None] <= cols[None, :]  # [B, T]: row k introduces (or re-enters) a node at depth t
    owner = np.maximum.accumulate(np.where(starts_here, rows[:, None], -1), axis=0)  # [B, T]
    valid = cols[None, :] < s_len[:, None]  # [B, T]
    s_index = np.where(valid, offset[owner] + cols[None, :] - lcp[owner], -1)  # [B, T]
    # end of the subtree of the node introduced at (k, t): the start of the next row k'' > k with lcp[k''] ≤ t
    nxt = np.where(starts_here, rows[:, None], B)  # [B, T]
    nxt = np.minimum.accumulate(nxt[::-1], axis=0)[::-1]  # [B, T]: first k'' ≥ k with lcp[k''] ≤ t
    nxt = np.concatenate([nxt[1:], np.full((1, T), B, dtype=nxt.dtype)])  # first k'' > k
    is_new = valid & starts_here  # [B, T]: exactly the N new positions, in pre-order when read row-major
    packed_ids = s_ids[is_new]
    pos = np.broadcast_to(cols, (B, T))[is_new]
    end = offset[nxt[is_new]]
    node_owner = order[np.broadcast_to(rows[:, None], (B, T))[is_new]]
    parent_col = np.where(cols[None, :] > 0, np.concatenate([np.full((B, 1), -1), s_index[:, :-1]], axis=1), -1)
    parent = parent_col[is_new]
    index = np.empty_like(s_index)
    index[order] = s_index
    return TriePack(ids=_long(packed_ids), pos=_long(pos), parent=_long(parent), end=_long(end),
                    owner=_long(node_owner), index=_long(index))


def _long(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.long)


def unique_token_count(input_ids: torch.Tensor | np.ndarray, lengths: torch.Tensor | np.ndarray) -> int:
    """Number of trie nodes of the rows (what :func:`pack_rows` would return as ``n_tokens``)."""
    ids, lens = _padded(input_ids, lengths)
    order = _lexsort_rows(ids)
    return int(np.maximum(lens[order] - _sorted_lcp(ids[order], lens[order]), 0).sum())


def split_rows(
    input_ids: torch.Tensor | np.ndarray, lengths: torch.Tensor | np.ndarray, budget_tokens: int
) -> list[list[int]]:
    """Split rows into groups whose tries have at most ``budget_tokens`` nodes each (a row longer than the budget is
    a group of its own). Rows are taken in trie order, so rows sharing prefixes stay together and a group's cost is
    its first row's length plus the new tokens of the others: each part of a split tree recomputes its shared
    prefix, nothing else. Returns row indices (input order) per group; the loop is over groups, not rows.
    """
    if budget_tokens < 1:
        raise ValueError(f"split_rows: budget_tokens must be ≥ 1, got {budget_tokens}")
    ids, lens = _padded(input_ids, lengths)
    B = ids.shape[0]
    if B == 0:
        return []
    order = _lexsort_rows(ids)
    s_len = lens[order]
    new = np.maximum(s_len - _sorted_lcp(ids[order], s_len), 0)
    csum = np.concatenate([[0], np.cumsum(new)])  # [B+1]
    groups: list[list[int]] = []
    s = 0
    while s < B:
        # largest e with s_len[s] + Σ_{s<k<e} new[k] ≤ budget, i.e. csum[e] ≤ budget − s_len[s] + csum[s+1]; a first
        # row over the budget still takes the rows that add nothing to it (its identical copies)
        limit = max(budget_tokens - s_len[s], 0) + csum[s + 1]
        e = max(s + 1, int(np.searchsorted(csum, limit, side="right")) - 1)
        groups.append(order[s:e].tolist())
        s = e
    return groups


__all__ = ["TriePack", "pack_rows", "split_rows", "unique_token_count"]
