"""Per-turn reductions over [B, T] token tensors without Python loops or host syncs.

Turns are given by ``turn_ids`` [B, T] (the turn index of each token within its row, -1 on prompt tokens).
A row has at most T turns, so per-turn quantities live on a turn axis of size T: ``[B, T_turn]`` with
``T_turn = T``, filled by ``scatter_add`` along dim 1. Tokens outside ``mask`` never contribute.
"""

from __future__ import annotations

import torch


def checked_turn_index(turn_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Turn id of each masked token, 0 elsewhere (so it can index the turn axis).  # [B, T] int64

    Raises ValueError for a masked token whose turn id is outside [0, T). The check runs only for CPU
    tensors: on an accelerator it would force a host sync, which the loss path must not do.
    """
    if turn_ids.shape != mask.shape:
        raise ValueError(f"turn_ids has shape {tuple(turn_ids.shape)}, response_mask has {tuple(mask.shape)}")
    if turn_ids.dtype.is_floating_point:
        raise ValueError(f"turn_ids must be an integer tensor, got {turn_ids.dtype}")
    tid = torch.where(mask, turn_ids.long(), torch.zeros_like(turn_ids, dtype=torch.long))
    if tid.device.type == "cpu" and tid.numel() > 0:
        bad = (tid < 0) | (tid >= tid.shape[-1])
        if bool(bad.any()):
            b, t = (int(x) for x in bad.nonzero()[0])
            raise ValueError(
                f"turn_ids[{b}, {t}] = {int(turn_ids[b, t])} on a response token: turn ids of generated tokens "
                f"must lie in [0, {tid.shape[-1]})"
            )
    return tid


def turn_sum(values: torch.Tensor, tid: torch.Tensor) -> torch.Tensor:
    """Σ of ``values`` over each (row, turn); ``values`` must already be 0 off the mask.  # [B, T_turn]"""
    return torch.zeros_like(values).scatter_add_(1, tid, values)


def turn_mean(values: torch.Tensor, tid: torch.Tensor, mask_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``values`` over the masked tokens of each (row, turn) and the token counts.

    Returns (mean [B, T_turn], count [B, T_turn]); turns with no tokens get mean 0.
    """
    s = turn_sum(values * mask_f, tid)
    c = turn_sum(mask_f, tid)
    return s / c.clamp(min=1.0), c
