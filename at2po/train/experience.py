"""From prompts to a training batch: rollouts (with DAPO's dynamic sampling and overlong penalty), credit
assignment over all trees at once, and the rows → padded tensors with per-token advantages."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from at2po.config import RunConfig
from at2po.core.credit import estimate, token_advantages
from at2po.core.packing import unique_token_count
from at2po.core.tree import TurnTree, stack_trees
from at2po.rollout.scoring import RewardFn, leaf_metrics, score_trees
from at2po.rollout.tool_stats import ToolEvent, tool_events, tool_metrics
from at2po.train.batching import Batch, collate


def leaf_rewards(tree: TurnTree) -> np.ndarray:
    return np.array([tree.nodes[i].reward for i in tree.leaves()], dtype=np.float64)


def response_length(tree: TurnTree, leaf: int) -> int:
    """Tokens after the prompt on the path to ``leaf`` (generated + observation: what max_response_tokens bounds)."""
    return sum(len(tree.nodes[j].obs_ids) + len(tree.nodes[j].gen_ids) for j in tree.path(leaf))


def apply_overlong_penalty(trees: list[TurnTree], max_len: int, buffer: int, penalty: float) -> int:
    """DAPO soft overlong punishment, in place on leaf rewards; returns how many leaves were penalised.

    r ← r + R_len with R_len = 0 if L ≤ L_max − B, −penalty·(L − (L_max − B))/B if inside the buffer,
    −penalty beyond L_max (L: response length, B: buffer).
    """
    if buffer <= 0:
        return 0
    hit = 0
    start = max_len - buffer
    for tree in trees:
        for leaf in tree.leaves():
            excess = response_length(tree, leaf) - start
            if excess > 0:
                tree.nodes[leaf].reward -= penalty * min(1.0, excess / buffer)
                hit += 1
    return hit


def collect(
    engine: Any,
    env: Any,
    next_examples: Callable[[int], list[Any]],
    n_prompts: int,
    cfg: RunConfig,
    seed: int,
    reward_fn: RewardFn | None = None,
) -> tuple[list[TurnTree], dict[str, float], list[ToolEvent]]:
    """Roll out ``n_prompts`` prompts (this process's share) and score their leaves (``reward_fn``, default the
    env's reward: ``at2po.rollout.scoring.score_trees``). With ``train.dynamic_sampling`` (DAPO), prompts
    whose leaves all have the same reward carry no signal: they are dropped and more prompts are rolled out, up
    to ``train.max_gen_batches`` rollout batches; the kept trees are truncated to ``n_prompts``.

    Returns (trees, metrics, tool events): the tool calls of every rollout batch, dropped prompts included, so
    ``tool/...`` metrics count every call made (``at2po.rollout.tool_stats``)."""
    from at2po.rollout.driver import ADDITIVE_METRICS, rollout

    kept: list[TurnTree] = []
    events: list[ToolEvent] = []
    totals: dict[str, float] = {}
    n_rolled = n_equal = 0
    tries = cfg.train.max_gen_batches if cfg.train.dynamic_sampling else 1
    for attempt in range(tries):
        rcfg = cfg.rollout.model_copy(update={"seed": seed + 7_919 * attempt})
        result = rollout(engine, env, next_examples(n_prompts), rcfg)
        score_trees(result.trees, env, engine.tokenizer, reward_fn)
        for k, v in result.metrics.items():  # budgets add up over DAPO's extra batches; rates keep batch 1's
            totals[k] = totals.get(k, 0.0) + float(v) if k in ADDITIVE_METRICS or k not in totals else totals[k]
        trees = result.trees
        events.extend(tool_events(trees))
        n_rolled += len(trees)
        equal = [bool(np.ptp(leaf_rewards(t)) == 0) if t.leaves() else True for t in trees]
        n_equal += sum(equal)
        kept.extend(t for t, e in zip(trees, equal, strict=True) if not (cfg.train.dynamic_sampling and e))
        if len(kept) >= n_prompts:
            break
    metrics = {f"rollout/{k}": v for k, v in totals.items()}
    metrics["rollout/equal_reward_prompt_frac"] = n_equal / max(n_rolled, 1)
    metrics["rollout/gen_batches"] = float(attempt + 1)
    metrics["rollout/kept_prompts"] = float(min(len(kept), n_prompts))
    metrics.update(tool_metrics(events))
    return kept[:n_prompts], metrics, events


def tree_metrics(trees: list[TurnTree]) -> dict[str, float]:
    """Reward / EM / format / shape statistics of a batch of trees (leaves = trajectories)."""
    if not trees:
        return {}
    rewards = np.concatenate([leaf_rewards(t) for t in trees])
    out: dict[str, float] = leaf_metrics(trees)  # rollout/reward_mean and rollout/<env metric>
    out.update({
        "rollout/reward_std": float(np.nanstd(rewards)) if np.isfinite(rewards).any() else float("nan"),
        "rollout/all_equal_reward": float(np.ptp(rewards) == 0),
        "rollout/trajectories": float(len(rewards)),
        # a NaN/inf reward (a broken reward function) poisons its tree's advantages: its updates are skipped
        "rollout/nonfinite_rewards": float((~np.isfinite(rewards)).sum()),
    })
    depths = [t.depth(i) for t in trees for i in t.leaves()]
    internal = [len(t.nodes[i].children) for t in trees for i in range(len(t.nodes)) if t.nodes[i].children]
    out["tree/depth_mean"] = float(np.mean(depths))
    out["tree/branching_mean"] = float(np.mean(internal)) if internal else 0.0
    out["tree/nodes_mean"] = float(np.mean([len(t.nodes) for t in trees]))
    return out


def build_batch(trees: list[TurnTree], cfg: RunConfig, pad_id: int) -> tuple[Batch, np.ndarray, dict[str, float]]:
    """Credit over all trees in one vectorised call, then rows → ``Batch`` with per-token advantages.

    Returns (batch, per-row tree index [B], metrics). Rows come from ``at2po.rollout.rows.flatten``: one per leaf.
    """
    from at2po.rollout.rows import flatten

    t0 = time.perf_counter()
    arrays, tree_index, offsets = stack_trees(trees)
    group = np.concatenate([[n.group for n in t.nodes] for t in trees])
    credit = estimate(cfg.credit.name, arrays, tree_index, group, **cfg.credit.options())
    rows = flatten(trees)
    batch = collate(rows, pad_id)
    row_tree = np.array([r.tree_index for r in rows], dtype=np.int64)
    row_leaf = np.array([r.leaf for r in rows], dtype=np.int64)
    batch.advantages = token_advantages(  # 0 off the response mask (prompt, observation, padding)
        credit, batch.node_ids, torch.as_tensor(row_leaf), torch.as_tensor(offsets[row_tree]), batch.response_mask
    ).to(batch.response_mask.dtype)
    m = batch.response_mask.bool()
    adv = batch.advantages[m]
    metrics = {
        "adv/mean": float(adv.mean()) if adv.numel() else math.nan,
        "adv/std": float(adv.std()) if adv.numel() > 1 else 0.0,
        "adv/min": float(adv.min()) if adv.numel() else math.nan,
        "adv/max": float(adv.max()) if adv.numel() else math.nan,
        "adv/zero_frac": float((adv == 0).float().mean()) if adv.numel() else math.nan,
        # Monte-Carlo policy entropy of the sampled tokens (−log π at sampling time): no full-vocab pass needed.
        "actor/entropy": float(-batch.sample_log_prob[m].mean()) if adv.numel() else math.nan,
        "batch/rows": float(len(rows)),
        "batch/response_tokens": float(m.sum()),
        "batch/tokens": float(batch.attention_mask.sum()),
        # flattened row tokens ÷ unique tokens of the batch's trie: what tree packing saves at most (AReaL's metric)
        "batch/tree_token_ratio": float(batch.attention_mask.sum()) / max(unique_token_count(
            batch.input_ids, batch.attention_mask.sum(-1)), 1),
        "time/credit_s": time.perf_counter() - t0,
    }
    return batch, row_tree, metrics
