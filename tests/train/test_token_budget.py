"""train.max_generated_tokens: a run stops after the step at which its cumulative generated tokens reach the
budget, evaluates and exports there, and the checkpoint remembers the tokens spent."""

from __future__ import annotations

import json
from pathlib import Path

from at2po.config import load_config
from at2po.train.logging import read_metrics
from at2po.train.trainer import train
from tests.train.conftest import small_overrides


def test_budget_stops_at_first_step_reaching_it(tiny_world, tmp_path: Path) -> None:
    # budget 1 token: any step generates ≥ 1 token, so the run must stop after step 1 of 5
    over = small_overrides(tiny_world, tmp_path / "run") + ["train.steps=5", "train.max_generated_tokens=1"]
    cfg = load_config(overrides=over, preset="grpo")
    res = train(cfg)
    assert res.stopped_by_budget and res.steps_done == 1
    steps = [r["step"] for r in read_metrics(res.run_dir) if "rollout/generated_tokens" in r]
    assert steps == [1]
    assert res.final_dir is not None and 1 in res.evals  # final eval + export happen at the budget stop
    state = json.loads((res.run_dir / "checkpoints" / "step-00000001" / "state.json").read_text())
    assert state["generated_tokens"] >= 1


def test_budget_counts_cumulative_tokens(tiny_world, tmp_path: Path) -> None:
    """A budget above one step's tokens but below two steps' stops after step 2, not 1 (cumulative count)."""
    probe = train(
        load_config(overrides=small_overrides(tiny_world, tmp_path / "probe") + ["train.steps=1"], preset="grpo")
    )
    first = next(r["rollout/generated_tokens"] for r in read_metrics(probe.run_dir) if "rollout/generated_tokens" in r)
    over = small_overrides(tiny_world, tmp_path / "run") + [
        "train.steps=6", f"train.max_generated_tokens={int(first) + 1}"
    ]
    res = train(load_config(overrides=over, preset="grpo"))
    recs = [r for r in read_metrics(res.run_dir) if "rollout/generated_tokens" in r]
    total = sum(r["rollout/generated_tokens"] for r in recs)
    assert res.stopped_by_budget and res.steps_done == len(recs) >= 2 and res.steps_done < 6
    assert total >= first + 1 and total - recs[-1]["rollout/generated_tokens"] < first + 1


def test_no_budget_runs_all_steps(tiny_world, tmp_path: Path) -> None:
    res = train(load_config(overrides=small_overrides(tiny_world, tmp_path / "run"), preset="grpo"))
    assert not res.stopped_by_budget and res.steps_done == 2


def test_resume_after_budget_stop_does_not_train_further(tiny_world, tmp_path: Path) -> None:
    over = small_overrides(tiny_world, tmp_path / "run") + ["train.steps=5", "train.max_generated_tokens=1"]
    cfg = load_config(overrides=over, preset="grpo")
    assert train(cfg).steps_done == 1
    res = train(cfg, resume=True)
    assert res.stopped_by_budget and res.steps_done == 1
    assert [r["step"] for r in read_metrics(res.run_dir) if "rollout/generated_tokens" in r] == [1]
