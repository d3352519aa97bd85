"""Every method preset runs a real training step on the tiny world (chains, random trees, KL, DAPO, LoRA)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from at2po.config import load_config
from at2po.train.checkpoint import latest_checkpoint
from at2po.train.trainer import train
from tests.train.conftest import small_overrides


def _run(world, out: Path, preset: str, extra: list[str] = ()) -> dict:
    cfg = load_config(preset=preset, overrides=small_overrides(world, out) + [
        "train.steps=1", "data.test=null", "logging.tensorboard=false", *extra])
    train(cfg)
    (line,) = (out / "metrics.jsonl").read_text().splitlines()
    return json.loads(line)


@pytest.mark.parametrize("preset", ["grpo", "gspo", "tree-grpo", "ablation-random-token"])
def test_preset_trains_one_step(tiny_world, tmp_path: Path, preset: str) -> None:
    m = _run(tiny_world, tmp_path / preset, preset)
    cfg = load_config(preset=preset, overrides=["rollout.n=3", "rollout.m=2", "rollout.l=1", "rollout.k=2"])
    leaves = cfg.rollout.n if cfg.rollout.mode == "chain" else cfg.rollout.m + cfg.rollout.l * cfg.rollout.k
    assert m["rollout/trajectories"] == 2 * leaves
    assert m["actor/updates"] == 2 and m["actor/skipped_updates"] == 0
    assert ("actor/kl_loss" in m) == (preset == "grpo")  # only GRPO has the KL term (reference model)


def test_dapo_dynamic_sampling_skips_equal_reward_prompts(tiny_world, tmp_path: Path) -> None:
    # The untrained model never follows the format: every reward is −1, so every prompt is dropped, DAPO
    # rolls out max_gen_batches batches, and no update is made.
    m = _run(tiny_world, tmp_path / "dapo", "dapo", ["train.overlong_buffer=40"])
    assert m["rollout/gen_batches"] == 3 and m["rollout/kept_prompts"] == 0
    assert m["rollout/equal_reward_prompt_frac"] == 1.0
    assert m["actor/updates"] == 0
    assert m["rollout/generated_tokens"] > 0


def test_lora_with_gradient_checkpointing_saves_adapter_and_exports_merged(tiny_world, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    m = _run(tiny_world, out, "at2po", ["model.lora_r=4", "model.gradient_checkpointing=true", "checkpoint.every=1"])
    assert m["actor/updates"] == 2
    ck = latest_checkpoint(out)
    assert ck is not None and (ck / "model" / "adapter_config.json").is_file()
    assert (out / "final" / "config.json").is_file() and not (out / "final" / "adapter_config.json").exists()
    # resume from the adapter checkpoint for one more step
    cfg = load_config(preset="at2po", overrides=small_overrides(tiny_world, out) + [
        "train.steps=2", "data.test=null", "logging.tensorboard=false", "model.lora_r=4"])
    assert train(cfg, resume=True).steps_done == 2
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_aepo_preset_trains_one_step(tiny_world, sft_model, tmp_path: Path) -> None:
    """AEPO end to end: entropy-balanced rollout (budget 4: 2 global samples, branching, restarts), GRPO credit
    over a prompt's trajectories, AEPO's loss with the entropy-aware advantage."""
    m = _run(tiny_world, tmp_path / "aepo", "aepo", [f"model.path={sft_model}", "rollout.aepo.budget=4",
                                                      "rollout.aepo.initial=2"])
    assert m["rollout/trajectories"] == 2 * 4  # every prompt's budget used
    assert m["actor/updates"] == 2 and m["actor/skipped_updates"] == 0
    assert "actor/pg_clipfrac" in m and "actor/kl_loss" not in m
