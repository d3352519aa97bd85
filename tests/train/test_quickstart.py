"""The embedded default pipeline, shrunk: world → tiny model → SFT → eval → AT²PO → eval → PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_quickstart_pipeline_runs_end_to_end(tmp_path: Path) -> None:
    from at2po.train.quickstart import run_quickstart

    res = run_quickstart(
        tmp_path / "qs",
        overrides=["train.steps=2", "train.batch_prompts=2", "train.mini_batch_prompts=1", "sft.epochs=1",
                   "rollout.m=2", "rollout.k=2", "rollout.max_turn_tokens=24", "eval.max_examples=4"],
        world_knobs={"n_train": 16, "n_test": 4},
        arch={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1},
    )
    assert set(res.before) >= {"em", "format_ok"} and set(res.after) >= {"em", "format_ok"}
    for name in ("curves.png", "tree.png", "tree.txt", "summary.json"):
        assert (tmp_path / "qs" / name).stat().st_size > 0, name
    assert (tmp_path / "qs" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((tmp_path / "qs" / "summary.json").read_text())
    assert summary["after"] == res.after and (tmp_path / "qs" / "rl" / "final" / "config.json").is_file()


def test_quickstart_questions_need_three_or_more_turns(tmp_path: Path) -> None:
    """The quickstart world asks 2- to 4-hop questions: the noise-free scripted expert needs ≥ 3 turns (≥ 2 searches
    and the answer) for every test question, and solves every one within the quickstart's tool-call limit."""
    from at2po.agent.expert import write_demonstrations
    from at2po.agent.world import make_world
    from at2po.train.quickstart import QUICKSTART_OVERRIDES, WORLD_KNOBS

    opt = dict(o.split("=", 1) for o in QUICKSTART_OVERRIDES)
    world = make_world(tmp_path / "w", seed=0, with_sft=False, **{**WORLD_KNOBS, "n_train": 40, "n_test": 40})
    rows = [json.loads(line) for line in world.test.read_text().splitlines()]
    path, stats = write_demonstrations(world.index, rows, tmp_path / "demos.jsonl", noise=0.0,
                                       topk=int(opt["env.topk"]), max_obs_tokens=int(opt["env.max_obs_tokens"]),
                                       max_tool_calls=int(opt["env.max_tool_calls"]))
    demos = [json.loads(line) for line in path.read_text().splitlines()]
    assert stats["solve_rate"] == 1.0
    assert min(len(d["turns"]) for d in demos) >= 3
    assert {r["hops"] for r in rows} == {2, 3, 4}


def test_a_warm_started_quickstart_policy_forks_below_the_root(tmp_path: Path) -> None:
    """A briefly SFT'd tiny policy on the quickstart world writes multi-turn trajectories, and entropy-guided
    expansion forks some of them below the root (a fork of a node at depth ≥ 2): the trees are trees, not chains."""
    import torch

    from at2po.agent.world import make_world
    from at2po.config import load_config
    from at2po.models.tiny import build_tiny_model
    from at2po.rollout.driver import rollout
    from at2po.train.components import build_engine, build_env, load_examples, load_policy, load_tokenizer
    from at2po.train.quickstart import QUICKSTART_OVERRIDES, WORLD_KNOBS, _texts
    from at2po.train.sft import sft

    torch.set_num_threads(1)
    world = make_world(tmp_path / "w", seed=0, **{**WORLD_KNOBS, "n_train": 20, "n_test": 10, "n_sft": 100})
    model = build_tiny_model(_texts(world), tmp_path / "m", vocab_size=2048, seed=0, hidden_size=64,
                             intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    env_keys = [o for o in QUICKSTART_OVERRIDES if o.startswith(("env.", "rollout.max_"))]
    cfg = load_config(preset="at2po", overrides=[
        f"model.path={model}", f"data.sft={world.sft}", f"data.train={world.train}", f"data.index={world.index}",
        f"train.output_dir={tmp_path / 'rl'}", f"sft.output_dir={tmp_path / 'sft'}", "sft.epochs=4", "sft.lr=3e-3",
        "sft.batch_rows=8", "logging.progress=false", "logging.tensorboard=false", *env_keys,
        "rollout.m=3", "rollout.l=1", "rollout.k=3",
    ])
    policy_dir = sft(cfg)
    tok = load_tokenizer(policy_dir)
    policy = load_policy(cfg.model.model_copy(update={"path": str(policy_dir)}), trainable=False)
    env = build_env(cfg, tok)
    try:
        res = rollout(build_engine(policy, tok, cfg), env, load_examples(str(world.test), 3), cfg.rollout)
    finally:
        env.close()
    forks = [(t, n) for t in res.trees for n in t.nodes[1:] if n.info.get("forked_from", 0)]
    assert forks and any(n.parent != 0 for _, n in forks)  # at least one fork below the root
    assert max(t.depth(i) for t in res.trees for i in t.leaves()) >= 3
