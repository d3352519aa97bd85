"""Per-token log-probabilities of a causal LM on given token ids (the trainer's π_θ / π_old / π_ref).

Two entry points:

* :func:`token_log_probs` — the reference: one forward over padded rows, the full ``[B, T, V]`` logits.
* :func:`scored_log_probs` — what the trainer runs: log-probs only at the positions the loss reads (``score_mask``,
  the generated tokens), with the LM head applied in chunks (``chunked_head.py``) and, with ``packing="tree"``, the
  rows packed into their token trie (``at2po.core.packing``) so the model runs once per unique token.

Both equal each other to float rounding (tests/train/test_packed.py checks values and gradients).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from at2po.core.packing import pack_rows
from at2po.train.chunked_head import chunked_log_probs
from at2po.train.tree_attention import (
    activation_checkpointed,
    plan_tree_attention,
    tree_attention_active,
    use_tree_attention,
)


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


@dataclass(frozen=True)
class ForwardSpec:
    """How the trainer runs the model over rows (``train.packing``, ``train.logprob_chunk_tokens``, ...)."""

    packing: Literal["tree", "rows"] = "tree"
    chunk_tokens: int = 512  # LM-head rows per chunk; 0 = full logits from the model's own head
    attention: Literal["blocked", "dense"] = "blocked"  # tree attention: gathered-key blocks, or one [N, N] mask
    attention_block: int = 128  # query block of the blocked tree attention
    attention_recompute: bool = False  # blocked tree attention: gather keys/values again in backward (less memory)


@dataclass
class ScoredLogProbs:
    log_prob: torch.Tensor  # [B, T] fp32, 0 off ``score_mask``
    entropy: torch.Tensor | None  # [B, T] fp32 full-vocabulary entropy, 0 off ``score_mask``
    tokens: int  # tokens the model ran over: unique (tree) or padded B·T (rows)


_POST_HEAD_SCALING = ("logit_scale", "logits_scaling")  # multipliers: 1.0 is the identity


def _check_head(model: torch.nn.Module) -> torch.nn.Module:
    """The output embeddings, after checking the model applies nothing to the logits after them."""
    inner = getattr(model, "module", model)  # DDP
    cfg = getattr(inner, "config", None)
    for attr in ("final_logit_softcapping", *_POST_HEAD_SCALING):
        val = getattr(cfg, attr, None)
        if val is not None and (attr == "final_logit_softcapping" or val != 1.0):
            raise ValueError(
                f"model config sets {attr}={val}: logits are transformed after the LM head, which the chunked head "
                f"does not reproduce; set train.logprob_chunk_tokens=0 (full logits from the model)"
            )
    head = inner.get_output_embeddings()
    if head is None:
        raise ValueError("the model has no output embeddings (get_output_embeddings() is None); "
                         "set train.logprob_chunk_tokens=0")
    return head


@contextmanager
def lm_head_input(model: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Capture the LM head's input (the final hidden states) and feed the head an empty slice instead, so a forward
    through the model's own ``forward`` (DDP and PEFT wrappers keep working) computes no logits."""
    head = _check_head(model)
    box: dict[str, torch.Tensor] = {}

    def hook(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        box["hidden"] = args[0]
        return (args[0][..., :0, :], *args[1:])

    handle = head.register_forward_pre_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def _head_log_probs(
    model: torch.nn.Module, run: Any, prev: torch.Tensor, targets: torch.Tensor, temperature: float, chunk: int,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the forward ``run(model)`` and score ``targets`` [M] from the states at flat positions ``prev`` [M]."""
    if chunk > 0:
        with lm_head_input(model) as box:
            run(model)
        hidden = box["hidden"].reshape(-1, box["hidden"].shape[-1])  # [N, d]
        return chunked_log_probs(
            hidden.index_select(0, prev), _check_head(model), targets, temperature, chunk, with_entropy
        )
    logits = run(model).logits
    z = logits.reshape(-1, logits.shape[-1]).index_select(0, prev).float()  # [M, V]
    if temperature > 0 and temperature != 1.0:
        z = z / temperature
    lse = torch.logsumexp(z, dim=-1)
    lp = z.gather(-1, targets[:, None])[:, 0] - lse
    ent = lse - (torch.softmax(z, dim=-1) * z).sum(-1) if with_entropy else None
    return lp, ent


def scored_log_probs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,  # [B, T] long, right-padded
    attention_mask: torch.Tensor,  # [B, T], 1 on real tokens
    score_mask: torch.Tensor,  # [B, T], nonzero where log π(y_t | y_<t) is needed (t ≥ 1)
    temperature: float = 1.0,
    spec: ForwardSpec = ForwardSpec(),
    with_entropy: bool = False,
) -> ScoredLogProbs:
    """log π(y_t | y_<t) [B, T] at the positions of ``score_mask`` (0 elsewhere; column 0 is never scored), with
    gradient when grad is enabled, and the full-vocabulary entropy there with ``with_entropy``.

    ``spec.packing == "tree"``: the rows are packed into their trie (N unique tokens, positions = depth), the model
    runs once over ``[1, N]`` with each token attending to its ancestors (``tree_attention.py``), each scored node
    is scored once from its parent's state, and a gather expands the packed log-probs back to the rows (so a token
    shared by k rows gets the sum of their gradients). ``"rows"``: one padded forward. Either way only the scored
    positions reach the LM head, ``spec.chunk_tokens`` at a time.
    """
    B, T = input_ids.shape
    dev = input_ids.device
    lengths = attention_mask.sum(-1)
    if B == 0 or int(lengths.max()) == 0:
        raise ValueError("scored_log_probs: no tokens (every row is empty)")
    if not bool((attention_mask.bool() == (torch.arange(T, device=dev)[None, :] < lengths[:, None])).all()):
        raise ValueError("scored_log_probs: rows must be right-padded (attention_mask 1…1 0…0 per row)")
    score = score_mask.bool() & attention_mask.bool()
    score[:, 0] = False
    if spec.packing == "rows":
        flat_cur = score.reshape(-1).nonzero()[:, 0]  # [M] flat b·T + t
        flat_prev = flat_cur - 1

        def run(m: torch.nn.Module) -> Any:
            return m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)

        targets = input_ids.reshape(-1).index_select(0, flat_cur)
        lp_sel, ent_sel = _head_log_probs(model, run, flat_prev, targets, temperature, spec.chunk_tokens, with_entropy)
        lp = lp_sel.new_zeros(B * T).index_copy(0, flat_cur, lp_sel).view(B, T)
        ent = ent_sel.new_zeros(B * T).index_copy(0, flat_cur, ent_sel).view(B, T) if ent_sel is not None else None
        return ScoredLogProbs(lp, ent, B * T)
    if spec.packing != "tree":
        raise ValueError(f"train.packing must be 'tree' or 'rows', got {spec.packing!r}")

    pack = pack_rows(input_ids.cpu(), lengths.cpu())
    N = pack.n_tokens
    score_cpu = score.cpu()
    need = torch.zeros(N, dtype=torch.bool)
    need[pack.index[score_cpu]] = True  # a node is scored if any row through it scores it
    need &= pack.parent >= 0
    sel = need.nonzero()[:, 0]  # [M] packed nodes
    ids, pos = pack.ids[None].to(dev), pack.pos[None].to(dev)
    if spec.attention == "dense":
        impl = getattr(getattr(getattr(model, "module", model), "config", None), "_attn_implementation", "sdpa")
        if impl != "sdpa":  # the boolean mask goes to the attention as is; only SDPA reads it as a mask
            raise ValueError(f"train.tree_attention=dense needs the model's sdpa attention, it uses {impl!r}; "
                             f"use train.tree_attention=blocked")
        mask = pack.ancestor_mask()[None, None].to(dev)  # [1, 1, N, N]

        def run(m: torch.nn.Module) -> Any:
            return m(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    else:
        if torch.is_grad_enabled() and activation_checkpointed(model) and not tree_attention_active(model):
            raise RuntimeError(
                "scored_log_probs: the model recomputes activations in backward (gradient checkpointing), so the "
                "backward of a tree-packed forward must run inside `with use_tree_attention(model):` too"
            )
        plan = plan_tree_attention(pack, spec.attention_block, recompute=spec.attention_recompute).to(dev)

        def run(m: torch.nn.Module) -> Any:
            with use_tree_attention(m):
                return m(input_ids=ids, position_ids=pos, use_cache=False, at2po_tree=plan)

    sel_d = sel.to(dev)
    lp_sel, ent_sel = _head_log_probs(
        model, run, pack.parent.to(dev).index_select(0, sel_d), ids[0].index_select(0, sel_d), temperature,
        spec.chunk_tokens, with_entropy,
    )
    rows_idx = pack.index.clamp(min=0).to(dev)  # [B, T]
    lp_packed = lp_sel.new_zeros(N).index_copy(0, sel_d, lp_sel)  # [N]
    zero = lp_sel.new_zeros(())
    lp = torch.where(score, lp_packed[rows_idx], zero)  # [B, T]
    ent = None
    if ent_sel is not None:
        ent = torch.where(score, ent_sel.new_zeros(N).index_copy(0, sel_d, ent_sel)[rows_idx], zero)
    return ScoredLogProbs(lp, ent, N)
