"""Clipped policy-gradient losses at token, sequence (GSPO) and turn (ATPO) granularity.

All tensors are [B, T] (rows = trajectories). ``log_prob`` carries the gradient; ``old_log_prob`` is the
behaviour policy; ``response_mask`` is 1 on generated tokens (observation/prompt tokens are 0);
``turn_ids`` gives each token's turn index within its row. With r the importance ratio of the loss:

    L = agg_{i,t} M_it · max( −A_it · r_it , −A_it · clip(r_it, 1 − ε_l, 1 + ε_r) )

* ``token`` (GRPO/PPO/DAPO): r_it = π_θ(y_it)/π_old(y_it); default ε = 0.2/0.2; optional dual clip c (for
  A < 0 the loss is capped at −c·A).
* ``sequence`` (GSPO-token): r_it = sg[(π_θ(y_i)/π_old(y_i))^{1/|y_i|}] · π_θ(y_it)/sg[π_θ(y_it)];
  default ε = 3e-4/4e-4.
* ``turn`` (ATPO): r_it = sg[(π_θ(y_i^k)/π_old(y_i^k))^{1/|y_i^k|}] · π_θ(y_it)/sg[π_θ(y_it)] with k the
  turn of t (geometric mean over the turn's generated tokens); default ε = 3e-3/4e-3.
* ``aepo`` (AEPO's entropy-balanced clipping): the token ratio, with the upper clip bound replaced by
  (1 + ε_r)·r/sg(r): clip(r) = clamp(r, 1 − ε_l, (1 + ε_r)·r/sg(r)). Its value is PPO's clipped ratio, but above
  1 + ε_r the gradient is (1 + ε_r)·∇log π instead of 0 (the high-entropy tokens that leave the range keep
  learning); default ε = 0.2/0.2 (AEPO adds the dual clip c = 3: ``clip_ratio_c=3``).

The value of r is the token/sequence/turn ratio; its gradient flows through each token's own log-prob, so
a whole turn whose ratio leaves the clip range (on the side the advantage pushes) stops contributing while
the other turns of the row still learn. Turns come from ``turn_ids`` (never from runs of the mask), all
per-turn reductions are ``scatter_add`` over a turn axis — no Python loop over rows or turns, no host sync.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from at2po.core.diagnostics import KL_ESTIMATORS, kl_estimate, turn_entropy, turn_entropy_ref
from at2po.core.registry import Registry, function_identity
from at2po.core.segments import checked_turn_index, turn_mean, turn_sum

_MAX_LOG_RATIO = 20.0  # exp(±20) keeps the ratio finite in fp32; such tokens are clipped anyway


@dataclass(frozen=True)
class Aggregation:
    """A registered loss aggregation: ``fn(x [B, T], mask_f [B, T], norm) -> scalar`` and its micro-batch
    ``weight``: "tokens" when a mini-batch's loss is a mean over its tokens (gradient accumulation weighs each
    micro-batch by its share of response tokens), "rows" when it is a mean over its rows (share of rows)."""

    fn: Callable[[torch.Tensor, torch.Tensor, float | None], torch.Tensor]
    weight: Literal["tokens", "rows"]


AGG_MODES: Registry[Aggregation] = Registry("loss aggregation", "at2po.core.losses.register_aggregation",
                                            identity=lambda a: function_identity(a.fn))


def register_aggregation(
    name: str, weight: Literal["tokens", "rows"] = "rows",
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Decorator adding an aggregation ``fn(x, mask_f, norm) -> scalar`` (then ``loss.agg: <name>`` selects it).
    ``weight``: how gradient accumulation weighs micro-batches — "tokens" for a mean over tokens, "rows" for a
    mean over rows (see :class:`Aggregation`)."""
    if weight not in ("tokens", "rows"):
        raise ValueError(f"aggregation weight must be 'tokens' or 'rows', got {weight!r}")

    def deco(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        AGG_MODES.add(name, Aggregation(fn, weight))
        return fn

    return deco


@register_aggregation("token-mean", weight="tokens")
def _token_mean(x: torch.Tensor, mask_f: torch.Tensor, norm: float | None) -> torch.Tensor:
    return (x * mask_f).sum() / mask_f.sum().clamp(min=1.0)


def _rows(x: torch.Tensor, mask_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    row_sum = (x * mask_f).sum(-1)  # [B]
    row_n = mask_f.sum(-1)  # [B]
    return row_sum, row_n, (row_n > 0).to(x.dtype).sum().clamp(min=1.0)


@register_aggregation("seq-mean-token-mean")
def _seq_mean_token_mean(x: torch.Tensor, mask_f: torch.Tensor, norm: float | None) -> torch.Tensor:
    row_sum, row_n, n_rows = _rows(x, mask_f)
    return (row_sum / row_n.clamp(min=1.0)).sum() / n_rows


@register_aggregation("seq-mean-token-sum")
def _seq_mean_token_sum(x: torch.Tensor, mask_f: torch.Tensor, norm: float | None) -> torch.Tensor:
    row_sum, _, n_rows = _rows(x, mask_f)
    return row_sum.sum() / n_rows


@register_aggregation("seq-mean-token-sum-norm")
def _seq_mean_token_sum_norm(x: torch.Tensor, mask_f: torch.Tensor, norm: float | None) -> torch.Tensor:
    return (x * mask_f).sum() / float(norm if norm is not None else x.shape[-1])


def aggregate(x: torch.Tensor, mask_f: torch.Tensor, agg: str, norm: float | None = None) -> torch.Tensor:
    """Reduce a [B, T] per-token loss to a scalar by registered aggregation ``agg``.

    token-mean: Σ_it M x / Σ_it M;  seq-mean-token-mean (ATPO): mean over non-empty rows of (Σ_t M x / Σ_t M);
    seq-mean-token-sum: mean over non-empty rows of Σ_t M x;  seq-mean-token-sum-norm (Dr. GRPO):
    Σ_it M x / norm with norm = T unless given; or one added with :func:`register_aggregation`.
    """
    return AGG_MODES.lookup(agg).fn(x, mask_f, norm)


# --- ratios: each returns r [B, T] (value as documented, gradient r · ∇log π_θ(y_t)) -----------------------
def _token_ratio(lp: torch.Tensor, log_ratio: torch.Tensor, mask_f: torch.Tensor, tid: torch.Tensor | None):
    return torch.exp(log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))


def _sg_ratio(lp: torch.Tensor, seg_log_ratio: torch.Tensor) -> torch.Tensor:
    """sg[exp(seg_log_ratio)] · π_θ/sg[π_θ]: the value of the segment ratio, the gradient of each token."""
    return torch.exp(seg_log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO) + (lp - lp.detach()))


def _sequence_ratio(lp: torch.Tensor, log_ratio: torch.Tensor, mask_f: torch.Tensor, tid: torch.Tensor | None):
    with torch.no_grad():
        seq = log_ratio.sum(-1, keepdim=True) / mask_f.sum(-1, keepdim=True).clamp(min=1.0)  # [B, 1]
    return _sg_ratio(lp, seq)


def _turn_ratio(lp: torch.Tensor, log_ratio: torch.Tensor, mask_f: torch.Tensor, tid: torch.Tensor | None):
    assert tid is not None
    with torch.no_grad():
        per_turn, _ = turn_mean(log_ratio, tid, mask_f)  # [B, T_turn] mean log-ratio of each turn
        tok = per_turn.gather(1, tid)  # [B, T] each token's turn value
    return _sg_ratio(lp, tok)


Ratio = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class PolicyLossSpec:
    """A registered policy loss: its ratio ``r = ratio(log_prob, log_ratio, mask_f, turn_index)`` [B, T] (value
    as documented, gradient through each token's log-prob), its paper clip (ε_l, ε_r), whether it needs
    ``turn_ids``, and whether its upper clip bound is AEPO's entropy-balanced (1 + ε_r)·r/sg(r)."""

    ratio: Ratio
    default_clip: tuple[float, float]
    needs_turn_ids: bool = False
    balanced_upper: bool = False


POLICY_LOSSES: Registry[PolicyLossSpec] = Registry("policy loss", "at2po.core.losses.register_policy_loss",
                                                   identity=lambda spec: function_identity(spec.ratio))


def register_policy_loss(
    name: str, ratio: Ratio, default_clip: tuple[float, float], *, needs_turn_ids: bool = False,
    balanced_upper: bool = False,
) -> PolicyLossSpec:
    """Add a policy loss to the registry (then ``loss.name: <name>`` selects it from YAML or the CLI; list the
    registering module under ``imports:`` in the config). Names are unique."""
    spec = PolicyLossSpec(ratio, (float(default_clip[0]), float(default_clip[1])), needs_turn_ids, balanced_upper)
    return POLICY_LOSSES.add(name, spec)  # a plugin imported twice re-registers the same ratio: fine


register_policy_loss("token", _token_ratio, (0.2, 0.2))  # GRPO / PPO / DAPO
register_policy_loss("sequence", _sequence_ratio, (3e-4, 4e-4))  # GSPO
register_policy_loss("turn", _turn_ratio, (3e-3, 4e-3), needs_turn_ids=True)  # ATPO (paper)
register_policy_loss("aepo", _token_ratio, (0.2, 0.2), balanced_upper=True)  # AEPO (paper)


def default_clip(name: str) -> tuple[float, float]:
    """The registered loss's paper clip (ε_l, ε_r)."""
    return POLICY_LOSSES.lookup(name).default_clip


def _clip_ratio(spec: PolicyLossSpec, ratio: torch.Tensor, eps_l: float, eps_h: float) -> torch.Tensor:
    """clip(r): clamp(r, 1 − ε_l, 1 + ε_r), or with ``balanced_upper`` (AEPO) clamp(r, 1 − ε_l, (1 + ε_r)·r/sg(r))
    (the same value; above the bound the gradient of (1 + ε_r)·r/sg(r), i.e. (1 + ε_r)·∇log π)."""
    if not spec.balanced_upper:
        return ratio.clamp(1.0 - eps_l, 1.0 + eps_h)
    upper = (1.0 + eps_h) * ratio / ratio.detach().clamp(min=1e-30)
    return torch.where(ratio > 1.0 + eps_h, upper, ratio.clamp(min=1.0 - eps_l))


def entropy_aware_advantages(
    advantages: torch.Tensor, entropy: torch.Tensor, response_mask: torch.Tensor, weight: float = 0.2
) -> torch.Tensor:
    """AEPO's entropy-aware advantage: Ã_t = A_t · (1 + weight · sg(z(H_t))), z the z-score of the token
    entropies H_t over the response tokens of the (micro-)batch (population std; 0 where it is 0). [B, T]"""
    mask = response_mask.bool()
    h = entropy.detach()
    n = mask.sum().clamp(min=1)
    mean = torch.where(mask, h, torch.zeros_like(h)).sum() / n
    var = torch.where(mask, (h - mean) ** 2, torch.zeros_like(h)).sum() / n
    z = torch.where(var > 0, (h - mean) / var.sqrt().clamp(min=1e-12), torch.zeros_like(h))
    return torch.where(mask, advantages * (1.0 + weight * z), advantages)


def policy_loss(
    name: str,
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    turn_ids: torch.Tensor | None = None,
    clip_low: float | None = None,
    clip_high: float | None = None,
    agg: str = "seq-mean-token-mean",
    *,
    clip_ratio_c: float | None = None,
    ref_log_prob: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    loss_scale_norm: float | None = None,
    metrics: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Registered policy loss ``name`` (token, sequence, turn, aepo, or one added with :func:`register_policy_loss`;
    module docstring for the equations) plus optional terms.

    loss = agg(clipped PG) + kl_coef · agg(KL_est(π_θ ‖ π_ref)) − entropy_coef · agg(entropy)

    ``clip_low``/``clip_high`` are ε_l/ε_r (ratio clipped to [1−ε_l, 1+ε_r]); ``None`` takes the loss's
    registered default (token 0.2/0.2, sequence 3e-4/4e-4, turn 3e-3/4e-3, aepo 0.2/0.2). ``turn_ids`` is required
    for ``turn`` and, when given, also enables the per-turn metrics; ids of generated tokens must lie in [0, T)
    (true for real rows: turn k starts at position >= k), they need not be contiguous, and ids on masked tokens are
    ignored. ``clip_ratio_c`` > 1 enables dual clip. ``entropy`` is the per-token policy entropy [B, T] (with
    gradient) for an entropy bonus. Metrics are detached 0-dim tensors
    (call ``.item()`` when logging): pg_loss, pg_clipfrac, pg_clipfrac_turn, ppo_kl (k1), approx_kl (k3),
    ratio_mean/min/max, turn_entropy (H_turn), and kl_loss / entropy / pg_clipfrac_dual when used.
    """
    POLICY_LOSSES.lookup(name)
    AGG_MODES.lookup(agg)
    shape = log_prob.shape
    if log_prob.dim() != 2:
        raise ValueError(f"log_prob must be [B, T], got shape {tuple(shape)}")
    named = {"old_log_prob": old_log_prob, "advantages": advantages, "response_mask": response_mask}
    if turn_ids is not None:
        named["turn_ids"] = turn_ids
    if ref_log_prob is not None:
        named["ref_log_prob"] = ref_log_prob
    if entropy is not None:
        named["entropy"] = entropy
    for key, t in named.items():
        if t.shape != shape:
            raise ValueError(f"{key} has shape {tuple(t.shape)}, log_prob has {tuple(shape)}")
    spec = POLICY_LOSSES[name]
    if spec.needs_turn_ids and turn_ids is None:
        raise ValueError(f"policy loss {name!r} needs turn_ids [B, T] (the turn index of each token)")
    if kl_coef and ref_log_prob is None:
        raise ValueError("kl_coef > 0 needs ref_log_prob")
    if entropy_coef and entropy is None:
        raise ValueError("entropy_coef > 0 needs the per-token entropy tensor")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")
    d_low, d_high = spec.default_clip
    eps_l = d_low if clip_low is None else float(clip_low)
    eps_h = d_high if clip_high is None else float(clip_high)
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c (dual clip) must be > 1, got {clip_ratio_c}")

    mask = response_mask.bool()
    mask_f = mask.to(log_prob.dtype)
    zero = torch.zeros((), dtype=log_prob.dtype, device=log_prob.device)
    # Off-mask positions are replaced (not multiplied) so that -inf/NaN there can never leak into the
    # loss or its gradient: torch.where sends exactly zero gradient to the unselected branch.
    lp = torch.where(mask, log_prob, zero)
    old = torch.where(mask, old_log_prob.to(log_prob.dtype), zero)
    adv = torch.where(mask, advantages.to(log_prob.dtype), zero)
    tid = checked_turn_index(turn_ids, mask) if turn_ids is not None else None
    log_ratio = lp - old  # [B, T]

    ratio = spec.ratio(lp, log_ratio, mask_f, tid)  # [B, T]
    pg1 = -adv * ratio
    pg2 = -adv * _clip_ratio(spec, ratio, eps_l, eps_h)
    pg = torch.maximum(pg1, pg2)
    if clip_ratio_c is not None:
        pg3 = -adv * clip_ratio_c
        pg_dual = torch.where(adv < 0, torch.minimum(pg, pg3), pg)
    else:
        pg_dual = pg
    pg_loss = aggregate(pg_dual, mask_f, agg, loss_scale_norm)
    loss = pg_loss

    out: dict[str, torch.Tensor] = {}
    if ref_log_prob is not None:
        ref = torch.where(mask, ref_log_prob.to(log_prob.dtype), zero)
        kl_loss = aggregate(kl_estimate(lp, ref, kl_estimator), mask_f, agg, loss_scale_norm)
        if kl_coef:
            loss = loss + kl_coef * kl_loss
        out["kl_loss"] = kl_loss.detach()
    if entropy is not None:
        ent = aggregate(torch.where(mask, entropy, zero), mask_f, agg, loss_scale_norm)
        if entropy_coef:
            loss = loss - entropy_coef * ent
        out["entropy"] = ent.detach()

    if metrics:
        with torch.no_grad():
            n_tok = mask_f.sum().clamp(min=1.0)
            clipped = (pg2 > pg1) & mask
            out["pg_loss"] = pg_loss.detach()
            out["pg_clipfrac"] = clipped.to(mask_f.dtype).sum() / n_tok
            if clip_ratio_c is not None:
                out["pg_clipfrac_dual"] = ((pg3 < pg) & (adv < 0) & mask).to(mask_f.dtype).sum() / n_tok
            out["ppo_kl"] = (-log_ratio * mask_f).sum() / n_tok
            out["approx_kl"] = (kl_estimate(old, lp, "k3") * mask_f).sum() / n_tok
            r = ratio.detach()
            out["ratio_mean"] = (r * mask_f).sum() / n_tok
            out["ratio_max"] = torch.where(mask, r, torch.full_like(r, -torch.inf)).amax()
            out["ratio_min"] = torch.where(mask, r, torch.full_like(r, torch.inf)).amin()
            if tid is not None:
                present = turn_sum(mask_f, tid) > 0  # [B, T_turn]
                turn_clipped = (turn_sum(clipped.to(mask_f.dtype), tid) > 0) & present
                out["pg_clipfrac_turn"] = turn_clipped.sum().to(mask_f.dtype) / present.sum().clamp(min=1)
                out["turn_entropy"] = turn_entropy(lp.detach(), old, mask, tid)
                out["turn_entropy_ref"] = turn_entropy_ref(lp.detach(), old, mask, tid)
    return loss, out


__all__ = [
    "AGG_MODES", "POLICY_LOSSES", "Aggregation", "PolicyLossSpec", "aggregate", "default_clip",
    "entropy_aware_advantages", "policy_loss", "register_aggregation", "register_policy_loss",
]
