"""The policy update on hand-built rows with a real tiny HF model: learning direction, exact gradient
accumulation over micro-batches, and the NaN/inf guard (unit and through the real training loop)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from at2po.config import load_config
from at2po.core.tree import TurnTree
from at2po.rollout.rows import flatten
from at2po.train.batching import collate
from at2po.train.components import load_policy, load_tokenizer
from at2po.train.logprobs import token_log_probs
from at2po.train.trainer import make_accelerator
from at2po.train.update import NonFiniteError, NonFiniteGuard, compute_log_probs, ppo_update


def _rows(tok, texts: list[list[str]]):
    trees = []
    prompt = tok("Question: who?", add_special_tokens=False)["input_ids"]
    for turns in texts:
        t = TurnTree(prompt_ids=prompt)
        parent = 0
        for k, txt in enumerate(turns):
            ids = tok(txt, add_special_tokens=False)["input_ids"]
            obs = tok(" <result> doc </result> ", add_special_tokens=False)["input_ids"] if k else []
            parent = t.add_node(parent, obs_ids=obs, gen_ids=ids, gen_logprobs=[0.0] * len(ids))
        t.nodes[parent].reward = 0.0
        trees.append(t)
    return flatten(trees)


def _setup(world, overrides: list[str]):
    cfg = load_config(overrides=[f"model.path={world['model']}", *overrides])
    tok = load_tokenizer(cfg.model.path)
    model = load_policy(cfg.model)
    acc = make_accelerator("fp32")
    rows = _rows(tok, [["<think>a</think><search>Alba</search>", "<answer>\\boxed{Bren}</answer>"],
                       ["<think>b</think><answer>\\boxed{Corvin}</answer>"],
                       ["<search>Dorn mayor</search>", "<answer>no idea</answer>"]])
    batch = collate(rows, tok.pad_token_id)
    batch.old_log_prob = compute_log_probs(model, batch, 4096, 1.0, acc.device, acc.autocast)
    return cfg, tok, model, acc, rows, batch


def _resp_logprob(model, batch, i: int) -> float:
    with torch.no_grad():
        lp = token_log_probs(model, batch.input_ids, batch.attention_mask)
    return float((lp[i] * batch.response_mask[i]).sum())


def test_update_moves_log_probs_in_the_direction_of_the_advantage(tiny_world) -> None:
    cfg, tok, model, acc, _, batch = _setup(
        tiny_world, ["loss.name=token", "train.batch_prompts=3", "train.mini_batch_prompts=3", "optim.lr=1e-2"]
    )
    signs = torch.tensor([1.0, -1.0, 0.0])
    batch.advantages = signs[:, None] * batch.response_mask
    before = [_resp_logprob(model, batch, i) for i in range(3)]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    model, opt = acc.prepare(model, opt)
    for _ in range(3):
        stats = ppo_update(acc, model, opt, sched, batch, np.arange(3), cfg, np.random.default_rng(0), tok.pad_token_id)
    after = [_resp_logprob(model, batch, i) for i in range(3)]
    assert stats.updates == 1 and stats.skipped == 0
    assert after[0] > before[0] + 0.1 and after[1] < before[1] - 0.1
    assert np.isfinite(stats.as_dict()["actor/grad_norm"])


@pytest.mark.parametrize(
    "loss, agg", [("turn", "seq-mean-token-mean"), ("token", "token-mean"), ("sequence", "seq-mean-token-sum")]
)
def test_micro_batch_accumulation_equals_one_big_batch(tiny_world, loss: str, agg: str) -> None:
    """Token-budget micro-batches with gradient accumulation give the same update as one forward/backward."""
    results = []
    for budget in (1, 100_000):  # one row per micro-batch vs all rows at once
        cfg, tok, model, acc, _, batch = _setup(tiny_world, [
            f"loss.name={loss}", f"loss.agg={agg}", "train.batch_prompts=3", "train.mini_batch_prompts=3",
            f"train.micro_batch_tokens={budget}", "optim.max_grad_norm=1e9",
        ])
        torch.manual_seed(0)
        batch.advantages = torch.randn(batch.response_mask.shape) * batch.response_mask
        batch.old_log_prob = batch.old_log_prob - 0.001 * batch.response_mask  # ratios ≠ 1 but inside the clip
        opt = torch.optim.SGD(model.parameters(), lr=1.0)  # SGD: the step is the gradient itself
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        model, opt = acc.prepare(model, opt)
        ppo_update(acc, model, opt, sched, batch, np.arange(3), cfg, np.random.default_rng(0), tok.pad_token_id)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    ref = load_policy(load_config(overrides=[f"model.path={tiny_world['model']}"]).model)
    p0 = torch.cat([p.detach().flatten() for p in ref.parameters()])
    assert (results[1] - p0).abs().max() > 1e-4  # the update did something
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-6)


def test_nan_update_is_skipped_and_weights_unchanged(tiny_world) -> None:
    cfg, tok, model, acc, _, batch = _setup(tiny_world, ["train.batch_prompts=3", "train.mini_batch_prompts=1"])
    nan = torch.full_like(batch.response_mask, float("nan"))
    batch.advantages = torch.where(batch.response_mask > 0, nan, torch.zeros_like(nan))  # NaN on every response token
    w0 = copy.deepcopy(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    model, opt = acc.prepare(model, opt)
    stats = ppo_update(acc, model, opt, sched, batch, np.arange(3), cfg, np.random.default_rng(0), tok.pad_token_id)
    assert stats.skipped == 3 and stats.updates == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, w0[k]), k
    assert not opt.state_dict()["state"]  # AdamW moments never saw the NaN gradient


def test_guard_stops_after_consecutive_bad_steps() -> None:
    g = NonFiniteGuard(limit=3)
    g.step(1, 1)
    g.step(0, 2)  # a good step resets the count
    g.step(2, 3)
    g.step(1, 4)
    with pytest.raises(NonFiniteError, match="3 consecutive steps had a NaN/inf loss, gradient or reward"):
        g.step(1, 5)
    assert g.total_skipped == 5


def _one_step_weights(tiny_world, model: Path, tmp_path: Path, name: str, extra: list[str]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from at2po.train.trainer import train
    from tests.train.conftest import small_overrides

    out = tmp_path / name
    cfg = load_config(preset="grpo", overrides=small_overrides(tiny_world, out) + [
        f"model.path={model}", "train.steps=1", "data.test=null", "logging.tensorboard=false", "loss.kl_coef=0",
        "rollout.max_turn_tokens=40", "rollout.max_response_tokens=200", *extra])
    train(cfg)
    return load_file(str(out / "final" / "model.safetensors"))


def test_entropy_aware_advantage_changes_the_update_unless_the_script_mode_skips_it(tiny_world, sft_model,
                                                                                   tmp_path) -> None:
    """AEPO's Ã = A·(1 + 0.2·z(H)): with the paper's mode the first update differs from plain advantages; with the
    released script's mode and no entropy bonus it is skipped, so the update is bit-identical to plain."""
    plain = _one_step_weights(tiny_world, sft_model, tmp_path, "plain", [])
    paper = _one_step_weights(tiny_world, sft_model, tmp_path, "paper", ["loss.entropy_adv_weight=0.2"])
    script = _one_step_weights(tiny_world, sft_model, tmp_path, "script",
                               ["loss.entropy_adv_weight=0.2", "loss.entropy_adv_mode=script"])
    assert any(not torch.equal(plain[k], paper[k]) for k in plain)
    assert all(torch.equal(plain[k], script[k]) for k in plain)
