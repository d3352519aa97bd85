"""One optimizer step from gradient accumulation, safe under data parallelism: the plumbing the RL update
(``update.ppo_update``) and SFT (``sft.sft``) share.

Every process must join the same all-reduces in the same order, so a step is: a backward per micro-batch with
the gradient all-reduce only on the last one (``no_sync`` before it), a zero-valued backward through every parameter
on a process that has no micro-batch this step, the global grad norm clipped, and the non-finite guard decided
across processes — when any process saw a NaN/inf loss or the norm is NaN/inf, every process skips the step (the
gradient never reaches the weights or the AdamW moments) and the skip is counted by the caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from at2po.train.logprobs import ForwardSpec
from at2po.train.tree_attention import use_tree_attention

T = TypeVar("T")


def backward_scope(model: torch.nn.Module, spec: ForwardSpec) -> contextlib.AbstractContextManager[None]:
    """The context a micro-batch's forward *and* backward run in: tree attention stays selected through the
    backward, where gradient-checkpointed layers re-run their forward."""
    if spec.packing == "tree" and spec.attention == "blocked":
        return use_tree_attention(model)
    return contextlib.nullcontext()


@dataclass
class StepResult:
    applied: bool  # False: skipped on every process (a non-finite loss or gradient norm somewhere)
    grad_norm: float  # the global norm before clipping (NaN/inf when that caused the skip)
    losses: list[float]  # this process's unscaled micro-batch losses, in order


def accumulated_step(
    accelerator: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[T],
    loss_of: Callable[[T], tuple[torch.Tensor, torch.Tensor]],
    *,
    spec: ForwardSpec,
    max_grad_norm: float,
    pad_id: int,
    scheduler: Any = None,
) -> StepResult:
    """Accumulate ``loss_of(mb) -> (scaled_loss, loss)`` over this process's ``micro_batches`` and take one step.

    ``scaled_loss`` is what is back-propagated (the micro-batch's share of the mini-batch loss, so the accumulated
    gradient equals one big backward); ``loss`` (detached or not) is checked for NaN/inf and returned. ``loss_of``
    runs the forward; it is called inside ``backward_scope`` and, for all but the last micro-batch, ``no_sync``.
    """
    bad = torch.zeros((), device=accelerator.device)
    losses: list[float] = []
    if not micro_batches:  # nothing here on this process: still join the all-reduce, with a zero gradient
        _dummy_backward(accelerator, model, pad_id)
    for j, mb in enumerate(micro_batches):
        sync = j == len(micro_batches) - 1
        with (contextlib.nullcontext() if sync else accelerator.no_sync(model)), backward_scope(model, spec):
            scaled, loss = loss_of(mb)
            accelerator.backward(scaled)
        loss = loss.detach()
        bad = bad + (~torch.isfinite(loss)).float()
        losses.append(float(loss))
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    norm_t = torch.as_tensor(grad_norm, device=accelerator.device, dtype=torch.float32)
    bad = bad + (~torch.isfinite(norm_t)).float()
    applied = float(accelerator.reduce(bad, reduction="sum")) == 0
    if applied:
        optimizer.step()
        if scheduler is not None:
            scheduler.step()  # the schedule counts applied updates only
    optimizer.zero_grad(set_to_none=True)
    return StepResult(applied, float(norm_t), losses)


def _dummy_backward(accelerator: Any, model: torch.nn.Module, pad_id: int) -> None:
    """A zero-valued backward through every parameter, so DDP's all-reduce has a partner on this process."""
    ids = torch.full((1, 2), pad_id, dtype=torch.long, device=accelerator.device)
    with accelerator.autocast():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
    accelerator.backward(out.float().sum() * 0.0)


__all__ = ["StepResult", "accumulated_step", "backward_scope"]
