"""The Python API: ``Trainer(model=..., env=..., args=...)``, objects or paths for every part.

    from at2po import Trainer
    trainer = Trainer(model="models/my-sft", env=my_env, train_dataset=rows, eval_dataset=test_rows,
                      args={"preset": "at2po", "train": {"steps": 50}})
    result = trainer.train()

The CLI's ``at2po train`` is this with every part read from the config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from at2po.config import ConfigError, RunConfig, deep_merge, load_config, validate_config


def as_config(args: Any = None, preset: str | None = None) -> RunConfig:
    """A ``RunConfig`` from ``args``: a ``RunConfig``; a mapping of sections (``{"train": {"steps": 10}}``, an
    optional ``"preset"`` key); a YAML path; a list of dotted overrides (``["train.steps=10"]``); or None (the
    defaults). ``preset`` names a preset the mapping, file or overrides go on top of."""
    if isinstance(args, RunConfig):
        if preset is not None and preset != args.preset:
            raise ConfigError(
                f"preset={preset!r} given with a RunConfig of preset {args.preset!r}: set it in the config"
            )
        return args
    if args is None:
        return load_config(preset=preset)
    if isinstance(args, (str, Path)):
        return load_config(args, preset=preset)
    if isinstance(args, Mapping):
        from at2po.config.presets import get_preset

        if preset is not None and args.get("preset") not in (None, preset):
            raise ConfigError(f"preset={preset!r} given with a mapping whose 'preset' is {args.get('preset')!r}: "
                              f"name one preset")
        name = preset or args.get("preset")
        merged = deep_merge(get_preset(name), dict(args)) if name else dict(args)
        if name:
            merged["preset"] = name
        return validate_config(merged, "Trainer(args=...)")
    if isinstance(args, Sequence) and all(isinstance(a, str) for a in args):
        return load_config(overrides=list(args), preset=preset)
    raise ConfigError(f"Trainer(args=...): expected a RunConfig, a mapping, a YAML path or a list of overrides, "
                      f"got {type(args).__name__}")


class TrainerCallback:
    """Hooks called on the main process; override any of them (the defaults do nothing)."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        """After each training step's update and logging, with the step's metrics."""

    def on_eval(self, step: int, report: dict[str, Any]) -> None:
        """After each evaluation (``report["overall"]`` holds the means: reward, em, ...)."""

    def on_checkpoint(self, step: int, path: Path) -> None:
        """After a checkpoint was written (atomically) to ``path``."""


class Trainer:
    """RL training of a policy on an env (AT²PO by default, any preset or registered method by config).

    ``model``: a model directory / id on disk, or a causal-LM object (trained in place, fp32); default
    ``args.model.path``. ``env``: any :class:`at2po.AgentEnv` (default: the search env over ``args.data.index``).
    ``tokenizer``: default the env's, else the model directory's. ``reward_fn(response_text, example)``: replaces
    ``env.reward`` for training and the eval's ``reward`` column. ``train_dataset`` / ``eval_dataset``: a path
    (JSONL / Parquet), a list of examples or mapping rows, or an HF dataset (default ``args.data.train`` /
    ``args.data.test``). ``args``: see :func:`as_config`. ``callbacks``: :class:`TrainerCallback` objects.
    """

    def __init__(
        self,
        model: Any = None,
        env: Any = None,
        *,
        args: Any = None,
        tokenizer: Any = None,
        reward_fn: Callable[[str, Any], float] | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        callbacks: Sequence[TrainerCallback] = (),
        preset: str | None = None,
        model_hook: Callable[[Any], None] | None = None,
    ) -> None:
        cfg = as_config(args, preset)
        if isinstance(model, (str, Path)):  # a directory: the config's model.path (vLLM and checkpoints read it)
            cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": str(model)})})
            model = None
        self.args = cfg
        self.model, self.env, self.tokenizer, self.reward_fn = model, env, tokenizer, reward_fn
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.callbacks = list(callbacks)
        self.model_hook = model_hook

    def add_callback(self, callback: TrainerCallback) -> None:
        self.callbacks.append(callback)

    def train(self, resume: bool = False) -> Any:
        """Train for ``args.train.steps`` steps (or to ``train.max_generated_tokens``); ``resume`` continues from
        the latest checkpoint in ``args.train.output_dir``. Returns a ``TrainResult``: ``run_dir``, ``steps_done``,
        ``final_dir`` (the exported model), ``evals`` (step → the eval means), ``stopped_by_budget``."""
        from at2po.train.trainer import train

        return train(
            self.args, resume=resume, model_hook=self.model_hook, model=self.model, tokenizer=self.tokenizer,
            env=self.env, reward_fn=self.reward_fn, train_dataset=self.train_dataset, eval_dataset=self.eval_dataset,
            callbacks=self.callbacks,
        )
