"""The policy update of one RL step: old/ref log-probs, then PPO epochs over prompt mini-batches with
token-budget micro-batch gradient accumulation, grad clipping, and the non-finite guard.

Loss weighting across micro-batches reproduces the mini-batch aggregate exactly: for ``token-mean`` each
micro-batch loss is weighted by its share of the mini-batch's response tokens, for the ``seq-mean-*`` modes by
its share of the mini-batch's rows, so accumulating gradients equals one big forward/backward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from at2po.config import RunConfig, TrainConfig
from at2po.core.losses import AGG_MODES, entropy_aware_advantages, policy_loss
from at2po.core.packing import split_rows
from at2po.errors import RunStopped
from at2po.train.batching import Batch, micro_batches, prompt_mini_batches
from at2po.train.grad_step import accumulated_step
from at2po.train.logprobs import ForwardSpec, scored_log_probs


class NonFiniteError(RunStopped, RuntimeError):
    """Raised when too many consecutive steps had a NaN/inf loss, gradient or reward."""


@dataclass
class NonFiniteGuard:
    """Counts consecutive steps with skipped (non-finite) updates and stops the run after ``limit`` of them."""

    limit: int
    consecutive: int = 0
    total_skipped: int = 0

    def step(self, skipped_updates: int, step: int) -> None:
        self.total_skipped += skipped_updates
        self.consecutive = self.consecutive + 1 if skipped_updates else 0
        if self.consecutive >= self.limit:
            raise NonFiniteError(
                f"stopping at step {step}: {self.consecutive} consecutive steps had a NaN/inf loss, gradient or "
                f"reward (their updates skipped, weights unchanged by them). Lower optim.lr, check the data and the "
                f"reward function, or raise "
                f"train.max_nonfinite_steps (now {self.limit})."
            )


@dataclass
class UpdateStats:
    updates: int = 0
    skipped: int = 0
    forward_tokens: int = 0  # tokens the update's forwards ran over (unique with tree packing, padded with rows)
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + value
        self.counts[name] = self.counts.get(name, 0) + 1

    def as_dict(self) -> dict[str, float]:
        out = {f"actor/{k}": v / self.counts[k] for k, v in self.sums.items()}
        out.update({"actor/updates": float(self.updates), "actor/skipped_updates": float(self.skipped),
                    "actor/forward_tokens": float(self.forward_tokens)})
        return out


def forward_spec(tcfg: TrainConfig) -> ForwardSpec:
    """How the trainer runs the model (``train.packing``, ``train.logprob_chunk_tokens``, tree attention)."""
    return ForwardSpec(tcfg.packing, tcfg.logprob_chunk_tokens, tcfg.tree_attention, tcfg.tree_attention_block,
                       tcfg.tree_attention_recompute)


def plan_micro_batches(
    batch: Batch, rows: Sequence[int] | np.ndarray, budget_tokens: int, packing: str
) -> list[list[int]]:
    """Split ``rows`` of ``batch`` into micro-batches of at most ``budget_tokens`` model tokens each (a row longer
    than the budget is its own): unique trie tokens with ``packing="tree"`` (rows sharing prefixes kept together,
    a split tree recomputes its shared prefix per part), padded rows × longest row with ``"rows"``."""
    rows = [int(r) for r in rows]
    if not rows:
        return []
    lengths = batch.attention_mask[rows].sum(-1)
    if packing == "tree":
        groups = split_rows(batch.input_ids[rows, : int(lengths.max())], lengths, budget_tokens)
    else:
        groups = micro_batches(lengths.tolist(), budget_tokens)
    return [[rows[i] for i in g] for g in groups]


@torch.no_grad()
def compute_log_probs(
    model: torch.nn.Module, batch: Batch, budget_tokens: int, temperature: float, device: torch.device, autocast: Any,
    spec: ForwardSpec | None = None,
) -> torch.Tensor:
    """π(y_t | ·) on the generated tokens of every row of ``batch`` with the current weights (0 elsewhere), in
    token-budget micro-batches: ``[B, T]``."""
    spec = spec or ForwardSpec()
    out = torch.zeros_like(batch.response_mask)
    was_training = model.training
    model.eval()  # no dropout: old log-probs must be a deterministic function of the weights
    for mb in plan_micro_batches(batch, range(len(batch)), budget_tokens, spec.packing):
        sub = batch.select(mb).to(device)
        with autocast():
            lp = scored_log_probs(
                model, sub.input_ids, sub.attention_mask, sub.response_mask, temperature, spec
            ).log_prob
        out[torch.as_tensor(mb), : lp.shape[1]] = lp.float().cpu()
    model.train(was_training)
    return out


def _loss_kwargs(cfg: RunConfig, sub: Batch) -> dict[str, Any]:
    lo, hi = cfg.loss.clips()
    kw: dict[str, Any] = dict(
        turn_ids=sub.turn_ids, clip_low=lo, clip_high=hi, agg=cfg.loss.agg, clip_ratio_c=cfg.loss.clip_ratio_c
    )
    if cfg.loss.kl_coef > 0:
        kw.update(ref_log_prob=sub.ref_log_prob, kl_coef=cfg.loss.kl_coef, kl_estimator=cfg.loss.kl_estimator)
    return kw


def ppo_update(
    accelerator: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batch: Batch | None,
    tree_index: np.ndarray | None,
    cfg: RunConfig,
    rng: np.random.Generator,
    pad_id: int,
) -> UpdateStats:
    """PPO epochs over ``batch`` (old log-probs and advantages already filled).

    Each epoch shuffles the prompts and splits them into ``batch_prompts / mini_batch_prompts`` mini-batches
    (the same count on every process, so data-parallel gradient all-reduces line up); each mini-batch is one
    AdamW step after clipping the global grad norm to ``optim.max_grad_norm``. A mini-batch whose loss or grad
    norm is NaN/inf is skipped (gradients dropped, weights untouched) and counted.
    """
    stats = UpdateStats()
    n_rows = torch.tensor(float(len(batch) if batch is not None else 0), device=accelerator.device)
    if float(accelerator.reduce(n_rows, reduction="sum")) == 0:
        return stats  # nothing to learn from on any process (e.g. dynamic sampling kept no prompt)
    if tree_index is None:
        tree_index = np.zeros(0, dtype=np.int64)
    n_chunks = max(1, cfg.train.batch_prompts // cfg.train.mini_batch_prompts)
    token_mean = AGG_MODES.lookup(cfg.loss.agg).weight == "tokens"
    entropy_adv = cfg.loss.entropy_adv_weight > 0 and (
        cfg.loss.entropy_adv_mode == "paper" or cfg.loss.entropy_coef > 0
    )
    spec = forward_spec(cfg.train)
    with_entropy = cfg.loss.entropy_coef > 0 or entropy_adv

    def loss_of(g: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        assert batch is not None
        sub = batch.select(g).to(accelerator.device)
        with accelerator.autocast():
            out = scored_log_probs(model, sub.input_ids, sub.attention_mask, sub.response_mask,
                                   cfg.rollout.temperature, spec, with_entropy=with_entropy)
        stats.forward_tokens += out.tokens
        adv, ent_kw = sub.advantages, {}
        if out.entropy is not None:
            ent_kw = {"entropy": out.entropy.float(), "entropy_coef": cfg.loss.entropy_coef}
            if entropy_adv:  # AEPO: Ã = A·(1 + w·sg(z(H_t)))
                adv = entropy_aware_advantages(adv, out.entropy.float(), sub.response_mask, cfg.loss.entropy_adv_weight)
        loss, metrics = policy_loss(cfg.loss.name, out.log_prob.float(), sub.old_log_prob, adv, sub.response_mask,
                                    **_loss_kwargs(cfg, sub), **ent_kw)
        for k, v in metrics.items():
            stats.add(k, float(v))
        share = (float(sub.response_mask.sum()) if token_mean else float(len(g))) / max(denom, 1.0)
        return loss * share, loss

    model.train()
    for _epoch in range(cfg.train.ppo_epochs):
        for rows in prompt_mini_batches(tree_index, n_chunks, rng):
            present = torch.tensor(float(len(rows)), device=accelerator.device)
            if accelerator.num_processes > 1:
                present = accelerator.reduce(present, reduction="sum")
            if float(present) == 0:
                continue  # an empty mini-batch everywhere: no update (AdamW would still decay the weights)
            groups: list[list[int]] = []
            denom = 1.0
            if batch is not None and len(rows):
                groups = plan_micro_batches(batch, rows, cfg.train.micro_batch_tokens, spec.packing)
                denom = float(batch.response_mask[rows].sum()) if token_mean else float(len(rows))
            res = accumulated_step(accelerator, model, optimizer, groups, loss_of, spec=spec,
                                   max_grad_norm=cfg.optim.max_grad_norm, pad_id=pad_id, scheduler=scheduler)
            for v in res.losses:
                stats.add("loss", v)
            if res.applied:
                stats.updates += 1
                stats.add("grad_norm", res.grad_norm)
            else:
                stats.skipped += 1  # the NaN/inf gradient never reached the weights or AdamW moments
    if stats.updates + stats.skipped and "grad_norm" not in stats.sums:
        stats.sums["grad_norm"], stats.counts["grad_norm"] = math.nan, 1
    stats.add("lr", float(scheduler.get_last_lr()[0]))
    return stats
