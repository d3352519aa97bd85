"""The public API: ``at2po.Trainer`` with objects (a model, an env, a reward function, list datasets, callbacks)
and ``as_config`` for every way of giving settings."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import at2po
from at2po import ConfigError, RunConfig, Trainer, TrainerCallback, as_config
from at2po.agent.datasets import DatasetError
from at2po.envs import calculator


def test_as_config_takes_every_form(tmp_path):
    base = as_config()
    assert isinstance(base, RunConfig) and as_config(base) is base
    mapping = as_config({"preset": "grpo", "train": {"steps": 7}})
    assert (mapping.preset, mapping.train.steps, mapping.loss.name) == ("grpo", 7, as_config(preset="grpo").loss.name)
    assert as_config({"train": {"steps": 7}}, preset="grpo") == mapping
    assert as_config(["train.steps=7"], preset="grpo") == mapping
    (tmp_path / "run.yaml").write_text("preset: grpo\ntrain:\n  steps: 7\n")
    assert as_config(tmp_path / "run.yaml") == mapping == as_config(str(tmp_path / "run.yaml"))
    with pytest.raises(ConfigError, match=r"train\.stepz"):
        as_config({"train": {"stepz": 1}})
    with pytest.raises(ConfigError, match="got int"):
        as_config(3)
    with pytest.raises(ConfigError, match="preset='grpo' given with a RunConfig"):
        as_config(base, preset="grpo")
    with pytest.raises(ConfigError, match="preset='at2po' given with a mapping whose 'preset' is 'grpo'"):
        as_config({"preset": "grpo"}, preset="at2po")
    assert as_config({"preset": "grpo"}, preset="grpo").preset == "grpo"  # the same name twice is fine


def test_public_names_are_exported():
    assert sorted(at2po.__all__) == sorted(at2po._EXPORTS)  # __all__ is spelled out; it must match the lazy table
    for name in at2po.__all__:
        assert getattr(at2po, name) is not None
    with pytest.raises(AttributeError):
        at2po.not_a_name  # noqa: B018


class Recorder(TrainerCallback):
    """Records each hook, and how many rewards the reward function had given when it ran."""

    def __init__(self, rewards: list[float]) -> None:
        self.rewards = rewards
        self.events: list[tuple[str, int, int, object]] = []  # (hook, step, rewards given so far, payload)

    def on_step(self, step, metrics):
        self.events.append(("step", step, len(self.rewards), metrics))

    def on_eval(self, step, report):
        self.events.append(("eval", step, len(self.rewards), report))

    def on_checkpoint(self, step, path):
        assert Path(path).is_dir()  # written (atomically) before the hook runs
        self.events.append(("checkpoint", step, len(self.rewards), Path(path)))


def _args(out: Path, steps: int) -> dict:
    return {"preset": "at2po", "train": {"output_dir": str(out), "steps": steps, "batch_prompts": 2,
                      "mini_batch_prompts": 2},
            "rollout": {"m": 2, "l": 1, "k": 1, "max_turn_tokens": 16, "max_response_tokens": 64},
            "checkpoint": {"every": 1}, "logging": {"progress": False, "tensorboard": False},
            "optim": {"lr": 1e-3}}


def test_trainer_with_objects_callbacks_a_reward_function_and_resume(calc_init, calc_tok, tmp_path):
    from at2po.train.components import load_policy

    model = load_policy(as_config([f"model.path={calc_init}"]).model, trainable=True)
    before = copy.deepcopy(model.state_dict())
    env = calculator.CalculatorEnv(calc_tok)
    given: list[float] = []

    def parity_reward(text: str, example: dict) -> float:  # replaces the env's exact match everywhere
        assert example in rows
        given.append(float(len(text) % 2))
        return given[-1]

    rows = calculator.make_dataset(6, seed=0)
    rec = Recorder(given)
    trainer = Trainer(model=model, env=env, tokenizer=calc_tok, reward_fn=parity_reward, train_dataset=rows,
                      eval_dataset=rows[:2], args=_args(tmp_path / "run", 2), callbacks=[rec])
    result = trainer.train()
    assert result.steps_done == 2
    assert [(e[0], e[1]) for e in rec.events if e[0] != "checkpoint"] == [("eval", 0), ("step", 1), ("step", 2),
                                                                        ("eval", 2)]
    assert [e[1] for e in rec.events if e[0] == "checkpoint"][-1] == 2
    # every score came from the user's function: the step's and the eval's means are the means of what it gave
    scoring = [e for e in rec.events if e[0] != "checkpoint"]
    for (kind, step, upto, payload), (_, _, since, _) in zip(scoring, [("", 0, 0, None)] + scoring, strict=False):
        mean = sum(given[since:upto]) / (upto - since)
        got = payload["rollout/reward_mean"] if kind == "step" else payload["overall"]["reward"]
        assert got == pytest.approx(mean), (kind, step)
    assert "em" in result.evals[2] and "tool_calls" in result.evals[2]  # the env's metrics, beside the reward
    # the object itself was trained (in place)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert (Path(result.final_dir) / "config.json").is_file()

    # resume: a new Trainer on the same output_dir continues at step 3 from the checkpoint
    rec2 = Recorder(given)
    trained = copy.deepcopy(model.state_dict())  # = checkpoint step 2's weights
    fresh = load_policy(as_config([f"model.path={calc_init}"]).model, trainable=True)
    at_start: dict = {}
    again = Trainer(model=fresh, env=env, reward_fn=parity_reward, train_dataset=rows, eval_dataset=rows[:2],
                    args=_args(tmp_path / "run", 3), callbacks=[rec2],
                    model_hook=lambda m: at_start.update(copy.deepcopy(m.state_dict()))).train(resume=True)
    assert again.steps_done == 3 and [e[1] for e in rec2.events if e[0] == "step"] == [3]
    # the fresh object started step 3 from the checkpoint's weights, not from its own initial ones
    assert at_start.keys() == trained.keys() and all(torch.equal(at_start[k], trained[k]) for k in trained)
    env.close()


def test_rows_without_an_env_are_qa_rows_for_the_search_env():
    from at2po.train.components import resolve_examples

    exs = resolve_examples([{"question": "Who?", "golden_answers": ["A"]}, {"question": "Q", "answer": "B"}],
                           None, None, "train_dataset")
    assert [(e.question, e.golden_answers) for e in exs] == [("Who?", ["A"]), ("Q", ["B"])]
    with pytest.raises(DatasetError, match=r"train_dataset\[0\]"):
        resolve_examples([{"golden_answers": ["A"]}], None, None, "train_dataset")

    def rows():  # a large dataset: with a limit only that many rows are read
        yield from ({"question": f"q{i}", "answer": "a"} for i in range(2))
        raise AssertionError("read past the limit")

    assert [e.question for e in resolve_examples(rows(), None, 2, "train_dataset")] == ["q0", "q1"]


def test_trainer_names_a_bad_row(calc_init, calc_tok, tmp_path):
    env = calculator.CalculatorEnv(calc_tok)
    rows = calculator.make_dataset(3) + [{"answer": "4"}]
    with pytest.raises(DatasetError, match=r"train_dataset\[3\]: missing or empty 'question'"):
        Trainer(model=str(calc_init), env=env, train_dataset=rows, eval_dataset=rows[:1],
                args=_args(tmp_path / "bad", 1)).train()
    env.close()


def test_a_model_object_with_kl_gets_a_frozen_copy_as_reference(calc_init, calc_tok, tmp_path):
    """With loss.kl_coef > 0 the reference is the object as given, copied: after the first update the policy has
    moved away from it (KL > 0), which an alias of the trained object could never show."""
    from at2po.train.components import load_policy

    model = load_policy(as_config([f"model.path={calc_init}"]).model, trainable=True)
    env = calculator.CalculatorEnv(calc_tok)
    given: list[float] = []
    rec = Recorder(given)
    args = _args(tmp_path / "kl", 2)
    args["loss"] = {"kl_coef": 0.1}
    args["eval"] = {"max_examples": 1}
    rows = calculator.make_dataset(4, seed=2)
    Trainer(model=model, env=env, reward_fn=lambda text, ex: given.append(len(text) % 2) or given[-1],
            train_dataset=rows, eval_dataset=rows[:1], args=args, callbacks=[rec]).train()
    kl = [m["actor/kl_loss"] for kind, _, _, m in rec.events if kind == "step"]
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[1] > 1e-6
    env.close()
