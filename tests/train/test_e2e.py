"""End to end on the tiny real world: SFT → RL train → checkpoint → crash → resume → eval, and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from at2po.cli import app
from at2po.config import load_config
from at2po.train.checkpoint import list_checkpoints
from at2po.train.trainer import train
from tests.train.conftest import small_overrides


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


def _train_steps(run: Path) -> list[int]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in recs if "rollout/reward_mean" in r]


class Crash(Exception):
    pass


def test_train_checkpoint_crash_resume_eval(tiny_world, tmp_path: Path) -> None:
    over = ["train.steps=3", "checkpoint.every=1", "checkpoint.keep_last=2", "rollout.max_turn_tokens=24"]
    # uninterrupted reference run
    ref = train(load_config(preset="at2po", overrides=small_overrides(tiny_world, tmp_path / "a") + over))
    assert ref.steps_done == 3 and set(ref.evals) == {0, 3}
    assert [p.name for p in list_checkpoints(tmp_path / "a")] == ["step-00000002", "step-00000003"]
    assert (tmp_path / "a" / "config.yaml").is_file() and (tmp_path / "a" / "eval" / "step-00000003.json").is_file()
    assert any((tmp_path / "a" / "tb").iterdir())
    rec = next(json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines() if '"rollout/' in x)
    assert rec["batch/tree_token_ratio"] > 1.5  # a tree's leaves share the prompt and their first turns
    assert 0 < rec["actor/forward_tokens"] < rec["batch/tokens"]  # the update ran over unique tokens
    for phase in ("rollout", "old_logprob", "update"):
        assert rec[f"memory/{phase}_rss_gb"] > 0.05  # per-phase peak RSS (Linux: VmHWM reset before each phase)

    # same run, crashing in the middle of step 3's update (after checkpoint 2 was written)
    cfg_b = load_config(preset="at2po", overrides=small_overrides(tiny_world, tmp_path / "b") + over)
    ckpt2 = tmp_path / "b" / "checkpoints" / "step-00000002"

    def crash_in_step3(model: torch.nn.Module) -> None:
        def hook(m, i, out):
            if torch.is_grad_enabled() and ckpt2.exists():  # the first update forward after checkpoint 2
                raise Crash("simulated crash mid-step")
            return out

        model.get_output_embeddings().register_forward_hook(hook)

    with pytest.raises(Crash):
        train(cfg_b, model_hook=crash_in_step3)
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step-00000001", "step-00000002"]
    resumed = train(cfg_b, resume=True)
    assert resumed.steps_done == 3
    assert _train_steps(tmp_path / "b") == [1, 2, 3]  # nothing lost, nothing repeated
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)
    ea = json.loads((tmp_path / "a" / "eval" / "step-00000003.json").read_text())["overall"]
    eb = json.loads((tmp_path / "b" / "eval" / "step-00000003.json").read_text())["overall"]
    assert ea == eb

    # eval command on the exported model: JSON report with per-source metrics
    res = CliRunner().invoke(app, ["eval", f"model.path={tmp_path / 'a' / 'final'}", f"data.test={tiny_world['test']}",
                                   f"data.index={tiny_world['index']}", f"train.output_dir={tmp_path / 'ev'}",
                                   "rollout.max_turn_tokens=16", "eval.n=2", "eval.temperature=1.0"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert set(report["per_source"]) == {"toy", "toy2"} and "pass@2" in report["overall"]
    assert report["overall"]["count"] == 4


def test_sft_masks_observations_and_learns(tiny_world, tmp_path: Path) -> None:
    from at2po.agent.search_env import SearchEnv
    from at2po.rollout.rows import flatten
    from at2po.train.components import load_tokenizer
    from at2po.train.sft import demo_tree, read_demos, sft

    tok = load_tokenizer(tiny_world["model"])
    env = SearchEnv(tok, None)
    demo = read_demos(tiny_world["sft"])[0]
    (row,) = flatten([demo_tree(demo, env, tok)])
    gen = [t for t, m in zip(row.input_ids, row.response_mask, strict=True) if m]
    obs = [t for t, m, k in zip(row.input_ids, row.response_mask, row.turn_ids, strict=True) if not m and k >= 0]
    assert tok.decode(gen) == demo["turns"][0]["text"] + demo["turns"][1]["text"] + "<|im_end|>"
    assert tok.decode(obs) == demo["turns"][0]["observation"]
    first_turn = demo["turns"][0]["text"] + demo["turns"][0]["observation"]
    assert tok.decode(row.input_ids[row.prompt_len:]).startswith(first_turn)

    cfg = load_config(overrides=small_overrides(tiny_world, tmp_path / "run") + [
        f"data.sft={tiny_world['sft']}", "sft.epochs=8", "sft.lr=3e-3", "logging.tensorboard=false"])
    out = sft(cfg)
    nll = [json.loads(x)["sft/nll"] for x in (tmp_path / "run" / "sft-logs" / "metrics.jsonl").read_text().splitlines()]
    assert (out / "config.json").is_file() and nll[-1] < nll[0] - 0.3


def test_cli_errors_before_any_work(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["train", "--preset", "grpo", "rollout.mm=3"])
    assert r.exit_code == 2 and "unknown config key 'rollout.mm'" in r.output
    r = CliRunner().invoke(app, ["train", "--preset", "grpo", f"model.path={tmp_path}", "data.train=/no/such.jsonl"])
    assert r.exit_code == 2
    assert "model.path" in r.output and "data.train='/no/such.jsonl' is not a file" in r.output
    assert "at2po index --corpus" in r.output  # says how to make the missing index


@pytest.mark.slow
def test_resume_after_kill_9(tiny_world, tmp_path: Path) -> None:
    """A real SIGKILL mid-run: resume continues from the last complete checkpoint, same final weights."""
    over = small_overrides(tiny_world, tmp_path / "k") + ["train.steps=4", "checkpoint.every=1", "data.test=null"]
    script = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from at2po.config import load_config; from at2po.train.trainer import train\n"
        "train(load_config(preset='at2po', overrides=sys.argv[2:]), resume=sys.argv[1] == '1')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", script, "0", *over], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "k" / "checkpoints" / "step-00000002").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [p.name for p in list_checkpoints(tmp_path / "k")]
    assert "step-00000004" not in done and done
    subprocess.run([sys.executable, "-c", script, "1", *over], env=env, check=True, stdout=subprocess.DEVNULL)
    ref_over = [o.replace(str(tmp_path / "k"), str(tmp_path / "ref")) for o in over]
    train(load_config(preset="at2po", overrides=ref_over))
    assert _train_steps(tmp_path / "k") == [1, 2, 3, 4]
    wk, wr = _weights(tmp_path / "k"), _weights(tmp_path / "ref")
    for k in wr:
        torch.testing.assert_close(wk[k], wr[k], rtol=0, atol=0)


def test_sampler_old_log_probs_skip_the_extra_forward(tiny_world, tmp_path: Path) -> None:
    """train.old_log_prob=sampler: π_old is the HF engine's fp32 log-prob (no recomputation), so the first update's
    ratios are 1 up to the sampler/trainer float gap; TIS with it is refused (it would be a no-op)."""
    from at2po.config import ConfigError

    cfg = load_config(preset="grpo", overrides=small_overrides(tiny_world, tmp_path / "s") + [
        "train.steps=1", "train.old_log_prob=sampler", "data.test=null", "train.mini_batch_prompts=2",
    ])
    res = train(cfg)
    assert res.steps_done == 1
    rec = json.loads((tmp_path / "s" / "metrics.jsonl").read_text().splitlines()[0])
    assert "actor/sampler_logprob_gap" not in rec  # nothing recomputed to compare with
    assert abs(rec["actor/ratio_mean"] - 1.0) < 1e-4 and rec["actor/pg_clipfrac"] == 0.0
    with pytest.raises(ConfigError, match=r"train\.old_log_prob=sampler.*tis_cap"):
        load_config(overrides=["train.old_log_prob=sampler", "loss.tis_cap=2.0"])
