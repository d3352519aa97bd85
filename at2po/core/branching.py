"""AEPO's entropy-balanced rollout decisions (Dong et al., "Agentic Entropy-Balanced Policy Optimization", arXiv
2510.14545, Sec. 3.1), as pure vectorised functions; the driver (``at2po.rollout.aepo``) applies them.

* :func:`global_samples` — entropy pre-monitoring: of a prompt's budget k, m = k·σ(β·(H_root − H̄_tool)) global
  samples (rounded, clipped to [1, k]); the rest are left to branching.
* :func:`branch_probability` — p = (U + w·(H_t − H_init))·max(0, 1 − c·l) for a continuation after a tool call:
  H_t the step entropy of the tool-calling turn, H_init the trajectory's first-turn entropy, l the number of
  consecutive phases in which the prompt branched; a branch opens when p ≥ τ.
* :func:`capped_by_budget` — the branches that fit each prompt's remaining budget, first come first served.
* :func:`step_entropy_topk` — the authors' step entropy: Σ over a segment's first ≤ 20 tokens of the top-k
  −p·log p, divided by ln |V|.
"""

from __future__ import annotations

import numpy as np


def global_samples(budget: int, h_root: np.ndarray, h_tool: np.ndarray, beta: float = 1.0) -> np.ndarray:
    """m = clip(round(k·σ(β·(H_root − H̄_tool))), 1, k) per prompt.  h_root, h_tool: [P] → [P] int64"""
    x = beta * (np.asarray(h_root, dtype=np.float64) - np.asarray(h_tool, dtype=np.float64))
    m = np.rint(budget / (1.0 + np.exp(-x)))
    return np.clip(m, 1, budget).astype(np.int64)


def branch_probability(
    u: np.ndarray, h_t: np.ndarray, h_init: np.ndarray, consecutive: np.ndarray, weight: float = 0.2,
    penalty: float = 0.05,
) -> np.ndarray:
    """p = (U + w·(H_t − H_init))·max(0, 1 − c·l).  All [B] (``consecutive``: l of each candidate's prompt) → [B]"""
    base = np.asarray(u, dtype=np.float64) + weight * (np.asarray(h_t, np.float64) - np.asarray(h_init, np.float64))
    return base * np.maximum(0.0, 1.0 - penalty * np.asarray(consecutive, dtype=np.float64))


def capped_by_budget(prompt: np.ndarray, want: np.ndarray, remaining: np.ndarray) -> np.ndarray:
    """Keep the wanted candidates of each prompt, in order, while its remaining budget lasts.

    prompt [B] int (index into ``remaining`` [P]), want [B] bool → take [B] bool: the j-th wanted candidate of
    prompt p is taken iff j < remaining[p]."""
    prompt = np.asarray(prompt, dtype=np.int64)
    want = np.asarray(want, dtype=bool)
    if prompt.size == 0:
        return want.copy()
    order = np.argsort(prompt, kind="stable")
    w_sorted = want[order].astype(np.int64)
    csum = np.cumsum(w_sorted)
    p_sorted = prompt[order]
    starts = np.searchsorted(p_sorted, p_sorted, side="left")  # first position of each candidate's prompt
    before = csum - w_sorted - np.where(starts > 0, csum[np.maximum(starts - 1, 0)], 0)  # wanted before it
    take_sorted = w_sorted.astype(bool) & (before < np.asarray(remaining, dtype=np.int64)[p_sorted])
    take = np.empty_like(take_sorted)
    take[order] = take_sorted
    return take


def step_entropy_topk(topk_entropy_sum: np.ndarray, vocab_size: int) -> np.ndarray:
    """The authors' step entropy: (Σ over the segment's first tokens of Σ_{top-k} −p·log p) / ln |V|.  [N] → [N]"""
    return np.asarray(topk_entropy_sum, dtype=np.float64) / np.log(float(vocab_size))


__all__ = ["branch_probability", "capped_by_budget", "global_samples", "step_entropy_topk"]
