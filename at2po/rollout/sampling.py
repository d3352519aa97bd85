"""Batched token sampling with per-sequence counter-based random streams.

Each sequence carries its own 32-bit seed; the uniform used at decode step t is a hash of (seed, t). A sequence's
draws therefore do not depend on which other sequences share its batch or in which order they come (unlike one
``torch.Generator`` shared by the batch), and no per-sequence Python loop is needed.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF


def hash32(x: torch.Tensor) -> torch.Tensor:
    """Integer avalanche hash on int64 tensors holding 32-bit values (the 'lowbias32' mixer).

    All products stay below 2**63 (32-bit value × 31-bit constant), so int64 arithmetic is exact.
    """
    x = x & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    return (x >> 16) ^ x


def uniforms(seeds: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """u ~ U(0, 1) per sequence for decode step ``step`` (one int, or one per sequence: the number of tokens that
    sequence has sampled so far): u = (hash(seed ⊕ hash(step)) + 0.5) / 2**32.  # [B]"""
    steps = step.to(seeds.device, torch.int64) if isinstance(step, torch.Tensor) else torch.full_like(seeds, step)
    s = hash32((steps * 0x632BE5AB + 0x165667B1) & _M32)
    return (hash32(seeds ^ s).to(torch.float64) + 0.5) / 4294967296.0


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then nucleus (top-p) filtering: removed entries are set to −inf.  logits: [B, V]."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [B, V]
        probs = torch.softmax(sorted_logits, dim=-1)
        # keep the smallest prefix whose mass reaches top_p: drop a token once the mass *before* it ≥ top_p
        drop_sorted = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(
    logits: torch.Tensor,
    seeds: torch.Tensor,
    step: int | torch.Tensor,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row and return (tokens [B], log-probs [B]).

    The reported log-prob is log softmax(logits / T)[y]: the temperature-scaled distribution before top-k/top-p
    truncation (what AT²PO's entropy H(n) = mean −log π(y_t) and the importance ratios use). T = 0 is greedy
    (log-prob under T = 1). Sampling is inverse-CDF with the per-sequence uniform of :func:`uniforms`.
    """
    logits = logits.float()  # [B, V]
    if temperature <= 0:
        tokens = torch.argmax(logits, dim=-1)  # [B]
        logp = torch.log_softmax(logits, dim=-1)
        return tokens, logp.gather(-1, tokens[:, None])[:, 0]
    scaled = logits / temperature
    logp = torch.log_softmax(scaled, dim=-1)  # [B, V]
    probs = torch.softmax(filter_logits(scaled, top_k, top_p), dim=-1).double()  # [B, V]
    cdf = torch.cumsum(probs, dim=-1)  # [B, V]
    u = uniforms(seeds.to(logits.device), step).to(cdf.dtype) * cdf[:, -1]  # [B]
    tokens = torch.searchsorted(cdf, u[:, None]).clamp_(max=logits.shape[-1] - 1)[:, 0]  # [B]
    # searchsorted finds the first j with cdf[j] ≥ u > 0, so cdf jumps at j: a filtered (p = 0) token is never hit
    return tokens, logp.gather(-1, tokens[:, None])[:, 0]


def topk_entropy(logits: torch.Tensor, temperature: float, k: int) -> torch.Tensor:
    """Σ_{v ∈ top-k} −p_v·log p_v of softmax(logits / T) (T ≤ 0: T = 1), AEPO's per-token entropy estimate from the
    k most likely tokens (the full-vocabulary entropy when k ≥ V).  logits: [B, V] → [B]"""
    logp = torch.log_softmax(logits.float() / (temperature if temperature > 0 else 1.0), dim=-1)  # [B, V]
    top = torch.topk(logp, min(k, logp.shape[-1]), dim=-1).values  # [B, k]
    return -(top.exp() * top).sum(-1)
