"""Configuration: presets, YAML + dotted overrides, and errors that name the offending key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from at2po.config import ConfigError, RunConfig, load_config, parse_overrides, save_config
from at2po.config.presets import PRESETS


def test_defaults_are_the_paper_at2po_setting() -> None:
    cfg = load_config()
    assert (cfg.rollout.mode, cfg.rollout.m, cfg.rollout.l, cfg.rollout.k) == ("tree", 10, 2, 6)
    assert cfg.credit.name == "at2po" and cfg.loss.name == "turn"
    assert cfg.loss.clips() == (3e-3, 4e-3)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates(name: str) -> None:
    cfg = load_config(preset=name)
    assert cfg.preset == name


def test_preset_contents() -> None:
    at2po, grpo, dapo = load_config(preset="at2po"), load_config(preset="grpo"), load_config(preset="dapo")
    gspo, tg = load_config(preset="gspo"), load_config(preset="tree-grpo")
    assert at2po.rollout.expansion == "entropy" and at2po.credit.name == "at2po" and at2po.loss.name == "turn"
    assert grpo.rollout.mode == "chain" and grpo.rollout.n == 16 and grpo.loss.kl_coef == 0.001
    assert dapo.loss.clips() == (0.2, 0.28) and dapo.loss.agg == "token-mean"
    assert dapo.train.dynamic_sampling and dapo.train.overlong_buffer == 2000
    assert gspo.loss.name == "sequence" and gspo.loss.clips() == (3e-4, 4e-4)
    assert tg.rollout.expansion == "random" and tg.credit.name == "tree_grpo"
    # the progressive ablation changes one thing at a time
    presets = ("ablation-random-token", "ablation-random-turn", "ablation-entropy-turn", "at2po")
    steps = [load_config(preset=p) for p in presets]
    sig = [(c.rollout.expansion, c.loss.name, c.credit.name) for c in steps]
    assert sig == [("random", "token", "grpo"), ("random", "turn", "grpo"), ("entropy", "turn", "grpo"),
                   ("entropy", "turn", "at2po")]


def test_overrides_are_typed_and_win_over_file_and_preset(tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump({"preset": "grpo", "rollout": {"n": 8}, "train": {"steps": 5}}))
    cfg = load_config(f, ["rollout.n=4", "loss.name=turn", "model.lora_target_modules=[q_proj, v_proj]"])
    assert cfg.preset == "grpo" and cfg.rollout.mode == "chain"  # from the preset
    assert cfg.train.steps == 5  # from the file
    assert cfg.rollout.n == 4 and cfg.loss.name == "turn"  # overrides win
    assert cfg.model.lora_target_modules == ["q_proj", "v_proj"]
    assert parse_overrides(["a.b.c=1.5", "x=true"]) == {"a": {"b": {"c": 1.5}}, "x": True}


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(preset="dapo", overrides=["rollout.m=3", "optim.lr=2e-6"])
    p = save_config(cfg, tmp_path / "config.yaml")
    again = load_config(p)
    assert again == cfg and isinstance(again, RunConfig)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("rollout.mm=3", "unknown config key 'rollout.mm'"),
        ("nosuch.x=1", "unknown config key 'nosuch'"),
        ("rollout.m=abc", "config key 'rollout.m'"),
        ("loss.name=bogus", "config key 'loss.name'"),
        ("optim.lr=-1", "config key 'optim.lr'"),
        ("env.limit_mode=sometimes", "config key 'env.limit_mode'"),
        ("rollout.m", "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert needle in str(e.value)


def test_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*\n.*unknown config key 'train\.stepz'"):
        load_config(f)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"unknown preset 'ppo'.*at2po"):
        load_config(preset="ppo")
    with pytest.raises(ConfigError, match="mini_batch_prompts"):
        load_config(overrides=["train.batch_prompts=4", "train.mini_batch_prompts=8"])
