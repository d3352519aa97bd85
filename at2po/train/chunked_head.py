"""The LM head only where a token is scored, in chunks, with the chunk's logits recomputed in backward.

For M selected hidden states h_m (the state before each scored token y_m) and the output projection W (bias b):

    z_m = (W h_m + b) / τ          log π(y_m) = z_m[y_m] − logsumexp(z_m)          H_m = logsumexp(z_m) − Σ_v p_mv z_mv

Peak memory is O(chunk × V) instead of O(B × T × V): a chunk's ``[C, V]`` logits exist only while that chunk is
processed, in forward and again in backward, where

    ∂log π / ∂z = onehot(y) − p          ∂H / ∂z = −p ⊙ (log p + H)

are applied to W, h (and b) by two matmuls per chunk. A plain ``nn.Linear`` head (tied or not) goes through the
custom autograd function; any other head module (e.g. a PEFT-wrapped one) through activation checkpointing of a
per-chunk function, which is as exact but slower.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    """The matmul dtype the forward uses under autocast (also used when recomputing in backward)."""
    dev = h.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return h.dtype


def _chunk_stats(z: torch.Tensor, y: torch.Tensor, want_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """z: [C, V] fp32 scaled logits, y: [C] → (log π(y) [C], entropy [C] or None)."""
    lse = torch.logsumexp(z, dim=-1)  # [C]
    lp = z.gather(-1, y[:, None])[:, 0] - lse
    if not want_entropy:
        return lp, None
    p = torch.softmax(z, dim=-1)
    return lp, lse - (p * z).sum(-1)


class _ChunkedLinearLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor,
                temperature: float, chunk: int, want_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        dt = _compute_dtype(h)
        lps, ents = [], []
        w = weight.to(dt)
        with torch.autocast(h.device.type, enabled=False):
            for s in range(0, h.shape[0], chunk):
                z = _logits(h[s : s + chunk].to(dt), w, bias, temperature)
                lp, ent = _chunk_stats(z, y[s : s + chunk], want_entropy)
                lps.append(lp)
                ents.append(ent if ent is not None else lp.new_zeros(0))
        ctx.save_for_backward(h, weight, bias if bias is not None else torch.empty(0), y)
        ctx.has_bias, ctx.temperature, ctx.chunk, ctx.dt = bias is not None, temperature, chunk, dt
        ctx.want_entropy = want_entropy
        lp = torch.cat(lps) if lps else h.new_zeros(0, dtype=torch.float32)
        ent = torch.cat(ents) if want_entropy and ents else lp.new_zeros(0)
        return lp, ent

    @staticmethod
    def backward(ctx: Any, g_lp: torch.Tensor, g_ent: torch.Tensor):  # type: ignore[override]
        h, weight, bias, y = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        dt, tau, chunk = ctx.dt, ctx.temperature, ctx.chunk
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        w = weight.to(dt)
        gh = torch.empty_like(h) if need_h else None
        gw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        gb = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        use_ent = ctx.want_entropy and g_ent is not None and g_ent.numel() > 0
        for s in range(0, h.shape[0], chunk):
            hs = h[s : s + chunk].to(dt)
            z = _logits(hs, w, bias, tau)  # [C, V] fp32, recomputed
            logp = torch.log_softmax(z, dim=-1)
            p = logp.exp()
            gz = -p * g_lp[s : s + chunk, None]  # ∂/∂z of g·log π(y) = g·(onehot(y) − p)
            gz.scatter_add_(1, y[s : s + chunk, None], g_lp[s : s + chunk, None])
            if use_ent:
                ent = -(p * logp).sum(-1, keepdim=True)  # [C, 1]
                gz -= g_ent[s : s + chunk, None] * p * (logp + ent)
            gz = (gz / tau).to(dt)  # ∂/∂(W h + b)
            if gh is not None:
                gh[s : s + chunk] = (gz @ w).to(h.dtype)
            if gw is not None:
                gw += (gz.t() @ hs).float()
            if gb is not None:
                gb += gz.float().sum(0)
        return (gh, gw.to(weight.dtype) if gw is not None else None,
                gb.to(bias.dtype) if gb is not None else None, None, None, None, None)


def _logits(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, temperature: float) -> torch.Tensor:
    z = h @ w.t()
    if bias is not None:
        z = z + bias.to(z.dtype)
    z = z.float()
    return z / temperature if temperature != 1.0 else z


def chunked_log_probs(
    hidden: torch.Tensor,  # [M, d]: the hidden state before each scored token
    head: torch.nn.Module,  # the model's output embeddings (lm_head)
    targets: torch.Tensor,  # [M] long: the scored tokens
    temperature: float = 1.0,
    chunk: int = 512,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(y_m | ·) [M] (fp32) and, with ``with_entropy``, the full-vocabulary entropy H_m [M] (module
    docstring), computed ``chunk`` rows at a time with the logits recomputed in backward."""
    if chunk < 1:
        raise ValueError(f"chunked_log_probs: chunk must be ≥ 1, got {chunk}")
    temperature = temperature if temperature > 0 else 1.0  # τ = 0 (greedy) scores under τ = 1, as the sampler does
    if type(head) is torch.nn.Linear:
        lp, ent = _ChunkedLinearLogProbs.apply(
            hidden, head.weight, head.bias, targets, temperature, chunk, with_entropy
        )
        return lp, (ent if with_entropy else None)

    def one(h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = head(h).float()
        z = z / temperature if temperature != 1.0 else z
        lp, ent = _chunk_stats(z, y, with_entropy)
        return lp, (ent if ent is not None else lp.new_zeros(0))

    lps, ents = [], []
    for s in range(0, hidden.shape[0], chunk):
        lp, ent = checkpoint(one, hidden[s : s + chunk], targets[s : s + chunk], use_reentrant=False)
        lps.append(lp)
        ents.append(ent)
    if not lps:  # nothing scored: empty results that still belong to the graph (a backward through them is a no-op)
        empty = hidden[:0, 0].float()
        return empty, (empty if with_entropy else None)
    return torch.cat(lps), (torch.cat(ents) if with_entropy else None)
