"""Decode attention in row groups, so padding columns are not read.

The running batch keeps every row's key/values right-aligned in one [B, H_kv, W, D] window (``slab_cache.py``):
a row with a short context leaves masked columns on its left, and SDPA reads them anyway (a masked column costs
as much as a real one: decode attention is bound by reading key/values). With rows ordered roughly by context
length, contiguous row groups start at very different columns; attending each group over only the columns from
its first used one reads far fewer key/values. The result is the same attention (the skipped columns were
masked), computed by the same SDPA kernel on views (no copies).

The engine switches the model to :data:`NAME` while it decodes (``use_grouped_attention``) and passes the
groups as ``at2po_groups`` with each decode forward; without them (prefill, training) it is plain SDPA.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "at2po_grouped_sdpa"

Groups = list[tuple[int, int, int]]  # (first row, end row, first column)


def grouped_sdpa_attention_forward(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, at2po_groups: Groups | None = None, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA per row group: rows [g0, g1) attend over key columns [c0, W) only (the columns before c0 are masked
    for all of them). query: [B, H, 1, D]; key, value: [B, H_kv, W, D]; mask: [B, 1, 1, W] or None.
    Returns [B, 1, H, D] like ``sdpa_attention_forward``."""
    if not at2po_groups or query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    outs = []
    for g0, g1, c0 in at2po_groups:
        mask = attention_mask[g0:g1, ..., c0:] if attention_mask is not None else None
        out, _ = sdpa_attention_forward(module, query[g0:g1], key[g0:g1, :, c0:], value[g0:g1, :, c0:], mask, **kwargs)
        outs.append(out)
    return torch.cat(outs), None


AttentionInterface.register(NAME, grouped_sdpa_attention_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)


def plan_groups(mask: torch.Tensor, max_groups: int = 8, min_rows: int = 16, call_cost: int = 2048) -> Groups | None:
    """Split the batch into ≤ ``max_groups`` contiguous row groups of ≥ ``min_rows`` rows, each starting at the
    first column any of its rows attends to. Adjacent groups are merged while one call reads fewer than
    ``call_cost`` extra key/value columns (an SDPA call costs about as much as reading ~2k columns on a CPU).
    None when one call over the whole window is as good. mask: [B, W] (1 = attended)."""
    B, W = mask.shape
    if B < 2 * min_rows or W == 0:
        return None
    starts = mask.to(torch.int8).argmax(dim=1)  # [B]: first attended column of each row
    chunk = max(min_rows, -(-B // max_groups))
    G = -(-B // chunk)
    padded = torch.nn.functional.pad(starts, (0, G * chunk - B), value=W)
    first = padded.view(G, chunk).min(dim=1).values.tolist()  # [G]
    groups: Groups = []
    for g, c in enumerate(first):
        g0, g1 = g * chunk, min((g + 1) * chunk, B)
        if groups:
            a0, a1, ca = groups[-1]
            merged = (g1 - a0) * (W - min(ca, c))
            if merged <= (a1 - a0) * (W - ca) + (g1 - g0) * (W - c) + call_cost:
                groups[-1] = (a0, g1, min(ca, c))
                continue
        groups.append((g0, g1, c))
    return None if len(groups) == 1 and groups[0][2] * B < call_cost else groups


@contextmanager
def use_grouped_attention(model: torch.nn.Module) -> Iterator[bool]:
    """Switch ``model`` from SDPA to :data:`NAME` for the duration (yields whether it did: other attention
    implementations, e.g. flash attention, are left alone)."""
    config = model.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        yield False
        return
    config._attn_implementation = NAME
    try:
        yield True
    finally:
        config._attn_implementation = "sdpa"
