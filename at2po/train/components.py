"""Building the run's parts from the config: path checks (before any work), tokenizer, policy (full or LoRA),
reference model, environment, datasets, and the deterministic prompt sampler."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from at2po.config import ModelConfig, RunConfig
from at2po.errors import UserError

_HOW = {
    "model": "point model.path at a Hugging Face model directory (config.json + weights): "
    "`at2po convert-smollm2 --out models/smollm2-135m` (SmolLM2-135M-Instruct), "
    "`at2po make-tiny-model ...`, or run `at2po train` with no arguments for the self-contained quickstart",
    "train": "make a QA JSONL ({question, golden_answers}): `at2po make-world --out world` (synthetic), "
    "`at2po make-wiki --out wiki` (real text) or `at2po prepare --src FLASHRAG_DIR --out DATA_DIR`",
    "test": "make a QA JSONL ({question, golden_answers}): `at2po make-world --out world`, `at2po make-wiki "
    "--out wiki` or `at2po prepare --src FLASHRAG_DIR --out DATA_DIR`",
    "index": "build one with `at2po index --corpus CORPUS.jsonl --out OUT_DIR` (make-world / make-wiki also write "
    "one in OUT/index), or give an http(s):// retriever URL (`at2po serve-retriever`)",
    "sft": "demonstrations come from the synthetic world's expert: `at2po make-world --out world` writes "
    "world/sft.jsonl",
}


class MissingPathError(UserError, FileNotFoundError):
    """A configured path does not exist; the message says which key and how to make it."""


def check_paths(cfg: RunConfig, need: tuple[str, ...]) -> None:
    """Fail before any work when a needed path is unset or missing. ``need`` ⊆ {model, train, test, index, sft}."""
    problems: list[str] = []
    for key in need:
        value = cfg.model.path if key == "model" else getattr(cfg.data, key)
        name = "model.path" if key == "model" else f"data.{key}"
        if value is None:
            problems.append(f"{name} is not set: {_HOW[key]}")
            continue
        if key == "index" and str(value).startswith(("http://", "https://")):
            continue
        p = Path(value)
        ok = (p / "config.json").is_file() if key == "model" else (p.is_dir() if key == "index" else p.is_file())
        if not ok:
            what = {"model": "a model directory with config.json", "index": "an index directory"}.get(key, "a file")
            problems.append(f"{name}={value!r} is not {what}: {_HOW[key]}")
    if problems:
        raise MissingPathError("missing inputs:\n  " + "\n  ".join(problems))


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    return ensure_pad(AutoTokenizer.from_pretrained(str(path)))


def ensure_pad(tok: Any) -> Any:
    """``tok`` with a pad token (its eos when it has none): right padding needs an id, and padded positions never
    reach the loss. Applied to every tokenizer a run uses, loaded or given."""
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(
    mcfg: ModelConfig, weights_dir: str | Path | None = None, trainable: bool = True,
    model: torch.nn.Module | None = None,
) -> torch.nn.Module:
    """The policy in fp32 (bf16 autocast is applied by accelerate on GPU): ``model`` (an object the caller
    loaded, converted to fp32 in place) or the model directory ``mcfg.path``.

    ``weights_dir`` resumes from a checkpoint's ``model/`` (a full model, or a LoRA adapter over the base).
    With ``mcfg.lora_r > 0`` the base is frozen and LoRA adapters (peft) are trained (an object that already is
    a peft model keeps its adapters).
    """
    from transformers import AutoModelForCausalLM

    adapter = weights_dir is not None and (Path(weights_dir) / "adapter_config.json").is_file()
    if model is None:
        base_dir = str(weights_dir) if weights_dir is not None and not adapter else mcfg.path
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    else:
        model = model.to(torch.float32)
        if weights_dir is not None and not adapter:  # a checkpoint of full weights: into the given object
            saved = AutoModelForCausalLM.from_pretrained(str(weights_dir), dtype=torch.float32)
            model.load_state_dict(saved.state_dict())
            del saved
    if mcfg.gradient_checkpointing and trainable:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5.2x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if mcfg.lora_r > 0 and trainable and not hasattr(model, "peft_config"):
        from peft import LoraConfig, PeftModel, get_peft_model

        if adapter:
            model = PeftModel.from_pretrained(model, str(weights_dir), is_trainable=True)
        else:
            lcfg = LoraConfig(
                r=mcfg.lora_r, lora_alpha=mcfg.lora_alpha, lora_dropout=mcfg.lora_dropout,
                target_modules=list(mcfg.lora_target_modules), task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, lcfg)
    elif adapter and trainable and hasattr(model, "peft_config"):
        # a peft object given again on resume: its adapter weights from the checkpoint
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(Path(weights_dir) / "adapter_model.safetensors")))
    if not trainable:
        model.requires_grad_(False).eval()
    return model


class RetrieverUnavailableError(UserError):
    """The retriever of ``data.index`` cannot be opened or does not answer."""


def _retriever_how(spec: str) -> str:
    if spec.startswith(("http://", "https://")):
        return ("start the server (`at2po serve-retriever --index INDEX_DIR --port PORT`, or Search-R1's "
                "retrieval server) and check the URL, or point data.index at a local index directory")
    return "build the index with `at2po index --corpus CORPUS.jsonl --out DIR` (make-world / make-wiki write one)"


def open_retriever(cfg: RunConfig, check: bool | None = None) -> Any:
    """The retriever of ``data.index`` (HTTP options from ``env``); with ``faults.check_retriever`` (or
    ``check=True``) it must answer one query now, else :class:`RetrieverUnavailableError` names data.index and
    how to fix it — before any model is loaded."""
    from at2po.agent.retrievers import RetrieverError, load_retriever

    spec = str(cfg.data.index)
    http = spec.startswith(("http://", "https://"))
    opts: dict[str, Any] = {
        "timeout_s": cfg.env.tool_timeout_s, "max_retries": cfg.env.retriever_retries,
        "timeout_retries": cfg.env.retriever_timeout_retries, "backoff_s": cfg.env.retriever_backoff_s,
        "cache_size": cfg.env.retriever_cache_size,
    } if http else {}
    try:
        retriever = load_retriever(spec, **opts)
    except (RetrieverError, OSError, ValueError) as exc:
        raise RetrieverUnavailableError(f"data.index={spec!r} cannot be opened: {exc}; {_retriever_how(spec)}") from exc
    if cfg.faults.check_retriever if check is None else check:
        try:
            retriever.batch_search(["at2po start-up check"], 1)
        except Exception as exc:
            retriever.close()
            raise RetrieverUnavailableError(
                f"data.index={spec!r} does not answer a search: {type(exc).__name__}: {exc}; {_retriever_how(spec)}"
            ) from exc
    return retriever


def build_env(cfg: RunConfig, tokenizer: Any, retriever: Any = None) -> Any:
    """The search env over ``retriever`` (default: :func:`open_retriever`, which checks it answers)."""
    from at2po.agent.search_env import SearchEnv

    return SearchEnv(tokenizer, retriever if retriever is not None else open_retriever(cfg), cfg.env)


def build_engine(model: torch.nn.Module, tokenizer: Any, cfg: RunConfig) -> Any:
    """The sampling engine: the HF engine shares the policy module; vLLM holds its own copy, synced each step."""
    if cfg.rollout.engine == "vllm":
        from at2po.rollout.vllm_engine import VLLMEngine

        engine = VLLMEngine(cfg.model.path, cfg.rollout.vllm, tokenizer=tokenizer)
        engine.sync_weights(model)  # a resumed run or a LoRA policy differs from the weights on disk
        return engine
    from at2po.rollout.hf_engine import HFEngine

    return HFEngine(
        model, tokenizer, max_batch_sequences=cfg.rollout.max_concurrent_sequences,
        cache_memory_bytes=int(cfg.rollout.cache_memory_gb * 2**30),
        batch_memory_bytes=int(cfg.rollout.batch_memory_gb * 2**30),
    )


def load_examples(path: str | None, limit: int | None, env: Any = None) -> list[Any]:
    """The examples of a file: ``env.load_examples`` (default: QA rows, ``at2po.agent.datasets.load_qa``)."""
    if path is None:
        return []
    if env is not None and hasattr(env, "load_examples"):
        return list(env.load_examples(str(path), limit))
    from at2po.agent.datasets import load_qa

    return load_qa(path, limit=limit)


def resolve_examples(data: Any, env: Any, limit: int | None, name: str) -> list[Any]:
    """A dataset given as a path (JSONL / Parquet), a list, or any sized iterable of rows (an HF ``datasets``
    split) → the env's examples; mapping rows go through ``env.example_from_row``. ``name`` is for messages."""
    from at2po.config import ConfigError

    if data is None:
        return []
    if isinstance(data, (str, Path)):
        return load_examples(str(data), limit, env)
    try:
        # islice: only the first ``limit`` rows of a large (HF) dataset are read and converted
        rows = list(itertools.islice(data, limit)) if limit is not None else list(data)
    except TypeError:
        raise ConfigError(f"{name}: expected a path, a list or a dataset of rows, got {type(data).__name__}") from None
    convert = getattr(env, "example_from_row", None)
    if env is None:  # the default env (the search env, built later) takes QA rows
        from at2po.agent.datasets import row_to_example

        def convert(row: Any, where: str) -> Any:
            return row_to_example(row, where, source=None, default_id=where)

    if convert is None:
        return rows
    return [convert(r, f"{name}[{i}]") if isinstance(r, Mapping) else r for i, r in enumerate(rows)]


@dataclass
class PromptSampler:
    """Epoch-wise seeded permutations over ``n`` examples; ``state()``/``load()`` give the data position so a
    resumed run draws exactly the prompts the uninterrupted run would have drawn."""

    n: int
    seed: int = 0
    epoch: int = 0
    offset: int = 0

    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def next(self, k: int) -> list[int]:
        if self.n == 0:
            raise ValueError("PromptSampler: no examples")
        out: list[int] = []
        while len(out) < k:
            perm = self._perm(self.epoch)
            take = perm[self.offset : self.offset + k - len(out)]
            out.extend(int(i) for i in take)
            self.offset += len(take)
            if self.offset >= self.n:
                self.epoch, self.offset = self.epoch + 1, 0
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
