"""Per-token log-probabilities of a causal LM on given token ids (the trainer's π_θ / π_old / π_ref)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_log_probs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,  # [B, T]
    attention_mask: torch.Tensor,  # [B, T]
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log π(y_t | y_<t) for every position t ≥ 1, aligned with ``input_ids``: ``[B, T]``, column 0 is 0.

    Logits are divided by the rollout temperature so the ratio π_θ/π_old compares the same distribution the
    engine sampled from. ``logsumexp`` avoids materialising a full ``[B, T, V]`` log-softmax copy.
    ``with_entropy`` also returns the full-vocabulary entropy H_t = −Σ_v p_v log p_v (for an entropy bonus).
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # [B, T, V]
    logits = logits[:, :-1].float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    target = input_ids[:, 1:]  # [B, T-1]
    lse = torch.logsumexp(logits, dim=-1)  # [B, T-1]
    lp = F.pad(torch.gather(logits, -1, target.unsqueeze(-1)).squeeze(-1) - lse, (1, 0))  # [B, T]
    if not with_entropy:
        return lp
    p = torch.softmax(logits, dim=-1)
    ent = lse - (p * logits).sum(-1)  # H = logsumexp(z) − Σ p z
    return lp, F.pad(ent, (1, 0))
