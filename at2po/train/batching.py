"""Rows → padded tensors, per-token advantages from per-node credit, prompt mini-batches, token-budget micro-batches.

A row (``at2po.rollout.rows.Row``) is one root→leaf trajectory: ``input_ids``, ``response_mask`` (1 on generated
tokens), ``turn_ids`` / ``node_ids`` (-1 on prompt tokens), sampling ``logprobs``, ``reward``, ``tree_index``,
``leaf``. Padding is on the right; padded positions have mask 0, turn/node id -1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch


@dataclass
class Batch:
    """A padded batch of trajectories. All tensors are ``[B, T]``."""

    input_ids: torch.Tensor  # long
    attention_mask: torch.Tensor  # long, 1 on real tokens
    response_mask: torch.Tensor  # float, 1 on generated tokens (the loss mask)
    turn_ids: torch.Tensor  # long, -1 on prompt and padding
    node_ids: torch.Tensor  # long, -1 on prompt and padding
    sample_log_prob: torch.Tensor  # float, the rollout engine's log-probs (0 off-response)
    advantages: torch.Tensor  # float, 0 off-response
    old_log_prob: torch.Tensor  # float, filled by the trainer before the update
    ref_log_prob: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, idx: Sequence[int] | torch.Tensor) -> Batch:
        """Rows ``idx``, trimmed to their longest real length (keeps micro-batches small)."""
        idx_t = torch.as_tensor(list(idx) if not isinstance(idx, torch.Tensor) else idx, dtype=torch.long)
        t = int(self.attention_mask[idx_t].sum(-1).max().item()) if len(idx_t) else 0
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = None if v is None else v[idx_t, :t]
        return Batch(**out)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: (None if (v := getattr(self, f.name)) is None else v.to(device)) for f in fields(self)})


def collate(rows: Sequence[Any], pad_id: int) -> Batch:
    """Right-pad rows into a :class:`Batch` (advantages and old log-probs zero until filled)."""
    if not rows:
        raise ValueError("collate: no rows")
    b, t = len(rows), max(len(r.input_ids) for r in rows)
    ids = torch.full((b, t), pad_id, dtype=torch.long)
    attn = torch.zeros((b, t), dtype=torch.long)
    resp = torch.zeros((b, t), dtype=torch.float32)
    turn = torch.full((b, t), -1, dtype=torch.long)
    node = torch.full((b, t), -1, dtype=torch.long)
    lp = torch.zeros((b, t), dtype=torch.float32)
    for i, r in enumerate(rows):  # host-side packing of Python lists; one copy per row
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids, dtype=torch.long)
        attn[i, :n] = 1
        resp[i, :n] = torch.tensor(r.response_mask, dtype=torch.float32)
        turn[i, :n] = torch.tensor(r.turn_ids, dtype=torch.long)
        node[i, :n] = torch.tensor(r.node_ids, dtype=torch.long)
        lp[i, :n] = torch.tensor(r.logprobs, dtype=torch.float32)
    return Batch(ids, attn, resp, turn, node, lp, torch.zeros_like(resp), torch.zeros_like(resp))


def prompt_mini_batches(
    tree_index: np.ndarray, n_chunks: int, rng: np.random.Generator | None = None
) -> list[np.ndarray]:
    """Split rows into ``n_chunks`` groups by prompt (all rows of a tree stay together), shuffled if ``rng``.

    Returns row-index arrays; a chunk may be empty when there are fewer trees than chunks (the caller must still
    take part in gradient synchronisation).
    """
    trees = np.unique(tree_index)
    if rng is not None:
        trees = rng.permutation(trees)
    return [np.flatnonzero(np.isin(tree_index, part)) for part in np.array_split(trees, n_chunks)]


def micro_batches(lengths: Sequence[int], budget_tokens: int) -> list[list[int]]:
    """Greedy token-budget packing: rows sorted by length (longest first) are grouped so that
    ``len(group) × max_len(group) ≤ budget_tokens`` (padded tokens, which is what a forward costs).
    A single row longer than the budget forms its own micro-batch. Returns indices into ``lengths``.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    cur: list[int] = []
    cur_max = 0
    for i in order:
        m = max(cur_max, lengths[i])
        if cur and m * (len(cur) + 1) > budget_tokens:
            groups.append(cur)
            cur, m = [], lengths[i]
        cur.append(i)
        cur_max = m
    if cur:
        groups.append(cur)
    return groups
