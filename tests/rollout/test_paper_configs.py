"""The paper configurations in configs/paper/ load through the run-config schema with the paper's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from at2po.config import load_config

PAPER = sorted((Path(__file__).resolve().parents[2] / "configs" / "paper").glob("*.yaml"))


def test_there_is_a_config_per_paper_run():
    names = {p.stem for p in PAPER}
    for backbone in ("qwen3-4b", "qwen3-8b", "qwen2.5-7b"):
        assert f"at2po_{backbone}_hotpotqa" in names
    assert {"grpo_qwen3-4b_hotpotqa", "dapo_qwen3-4b_hotpotqa", "gspo_qwen3-4b_hotpotqa", "at2po_qwen3-4b_nq",
            "aepo_qwen3-4b_hotpotqa"} <= names


@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_paper_config_has_paper_settings(path: Path):
    cfg = load_config(path)
    method = path.stem.split("_")[0]
    assert cfg.preset == method
    assert (cfg.train.batch_prompts, cfg.train.mini_batch_prompts, cfg.train.steps) == (64, 8, 240)
    assert cfg.optim.lr == 1e-6
    assert cfg.rollout.max_response_tokens == 6192 and cfg.rollout.temperature == 1.0
    assert (cfg.env.max_tool_calls, cfg.env.topk) == (6, 3)
    assert cfg.data.index.startswith("http://")
    if method == "at2po":
        r = cfg.rollout
        assert (r.mode, r.expansion, r.m, r.l, r.k, r.alpha) == ("tree", "entropy", 10, 2, 6, 0.05)
        assert cfg.credit.name == "at2po" and cfg.loss.name == "turn"
    elif method == "aepo":
        a = cfg.rollout.aepo
        assert cfg.rollout.mode == "aepo" and (a.budget, a.initial, a.beam, a.threshold, a.entropy_weight) == (
            16, 8, 2, 0.5, 0.2) and a.step_entropy == "topk"
        lo = cfg.loss
        assert (lo.name, lo.clip_low, lo.clip_high, lo.clip_ratio_c, lo.kl_coef, lo.entropy_adv_weight) == (
            "aepo", 0.2, 0.2, 3.0, 0.0, 0.2) and cfg.credit.name == "grpo"
    elif method in ("grpo", "dapo", "gspo"):
        assert (cfg.rollout.mode, cfg.rollout.n) == ("chain", 16)
    else:
        assert (cfg.rollout.mode, cfg.rollout.expansion) == ("tree", "random")
