"""Scoring finished trajectories: the one place a leaf gets its reward and its env metrics.

The rollout returns unscored trees; the trainer step (and evaluation) calls :func:`score_trees`, with the env's
reward or a user's reward function, and :func:`leaf_metrics` reduces the scores of a batch once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from at2po.core.tree import TurnTree
from at2po.errors import EnvError

RewardFn = Callable[[str, Any], float]  # (response text after the prompt, example) → reward


def response_text(tree: TurnTree, leaf: int, tokenizer: Any) -> str:
    """Everything after the prompt on the path to ``leaf`` (turns and observations), special tokens kept."""
    ids = tree.context_ids(leaf, include_gen=True)[len(tree.prompt_ids):]
    return tokenizer.decode(ids, skip_special_tokens=False)


def score_trees(trees: Sequence[TurnTree], env: Any, tokenizer: Any, reward_fn: RewardFn | None = None) -> None:
    """In place, for every leaf: r(leaf) = reward_fn(text, example) if given, else env.reward(text, example);
    ``info["metrics"]`` = env.metrics(text, example). ``text`` is :func:`response_text`."""
    score = reward_fn if reward_fn is not None else env.reward
    for tree in trees:
        ex = tree.meta["example"]
        for leaf in tree.leaves():
            text = response_text(tree, leaf, tokenizer)
            node = tree.nodes[leaf]
            node.reward = float(score(text, ex))
            node.info["metrics"] = {k: float(v) for k, v in dict(env.metrics(text, ex)).items()}


def leaf_metrics(trees: Sequence[TurnTree], prefix: str = "rollout/") -> dict[str, float]:
    """Means over the scored leaves of ``trees``: ``{prefix}reward_mean`` and ``{prefix}<k>`` for every key the
    env's metrics report (``tool_calls`` becomes ``tool_calls_mean``: ``{prefix}tool_calls`` is the rollout's
    total; an env metric named ``reward`` is left out: the leaf's reward is ``reward_mean``); a leaf without a key
    does not count towards that key's mean. NaN rewards are left out of the mean."""
    leaves = [(t, i) for t in trees for i in t.leaves()]
    if not leaves:
        return {}
    rewards = np.array([t.nodes[i].reward for t, i in leaves], dtype=np.float64)  # [L]
    out = {f"{prefix}reward_mean": float(np.nanmean(rewards)) if np.isfinite(rewards).any() else float("nan")}
    infos = [t.nodes[i].info.get("metrics", {}) for t, i in leaves]
    for k in sorted({k for m in infos for k in m} - {"reward"}):  # an env's own "reward" metric: the leaf reward is
        name = "tool_calls_mean" if k == "tool_calls" else k      # {prefix}reward_mean (reward_fn, penalties applied)
        if f"{prefix}{name}" in out:
            raise EnvError(f"env metric {k!r} clashes with {prefix}{name}: rename it in the env's metrics")
        out[f"{prefix}{name}"] = float(np.mean([m[k] for m in infos if k in m]))
    return out
