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
