"""Typed run configuration: one pydantic model made of sections, loaded from presets, YAML and dotted overrides.

Resolution order (later wins): field defaults ← preset (``preset: at2po`` or ``--preset``) ← YAML file ←
command-line overrides such as ``rollout.m=10 loss.name=turn``. Every section forbids unknown keys, so a typo
is an error naming the key (``unknown config key 'rollout.mm'``), and a bad value names the key and the reason.
The resolved config is written next to each run as ``config.yaml`` (:func:`save_config`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from at2po.config.env import EnvConfig
from at2po.config.errors import ConfigError, registered
from at2po.config.presets import get_preset
from at2po.config.rollout import RolloutConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    path: str | None = None  # a Hugging Face model directory (save_pretrained layout)
    tokenizer: str | None = None  # defaults to ``path``
    lora_r: int = Field(0, ge=0)  # 0 = full fine-tuning; > 0 = LoRA adapters of this rank (peft)
    lora_alpha: int = 16
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora_target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    gradient_checkpointing: bool = False


class DataConfig(_Section):
    train: str | None = None  # QA JSONL: {question, golden_answers, data_source?, id?}
    test: str | None = None  # QA JSONL for evaluation
    index: str | None = None  # retriever: an index directory (``at2po index``) or an http(s):// URL
    sft: str | None = None  # demonstrations JSONL (contract format) for ``at2po sft``
    max_train_examples: int | None = Field(None, ge=1)
    max_test_examples: int | None = Field(None, ge=1)


class CreditConfig(_Section):
    name: str = "at2po"  # a registered estimator (at2po.core.credit.CREDIT_ESTIMATORS): grpo, tree_grpo, at2po, ...
    # registered value / advantage modes (at2po.core.credit.VALUE_MODES, ADV_MODES): child_weighted, child_softmax,
    # child_mean, leaf_mean / value, td, global, td+global, or names added with register_value_mode/register_adv_mode
    value_mode: str = "child_weighted"
    adv_mode: str = "value"
    normalize_leaves: bool = True
    std: Literal["population", "sample"] = "population"
    eps: float = Field(1e-6, gt=0)

    @field_validator("name")
    @classmethod
    def _known_estimator(cls, v: str) -> str:
        return registered(v, "at2po.core.credit:CREDIT_ESTIMATORS")

    @field_validator("value_mode")
    @classmethod
    def _known_value_mode(cls, v: str) -> str:
        return registered(v, "at2po.core.credit:VALUE_MODES")

    @field_validator("adv_mode")
    @classmethod
    def _known_adv_mode(cls, v: str) -> str:
        return registered(v, "at2po.core.credit:ADV_MODES")

    def options(self) -> dict[str, Any]:
        """Keyword options for :func:`at2po.core.credit.estimate` (value/advantage modes only for ``at2po``)."""
        opts: dict[str, Any] = {"std": self.std, "eps": self.eps}
        if self.name == "at2po":
            opts.update(value_mode=self.value_mode, adv_mode=self.adv_mode, normalize_leaves=self.normalize_leaves)
        return opts


class LossConfig(_Section):
    name: str = "turn"  # a registered policy loss (at2po.core.losses.POLICY_LOSSES): token, sequence, turn, aepo, ...
    clip_low: float | None = Field(None, ge=0)  # ε_l; None = the loss's paper default
    clip_high: float | None = Field(None, ge=0)  # ε_r
    # a registered aggregation (at2po.core.losses.AGG_MODES): token-mean, seq-mean-token-mean, seq-mean-token-sum,
    # seq-mean-token-sum-norm, or one added with register_aggregation
    agg: str = "seq-mean-token-mean"
    clip_ratio_c: float | None = Field(None, gt=1.0)  # dual clip (token loss), None = off
    kl_coef: float = Field(0.0, ge=0)  # > 0 recomputes reference log-probs and adds β·KL
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    entropy_coef: float = Field(0.0, ge=0)
    # AEPO's entropy-aware advantage Ã = A·(1 + w·sg(z(H_t))), z over the micro-batch's response tokens (0 = off;
    # AEPO: 0.2). "paper" applies it whenever w > 0; "script" as the authors' released script, only when
    # entropy_coef > 0 (it computes no entropy otherwise, so the reweighting silently does nothing)
    entropy_adv_weight: float = Field(0.0, ge=0)
    entropy_adv_mode: Literal["paper", "script"] = "paper"
    # Truncated importance sampling (verl/TRL): scale each token's policy-gradient term by
    # min(π_old/π_sampler, C), correcting sampler↔trainer drift (e.g. vLLM kernels). None = off.
    tis_cap: float | None = Field(None, gt=0)

    @field_validator("name")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        return registered(v, "at2po.core.losses:POLICY_LOSSES")

    @field_validator("agg")
    @classmethod
    def _known_agg(cls, v: str) -> str:
        return registered(v, "at2po.core.losses:AGG_MODES")

    def clips(self) -> tuple[float, float]:
        from at2po.core.losses import default_clip

        lo, hi = default_clip(self.name)
        return (lo if self.clip_low is None else self.clip_low, hi if self.clip_high is None else self.clip_high)


class OptimConfig(_Section):
    lr: float = Field(1e-6, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_updates: int = Field(0, ge=0)


class TrainConfig(_Section):
    output_dir: str = "runs/at2po"
    steps: int = Field(240, ge=1)  # RL steps (one rollout batch each)
    batch_prompts: int = Field(64, ge=1)  # prompts per rollout batch (global, split across processes)
    mini_batch_prompts: int = Field(8, ge=1)  # prompts per optimizer update
    ppo_epochs: int = Field(1, ge=1)
    # tokens per forward/backward (gradient accumulation): unique tokens of the packed trie with packing=tree,
    # padded rows × longest row with packing=rows
    micro_batch_tokens: int = Field(16384, ge=1)
    # tree: rows sharing prefixes (a tree's leaves, a prompt's chains) run as one packed sequence of their unique
    # tokens, each attending to its ancestors; rows: padded flat rows (the comparison path and an escape)
    packing: Literal["tree", "rows"] = "tree"
    # the LM head runs only where a generated token is scored, this many positions at a time (logits recomputed in
    # backward); 0 = full [B, T, V] logits from the model's own head
    logprob_chunk_tokens: int = Field(512, ge=0)
    # blocked: gathered-key SDPA per query block; dense: an [N, N] mask
    tree_attention: Literal["blocked", "dense"] = "blocked"
    tree_attention_block: int = Field(128, ge=1)  # query block of the blocked tree attention
    # blocked tree attention: gather each block's keys/values again in backward instead of keeping the gathered
    # copies (≈ depth/block + 1 times the packed key/values per layer); costs one more attention forward
    tree_attention_recompute: bool = False
    # old log-probs π_old: recompute (one more forward with the current weights) or sampler (the rollout engine's
    # log-probs, exact only when the engine computes the trainer's numbers: HF engine, fp32; see the docs)
    old_log_prob: Literal["recompute", "sampler"] = "recompute"
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    dynamic_sampling: bool = False  # DAPO: drop prompts whose rewards are all equal, refill from more rollouts
    max_gen_batches: int = Field(3, ge=1)  # DAPO: at most this many rollout batches per step to fill the batch
    overlong_buffer: int = Field(0, ge=0)  # DAPO soft overlong punishment: buffer length (0 = off)
    overlong_penalty: float = Field(1.0, ge=0)
    max_nonfinite_steps: int = Field(3, ge=1)  # stop after this many consecutive steps with NaN/inf loss or grad
    # stop after the step at which the run's cumulative generated tokens (all processes) reach this budget;
    # None = run all `steps`. Equal-budget comparisons of methods (benchmarks/compare.py) use it.
    max_generated_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _mini_fits(self) -> TrainConfig:
        if self.mini_batch_prompts > self.batch_prompts:
            raise ValueError(
                f"mini_batch_prompts ({self.mini_batch_prompts}) > batch_prompts ({self.batch_prompts})"
            )
        return self


class SFTConfig(_Section):
    epochs: int = Field(2, ge=1)
    lr: float = Field(1e-4, gt=0)
    batch_rows: int = Field(16, ge=1)  # demonstrations per optimizer update
    max_examples: int | None = Field(None, ge=1)
    output_dir: str | None = None  # default: <train.output_dir>/sft


class EvalConfig(_Section):
    every: int = Field(0, ge=0)  # evaluate every N RL steps (0 = only before and after training)
    n: int = Field(1, ge=1)  # samples per question; pass@n is reported when n > 1
    temperature: float = Field(0.0, ge=0)  # 0 = greedy
    max_examples: int | None = Field(None, ge=1)
    batch_prompts: int = Field(32, ge=1)


class LoggingConfig(_Section):
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "at2po"
    wandb_run_name: str | None = None
    progress: bool = True


class CheckpointConfig(_Section):
    every: int = Field(0, ge=0)  # save every N steps (0 = only at the end)
    keep_last: int = Field(2, ge=1)
    export_final: bool = True  # save_pretrained of the final policy into <output_dir>/final


class FaultsConfig(_Section):
    """How loud faults are: tool-failure warnings and stops, the retriever check at start-up."""

    # share of a step's (or an eval's) tool calls that failed (errors + timeouts) above which a warning is printed
    tool_failure_warn: float = Field(0.1, ge=0, le=1)
    # stop the run (before the update) after tool_failure_patience consecutive steps at or above this share
    tool_failure_stop: float = Field(0.5, ge=0, le=1)
    tool_failure_patience: int = Field(3, ge=1)
    # before loading the model, check the retriever answers one query (HTTP or local index); stop if it does not
    check_retriever: bool = True


class RunConfig(_Section):
    """The whole run. ``preset`` records which named preset the run started from; ``imports`` lists modules
    imported before the sections are validated — where a user registers their own losses and estimators
    (``register_policy_loss``, ``register_estimator``) so that ``loss.name`` / ``credit.name`` can name them."""

    preset: str | None = None
    imports: list[str] = Field(default_factory=list)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    credit: CreditConfig = Field(default_factory=CreditConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    faults: FaultsConfig = Field(default_factory=FaultsConfig)

    @model_validator(mode="before")
    @classmethod
    def _import_plugins(cls, data: Any) -> Any:
        import importlib

        names = (data.get("imports") or []) if isinstance(data, Mapping) else []
        if isinstance(names, str):  # `imports=my_plugin` on the command line: one module
            names = [names]
            data = {**data, "imports": names}
        for name in names:
            try:
                importlib.import_module(str(name))
            except Exception as exc:  # a missing or broken plugin names itself (ImportError, SyntaxError, ...)
                raise ValueError(f"config key 'imports': cannot import {name!r}: {type(exc).__name__}: {exc}") from None
        return data

    @model_validator(mode="after")
    def _sampler_old_log_prob(self) -> RunConfig:
        if self.train.old_log_prob == "sampler" and self.loss.tis_cap is not None:
            raise ValueError(
                "train.old_log_prob=sampler makes π_old the sampler's log-probs, so loss.tis_cap (which corrects "
                "π_old vs the sampler) would do nothing: use train.old_log_prob=recompute with TIS"
            )
        return self


# --------------------------------------------------------------------------------------------------------------
# Loading


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["rollout.m=10", "loss.name=turn"]`` → nested dict. Values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"bad override {item!r}: expected KEY=VALUE, e.g. rollout.m=10")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config key {key!r}: cannot parse value {raw!r}: {exc}") from None
        parts = key.split(".")
        node = out
        for i, p in enumerate(parts[:-1]):
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r} is a value, not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins. Non-dict values replace."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown config key {key!r}")
        elif not err["loc"]:  # a check across sections: its message names the keys
            lines.append(str(err["msg"]).removeprefix("Value error, "))
        else:
            lines.append(f"config key {key!r}: {err['msg']} (got {err.get('input')!r})")
    return f"invalid configuration ({source}):\n  " + "\n  ".join(lines)


def validate_config(data: Mapping[str, Any], source: str = "config") -> RunConfig:
    """Validate a nested dict into :class:`RunConfig`; errors name every offending key."""
    try:
        return RunConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r}: YAML error: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r}: top level must be a mapping of sections")
    return data


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), preset: str | None = None
) -> RunConfig:
    """Resolve a run config: defaults ← preset ← YAML file ← dotted overrides.

    The preset comes from ``preset`` (CLI ``--preset``), else from a ``preset:`` key in the file or overrides.
    """
    file_data = read_yaml(path) if path is not None else {}
    over = parse_overrides(overrides)
    name = preset or over.get("preset") or file_data.get("preset")
    merged: dict[str, Any] = {}
    if name is not None:
        merged = deep_merge(get_preset(name), {"preset": name})
    merged = deep_merge(merged, file_data)
    merged = deep_merge(merged, over)
    if name is not None:
        merged["preset"] = name
    parts = (f"preset {name}" if name else "", str(path) if path else "", "overrides" if overrides else "")
    source = ", ".join(s for s in parts if s)
    return validate_config(merged, source or "defaults")


def save_config(cfg: RunConfig, path: str | Path) -> Path:
    """Write the fully resolved config as YAML (loadable again with :func:`load_config`)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return p
