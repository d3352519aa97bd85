"""Train/inference log-prob consistency: the sampler↔trainer mismatch and truncated importance sampling (TIS).

The rollout engine (vLLM, or the HF engine in another precision) samples y_t with log-prob log π_sampler(y_t | ·);
the trainer recomputes log π_old(y_t | ·) with the same weights but its own kernels. They should agree; a drift
biases the PPO ratio π_θ / π_old, which assumes the tokens were drawn from π_old. :func:`logprob_mismatch`
measures the drift per step; :func:`tis_weights` is the correction of verl / TRL ("truncated importance
sampling"): each token's loss is multiplied by w_t = min(π_old(y_t) / π_sampler(y_t), C), detached.
All tensors are ``[B, T]``; nothing leaves the device (no ``.item()``).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def logprob_mismatch(
    sampler_log_prob: torch.Tensor, trainer_log_prob: torch.Tensor, response_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Mean and max of |Δ_t| = |log π_old(y_t) − log π_sampler(y_t)| over generated tokens (response_mask = 1).

    Also ``ratio_mean`` = mean exp(Δ_t), the average importance ratio TIS would apply before truncation.
    Returns 0-d tensors (zeros when the mask is empty).  All inputs: [B, T].
    """
    if sampler_log_prob.shape != trainer_log_prob.shape or sampler_log_prob.shape != response_mask.shape:
        raise ValueError(
            f"logprob_mismatch: shapes differ: sampler {tuple(sampler_log_prob.shape)}, "
            f"trainer {tuple(trainer_log_prob.shape)}, mask {tuple(response_mask.shape)}"
        )
    mask = response_mask.to(trainer_log_prob.dtype)  # [B, T]
    n = mask.sum().clamp(min=1.0)
    delta = (trainer_log_prob - sampler_log_prob.to(trainer_log_prob.dtype)) * mask  # [B, T]
    return {
        "mean_abs": delta.abs().sum() / n,
        "max_abs": delta.abs().amax() if delta.numel() else delta.new_zeros(()),
        "ratio_mean": (torch.exp(delta) * mask).sum() / n,
    }


@torch.no_grad()
def tis_weights(
    trainer_log_prob: torch.Tensor, sampler_log_prob: torch.Tensor, cap: float = 2.0
) -> torch.Tensor:
    """Truncated importance weights w_t = min(exp(log π_old(y_t) − log π_sampler(y_t)), C), detached.  [B, T]

    Multiply the per-token policy loss by w_t (masked tokens are masked by the loss anyway). C = ``cap`` > 0
    (verl's ``tis_imp_ratio_cap``, 2 by default there).
    """
    if cap <= 0:
        raise ValueError(f"tis_weights: cap must be > 0, got {cap}")
    log_ratio = (trainer_log_prob - sampler_log_prob.to(trainer_log_prob.dtype)).clamp(max=20.0)  # overflow guard
    return torch.exp(log_ratio).clamp(max=cap)
