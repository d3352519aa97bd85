"""Attention over a packed token trie (``at2po.core.packing``): each token attends to its ancestors only.

The packed sequence is cut into query blocks of ``block`` consecutive tokens. By the pre-order property of the
pack, every ancestor of a block's tokens that lies before the block is an ancestor of its first token ``q0``, so a
block's keys are the path to ``q0`` (``pos[q0]`` tokens, read off the row that introduced it) followed by the block
itself; which of them a query sees is the interval test ``kv ≤ q < end[kv]``. Blocks are grouped by key length
and each group is one SDPA call over gathered keys/values with a boolean mask. The work is ≈ Σ_blocks block ×
(depth + block) — proportional to the unique tokens times the path length, where one dense masked call over the
whole pack would cost N² and the flat rows B·T².

Why not flex attention: transformers' ``flex_attention`` builds its own block mask from position ids and needs
``torch.compile`` to be fast (eager flex materialises the full N² scores). Gathered-key SDPA runs on any device
with the kernels SDPA picks for boolean masks (CPU flash kernel, CUDA memory-efficient kernel), needs no
compilation, and stays exact. The ``dense`` variant (one SDPA over the ``[N, N]`` ancestor mask) is kept as the
reference and for comparison.

The trainer switches the model to :data:`NAME` for a packed forward (``use_tree_attention``) and passes the plan as
``at2po_tree`` (transformers hands extra forward kwargs to the attention function). The name has no mask function
registered, so transformers builds no ``[N, N]`` mask for it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import AttentionInterface

from at2po.core.packing import TriePack

NAME = "at2po_tree_sdpa"


@dataclass
class TreeAttentionPlan:
    """Query blocks of a pack and, per group of blocks, their gathered key indices and boolean masks."""

    n_tokens: int  # N
    block: int  # query block size
    n_blocks: int
    groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (blocks [G], key index [G, L], mask [G, 1, Bq, L])
    order: torch.Tensor  # [n_blocks]: inverse permutation from the groups' concatenated blocks back to block order
    recompute: bool = False  # gather keys/values again in backward instead of keeping the gathered copies
    _additive: dict[torch.dtype, list[torch.Tensor]] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> TreeAttentionPlan:
        groups = [(b.to(device), k.to(device), m.to(device)) for b, k, m in self.groups]
        return TreeAttentionPlan(
            self.n_tokens, self.block, self.n_blocks, groups, self.order.to(device), self.recompute
        )

    def additive_masks(self, dtype: torch.dtype) -> list[torch.Tensor]:
        """The groups' masks as 0 / −inf in ``dtype``, made once per forward and shared by every layer: SDPA turns a
        boolean mask into this form itself, in every layer, and keeps each copy for backward."""
        if dtype not in self._additive:
            self._additive[dtype] = [
                torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, float("-inf"))
                for _, _, m in self.groups
            ]
        return self._additive[dtype]

    @property
    def key_reads(self) -> int:
        """Query × key pairs the plan computes (the attention work, padding included)."""
        return sum(int(k.numel()) * self.block for _, k, _ in self.groups)


def plan_tree_attention(
    pack: TriePack, block: int = 128, group_ratio: float = 0.75, recompute: bool = False
) -> TreeAttentionPlan:
    """Blocks of ``block`` queries and their keys (module docstring). Blocks are sorted by key length and a group
    is cut when a block's key length falls below ``group_ratio`` × the group's longest (bounding padding waste).
    ``recompute``: each group's gathered keys/values (≈ N · (depth/block + 1) entries per layer, more than the
    packed ones for deep paths) are not kept for backward but gathered and attended again there."""
    if block < 1:
        raise ValueError(f"plan_tree_attention: block must be ≥ 1, got {block}")
    N = pack.n_tokens
    if N == 0:
        raise ValueError("plan_tree_attention: the pack has no tokens")
    nb = max(1, -(-N // block))
    q0 = torch.arange(nb) * block  # [nb]
    q0c = q0.clamp(max=max(N - 1, 0))
    depth = pack.pos[q0c] if N else torch.zeros(nb, dtype=torch.long)  # [nb]: ancestors of q0 before it
    blen = (N - q0).clamp(max=block)  # [nb]
    klen = depth + blen  # [nb]
    by_len = torch.argsort(klen, descending=True, stable=True)
    kl = klen[by_len].tolist()
    cuts, first = [0], kl[0] if kl else 0
    for i, L in enumerate(kl):  # a loop over blocks (≤ N / block), on the host, once per forward
        if L < group_ratio * first:
            cuts.append(i)
            first = L
    cuts.append(len(kl))
    groups = []
    owner_row = pack.owner[q0c] if N else torch.zeros(nb, dtype=torch.long)  # [nb]
    for a, b in itertools.pairwise(cuts):
        blocks = by_len[a:b]  # [G]
        d, n, start = depth[blocks], blen[blocks], q0[blocks]  # [G]
        L = int(klen[blocks].max())
        j = torch.arange(L)[None, :]  # [1, L]
        path = pack.index[owner_row[blocks]]  # [G, T]: the row that introduced q0; its first d tokens are the path
        path = path[:, :L] if path.shape[1] >= L else F.pad(path, (0, L - path.shape[1]), value=0)
        in_path = j < d[:, None]  # [G, L]
        in_block = (j >= d[:, None]) & (j < (d + n)[:, None])
        kidx = torch.where(in_path, path, torch.where(in_block, start[:, None] + j - d[:, None], 0)).clamp(min=0)
        kvalid = in_path | in_block  # [G, L]
        q = start[:, None] + torch.arange(block)[None, :]  # [G, Bq]
        qvalid = q < N
        end = pack.end[kidx] if N else torch.zeros_like(kidx)  # [G, L]
        mask = (kvalid[:, None, :] & qvalid[:, :, None] & (kidx[:, None, :] <= q[:, :, None])
                & (q[:, :, None] < end[:, None, :]))  # [G, Bq, L]
        mask[:, :, 0] |= ~qvalid  # padding queries attend to one key (an all-masked row would give NaN)
        groups.append((blocks, kidx, mask[:, None]))
    order = torch.argsort(torch.cat([g[0] for g in groups]))
    return TreeAttentionPlan(N, block, nb, groups, order, recompute)


def tree_sdpa_attention_forward(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, at2po_tree: TreeAttentionPlan | None = None, dropout: float = 0.0,
    scaling: float | None = None, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of a packed trie. query: [1, H, N, D]; key, value: [1, H_kv, N, D]. Returns [1, N, H, D] like
    transformers' ``sdpa_attention_forward``. Without a plan (not a packed forward) it is plain SDPA."""
    if at2po_tree is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    for unsupported in ("sliding_window", "softcap", "s_aux"):
        if kwargs.get(unsupported) is not None:
            raise ValueError(
                f"tree-packed attention does not support the model's {unsupported!r}; use train.packing=rows"
            )
    plan = at2po_tree
    _, H, N, D = query.shape
    Hkv = key.shape[1]
    if N != plan.n_tokens or query.shape[0] != 1:
        raise ValueError(
            f"tree attention: the plan is for [1, {plan.n_tokens}] tokens, the query is {tuple(query.shape)}"
        )
    Bq, nb = plan.block, plan.n_blocks
    q = F.pad(query[0], (0, 0, 0, nb * Bq - N)).view(H, nb, Bq, D).transpose(0, 1)  # [nb, H, Bq, D]
    k, v = key[0], value[0]  # [H_kv, N, D]
    # CPU's flash kernel takes grouped key/value heads with a mask; CUDA's fused kernels do not (SDPA would fall back
    # to the math kernel), so there the key/value heads are repeated
    gqa = H != Hkv and query.device.type == "cpu"
    if H != Hkv and not gqa:
        k, v = k.repeat_interleave(H // Hkv, 0), v.repeat_interleave(H // Hkv, 0)
    outs = []
    for (blocks, kidx, _), mask in zip(plan.groups, plan.additive_masks(query.dtype), strict=True):
        args = (q, k, v, blocks, kidx, mask, dropout, scaling, gqa)
        if plan.recompute and torch.is_grad_enabled():  # keep only q, k, v for backward, not the gathered keys
            outs.append(checkpoint(_group_attention, *args, use_reentrant=False))
        else:
            outs.append(_group_attention(*args))
    out = torch.cat(outs).index_select(0, plan.order)  # [nb, H, Bq, D]
    out = out.transpose(1, 2).reshape(nb * Bq, H, D)[:N]  # [N, H, D]
    return out.unsqueeze(0), None


def _group_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocks: torch.Tensor, kidx: torch.Tensor,
                     mask: torch.Tensor, dropout: float, scaling: float | None, gqa: bool) -> torch.Tensor:
    """One group's blocks: q [nb, H, Bq, D], k/v [H_kv, N, D], key index [G, L] → [G, H, Bq, D]."""
    G, L = kidx.shape
    Hk, D = k.shape[0], k.shape[-1]
    flat = kidx.reshape(-1)
    kg = k.index_select(1, flat).view(Hk, G, L, D).transpose(0, 1)  # [G, H_kv, L, D]
    vg = v.index_select(1, flat).view(Hk, G, L, D).transpose(0, 1)
    return F.scaled_dot_product_attention(
        q.index_select(0, blocks), kg, vg, attn_mask=mask, dropout_p=dropout, scale=scaling, enable_gqa=gqa
    )


AttentionInterface.register(NAME, tree_sdpa_attention_forward)


def _configs(model: torch.nn.Module) -> dict[int, Any]:
    return {id(m.config): m.config for m in model.modules()
            if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")}


def tree_attention_active(model: torch.nn.Module) -> bool:
    """Whether ``model`` is inside :func:`use_tree_attention`."""
    configs = _configs(model)
    return bool(configs) and all(c._attn_implementation == NAME for c in configs.values())


def activation_checkpointed(model: torch.nn.Module) -> bool:
    """Whether any layer of ``model`` recomputes its forward in backward (transformers' gradient checkpointing)."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


@contextmanager
def use_tree_attention(model: torch.nn.Module) -> Iterator[None]:
    """Switch every config under ``model`` (a PEFT/DDP wrapper included) to :data:`NAME` for the duration.

    With gradient checkpointing the layers re-run their forward during backward, so the backward of a packed
    forward must run inside this context too (the trainer wraps forward and backward of each micro-batch)."""
    configs = _configs(model)
    saved = {k: c._attn_implementation for k, c in configs.items()}
    for c in configs.values():
        c._attn_implementation = NAME
    try:
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = saved[k]
