"""Logged (not optimised) training diagnostics: KL estimators and the turn entropy H_turn of the spec (ours and
the authors' code's estimator, both logged)."""

from __future__ import annotations

import torch

from at2po.core.segments import turn_mean, turn_sum

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(log_p: torch.Tensor, log_q: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(p_sample ‖ q) from samples of the current policy p (Schulman's estimators).

    k1 = log p − log q; k2 = ½ (log p − log q)²; k3 ("low-var") = exp(log q − log p) − (log q − log p) − 1,
    its log-ratio clamped to ±20 and the result to ≤ 10 as in verl, so one wild token cannot blow up the loss.
    """
    d = log_p - log_q
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        r = (-d).clamp(-20.0, 20.0)
        return (torch.exp(r) - r - 1.0).clamp(max=10.0)
    raise ValueError(f"kl estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


@torch.no_grad()
def turn_entropy(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    mask: torch.Tensor,
    tid: torch.Tensor,
    eps: float = 1e-8,
) -> torch.Tensor:
    """H_turn = mean_i [ −Σ_j p_ij log p_ij / log N_i ],  p_ij = softmax_j(KL_ij / KL_i,seq)  (0 when N_i = 1).

    KL_ij is the token-mean k3 estimate of KL(π_old ‖ π_θ) over the generated tokens of turn j of row i,
    KL_i,seq the same over all generated tokens of the row; N_i = number of turns with generated tokens.
    Rows without generated tokens are left out of the mean. ``tid`` is from ``checked_turn_index``.
    Returns a 0-dim tensor (no host sync).
    """
    mask_f = mask.to(log_prob.dtype)
    k3 = torch.where(mask, kl_estimate(old_log_prob, log_prob, "k3"), torch.zeros_like(log_prob))  # [B, T]
    kl_turn, cnt = turn_mean(k3, tid, mask_f)  # [B, T_turn]
    n_tok = mask_f.sum(-1)  # [B]
    kl_seq = k3.sum(-1) / n_tok.clamp(min=1.0)  # [B]
    return _turn_softmax_entropy(kl_turn / (kl_seq[:, None] + eps), cnt > 0, n_tok > 0)


def _turn_softmax_entropy(z: torch.Tensor, present: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """mean over ``rows`` [B] of −Σ_j p_j log p_j / log N, p = softmax over the ``present`` turns of ``z``
    [B, T_turn] (0 for one-turn rows)."""
    z = torch.where(present, z, torch.full_like(z, torch.finfo(z.dtype).min))
    logp = torch.log_softmax(z, dim=-1)
    ent = -(torch.where(present, logp.exp() * logp, torch.zeros_like(logp))).sum(-1)  # [B]
    n_turns = present.sum(-1).to(z.dtype)  # [B]
    h = torch.where(n_turns > 1, ent / torch.log(n_turns.clamp(min=2.0)), torch.zeros_like(ent))
    r = rows.to(h.dtype)
    return (h * r).sum() / r.sum().clamp(min=1.0)


@torch.no_grad()
def turn_entropy_ref(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    mask: torch.Tensor,
    tid: torch.Tensor,
    eps: float = 1e-8,
) -> torch.Tensor:
    """H_turn as the authors' code computes it (``compute_policy_loss_gspo_turn``): the same softmax entropy as
    :func:`turn_entropy`, but KL_ij is turn j's *summed* log-ratio Σ_t (log π_θ − log π_old) (a k1 estimate) and
    KL_i,seq the row's summed log-ratio, z_ij = KL_ij / KL_i,seq (a row sum of magnitude < eps is replaced by
    ±eps, keeping its sign). Normalised by log N_i, 0 when N_i = 1; rows without generated tokens left out."""
    mask_f = mask.to(log_prob.dtype)
    k1 = torch.where(mask, log_prob - old_log_prob, torch.zeros_like(log_prob))  # [B, T]
    kl_turn = turn_sum(k1, tid)  # [B, T_turn]
    cnt = turn_sum(mask_f, tid)
    kl_seq = k1.sum(-1)  # [B]
    denom = torch.where(kl_seq.abs() < eps, torch.where(kl_seq < 0, -eps, eps) * torch.ones_like(kl_seq), kl_seq)
    z = kl_turn / denom[:, None]
    return _turn_softmax_entropy(z, cnt > 0, mask_f.sum(-1) > 0)


__all__ = ["KL_ESTIMATORS", "kl_estimate", "turn_entropy", "turn_entropy_ref"]
