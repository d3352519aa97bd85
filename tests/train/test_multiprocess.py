"""Data parallel on CPU: ``accelerate launch --num_processes 2`` (gloo) trains like one process does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.conftest import small_overrides

# On CPU, accelerate's multi-process (torchrun) launcher is selected with --multi_gpu; our Accelerator(cpu=True)
# then picks the gloo MULTI_CPU backend. With one process the plain launcher is used.
ROOT = Path(__file__).resolve().parents[2]


def _run(n: int, world: dict, model: Path, out: Path) -> list[dict]:
    out.mkdir(parents=True)
    over = small_overrides(world, out / "run") + [
        f"model.path={model}", "train.steps=2", "rollout.max_turn_tokens=40", "rollout.max_response_tokens=200",
        "data.test=null", "optim.lr=1e-3", "train.mini_batch_prompts=2", "train.ppo_epochs=2",
    ]
    multi = ["--multi_gpu"] if n > 1 else []
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *multi, "--num_processes", str(n),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "tests/train/mp_train.py"), str(out), *over]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(n)]


@pytest.mark.slow
def test_two_processes_train_like_one(tiny_world, sft_model, tmp_path: Path) -> None:
    one = _run(1, tiny_world, sft_model, tmp_path / "one")
    two = _run(2, tiny_world, sft_model, tmp_path / "two")
    assert one[0]["steps"] == two[0]["steps"] == two[1]["steps"] == 2
    # every process holds the same weights after training (gradients were all-reduced)
    assert two[0]["sum"] == pytest.approx(two[1]["sum"], rel=1e-9)
    assert two[0]["abs"] == pytest.approx(two[1]["abs"], rel=1e-9)
    recs = {n: [json.loads(x) for x in (tmp_path / n / "run" / "metrics.jsonl").read_text().splitlines()]
            for n in ("one", "two")}
    assert [r["step"] for r in recs["one"]] == [r["step"] for r in recs["two"]] == [1, 2]
    assert set(recs["one"][0]) == set(recs["two"][0])  # same metrics logged
    for n in ("one", "two"):
        assert all(r["actor/updates"] == 2 and r["actor/skipped_updates"] == 0 for r in recs[n])
        assert any(r["actor/grad_norm"] > 0 for r in recs[n])  # real gradient signal in both
        assert recs[n][0]["rollout/format_ok"] > 0.5  # the SFT'd policy writes the protocol in both setups
    # same result class: the weights moved (L2 distance from the initial weights) by a comparable amount in both
    d1, d2 = one[0]["moved"], two[0]["moved"]
    assert d1 > 0 and d2 > 0 and 0.1 < d2 / d1 < 10


@pytest.mark.slow
def test_two_processes_sft_and_trainer_with_objects(tmp_path: Path) -> None:
    """The public API on 2 processes: SFT whose shards differ in length (one process joins the last step with a
    zero gradient instead of hanging), then ``Trainer(model=<object>, env=<object>, ...)``: both processes end
    with the same weights, callbacks run on the main process only."""
    from at2po.envs import calculator

    init = calculator.tiny_model(tmp_path / "init")
    out = tmp_path / "two"
    out.mkdir()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "tests/train/mp_api.py"), str(out), str(init)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((out / f"rank-{r}.json").read_text()) for r in range(2))
    assert r0["steps"] == r1["steps"] == 2
    assert r0["sum"] == pytest.approx(r1["sum"], rel=1e-9) and r0["abs"] == pytest.approx(r1["abs"], rel=1e-9)
    assert r0["callback_steps"] == [1, 2] and r1["callback_steps"] == []  # callbacks: main process only
    assert r0["evals"] == [0, 2]
    sft_log = [json.loads(x) for x in (out / "sft-logs" / "metrics.jsonl").read_text().splitlines()]
    assert len(sft_log) == 4 and all(r["sft/skipped_updates"] == 0 for r in sft_log)  # 2 epochs × 2 steps


def test_a_single_process_accelerate_state_under_a_multi_process_launch_is_an_error(monkeypatch) -> None:
    """accelerate's state is made once per process: one made before at2po's (single-process on a CPU machine) would
    make every launched process train alone on all the data; the trainer says so instead."""
    from accelerate import PartialState

    from at2po.errors import UserError
    from at2po.train.trainer import make_accelerator

    PartialState(cpu=True)  # this test process: one process, state now fixed
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match=r"launched as 2 processes \(WORLD_SIZE\).*single-process"):
        make_accelerator("fp32")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert make_accelerator("fp32").num_processes == 1
