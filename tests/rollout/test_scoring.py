"""Leaf metrics: one mean per key over the scored leaves; an env metric clashing with the rollout's is an error."""

from __future__ import annotations

import numpy as np
import pytest

from at2po.core.tree import TurnTree
from at2po.errors import EnvError, UserError
from at2po.rollout.scoring import leaf_metrics


def _tree(metrics: list[dict]) -> TurnTree:
    t = TurnTree.from_arrays(np.array([-1, 0, 0]), np.zeros(3), np.array([np.nan, 1.0, 0.0]))
    for i, m in zip(t.leaves(), metrics, strict=True):
        t.nodes[i].info["metrics"] = m
    return t


def test_means_per_key_and_renames() -> None:
    out = leaf_metrics([_tree([{"tool_calls": 2, "reward": 5, "hits": 1}, {"tool_calls": 0}])])
    assert out == {"rollout/reward_mean": 0.5, "rollout/tool_calls_mean": 1.0, "rollout/hits": 1.0}


def test_a_clashing_env_metric_is_a_user_error() -> None:
    with pytest.raises(EnvError, match="env metric 'reward_mean' clashes with rollout/reward_mean") as e:
        leaf_metrics([_tree([{"reward_mean": 1.0}, {}])])
    assert isinstance(e.value, UserError)  # printed without a traceback by the CLI
