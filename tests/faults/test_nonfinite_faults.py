"""NaN/inf faults in the real training loop: in the logits (the update's forward) and in the rewards (a broken
reward function). Updates over them are skipped — the weights and AdamW moments never see a NaN — the console
and metrics say so, and the guard stops the run after ``train.max_nonfinite_steps`` bad steps in a row."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from at2po.config import load_config
from at2po.train import trainer as trainer_mod
from at2po.train.trainer import train
from at2po.train.update import NonFiniteError
from tests.faults.conftest import small_overrides


def _cfg(tiny_world, model: Path, out: Path):
    return load_config(preset="at2po", overrides=small_overrides(tiny_world, out) + [
        f"model.path={model}", "train.steps=6", "train.max_nonfinite_steps=2", "data.test=null",
        "rollout.max_turn_tokens=40", "rollout.max_response_tokens=200", "logging.tensorboard=false"])


def _snapshot(into: dict):
    def hook(model: torch.nn.Module) -> None:
        into["model"] = model
        into["w0"] = copy.deepcopy(model.state_dict())
    return hook


def _assert_untouched(seen: dict) -> None:
    for k, v in seen["model"].state_dict().items():
        assert torch.equal(v, seen["w0"][k]), k


def test_nan_logits_skip_updates_and_stop_the_run(tiny_world, sft_model, tmp_path) -> None:
    """The LM head's input becomes NaN whenever gradients are on (the update), while rollouts and old log-probs
    (no grad) stay finite."""
    seen: dict = {}

    def poison(model: torch.nn.Module) -> None:
        _snapshot(seen)(model)
        model.get_output_embeddings().register_forward_pre_hook(
            lambda m, args: (args[0] * float("nan"),) if torch.is_grad_enabled() else None)

    with pytest.raises(NonFiniteError, match="stopping at step 2: 2 consecutive steps had a NaN/inf"):
        train(_cfg(tiny_world, sft_model, tmp_path / "run"), model_hook=poison)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["actor/skipped_updates"] > 0 for r in rows)
    assert all(r["actor/updates"] == 0 for r in rows)
    _assert_untouched(seen)


def test_nan_rewards_are_counted_and_their_updates_skipped(
    tiny_world, sft_model, tmp_path, monkeypatch, capsys
) -> None:
    real_build_env = trainer_mod.build_env

    def broken_reward_env(cfg, tokenizer):
        env = real_build_env(cfg, tokenizer)
        env.reward = lambda text, example: float("nan")  # a reward function that returns NaN for everything
        return env

    monkeypatch.setattr(trainer_mod, "build_env", broken_reward_env)
    seen: dict = {}
    with pytest.raises(NonFiniteError, match="stopping at step 2"):
        train(_cfg(tiny_world, sft_model, tmp_path / "run"), model_hook=_snapshot(seen))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["rollout/nonfinite_rewards"] == r["rollout/trajectories"] > 0 for r in rows)
    assert all(r["rollout/nonfinite_reward_trees"] == 2 and r.get("actor/updates", 0) == 0 for r in rows)
    out = " ".join(capsys.readouterr().out.split())
    assert "step 1: 8 leaf rewards are NaN/inf: the updates over their 2 trees are skipped" in out
    _assert_untouched(seen)


def test_a_nan_reward_on_some_trees_drops_only_those(tiny_world, sft_model, tmp_path, monkeypatch) -> None:
    """NaN for one question (1 of the 6; once per 3-step epoch): its tree leaves the batch, the other tree of the
    step still trains, and the guard's count resets at the next clean step, so the run completes."""
    real_build_env = trainer_mod.build_env

    def one_bad_question(cfg, tokenizer):
        env = real_build_env(cfg, tokenizer)
        real = env.reward
        env.reward = lambda text, ex: float("nan") if "Alba" in ex.question else real(text, ex)
        return env

    monkeypatch.setattr(trainer_mod, "build_env", one_bad_question)
    res = train(_cfg(tiny_world, sft_model, tmp_path / "run"))
    assert res.steps_done == 6
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    bad = [r for r in rows if r["rollout/nonfinite_reward_trees"]]
    assert len(bad) == 2 and all(r["rollout/nonfinite_reward_trees"] == 1 for r in bad)
    assert all(r["actor/updates"] > 0 for r in bad)  # the finite tree of the step was trained on
