"""The inference engine interface: token ids in, token ids + per-token log-probs out.

Token in, token out: an engine never re-tokenises a context. Observation text is tokenised by the caller, once,
by itself, and appended to the context ids. The HF engine (``hf_engine.py``) and the vLLM engine
(``vllm_engine.py``) both implement :class:`Engine`; the rollout driver only sees this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from at2po.rollout.sampling import derive_seed

FinishReason = Literal["stop", "eos", "length"]


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop: tuple[str, ...] = ()  # stop strings; the matched stop string is kept in the output (</search>)
    stop_token_ids: tuple[int, ...] = ()  # e.g. eos / end-of-turn ids; the stop token is kept in the output
    seed: int | None = None  # base seed; sequence i of a call uses a stream derived from (seed, i)


@dataclass
class Generation:
    token_ids: list[int]
    logprobs: list[float]  # log π(y_t | ·) of each sampled token under the temperature-scaled distribution
    finish_reason: FinishReason
    stop_str: str | None = None  # which stop string matched, when finish_reason == "stop"


@dataclass
class EngineStats:
    generated_tokens: int = 0
    prefill_tokens: int = 0  # context tokens whose key/values were computed
    cached_tokens: int = 0  # context tokens served from a prefix cache instead
    sequences: int = 0
    calls: int = 0
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def validate_contexts(
    contexts: Sequence[Sequence[int]], max_model_len: int, vocab_size: int, who: str
) -> list[list[int]]:
    """Contexts as int lists; ValueError naming the context index if one is empty, too long or out of vocab."""
    ctxs = [list(map(int, c)) for c in contexts]
    for i, c in enumerate(ctxs):
        if not c:
            raise ValueError(f"{who}.generate: context {i} is empty")
        if len(c) >= max_model_len:
            raise ValueError(f"{who}.generate: context {i} has {len(c)} tokens ≥ max_model_len {max_model_len}")
        lo, hi = min(c), max(c)
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{who}.generate: context {i} has token id {lo if lo < 0 else hi} outside [0, {vocab_size})")
    return ctxs


class Engine(ABC):
    """A sampling engine. Implementations must be safe to call repeatedly with growing contexts."""

    tokenizer: Any
    max_model_len: int

    @abstractmethod
    def generate(
        self, contexts: Sequence[Sequence[int]], params: SamplingParams, seeds: Sequence[int] | None = None
    ) -> list[Generation]:
        """Sample one continuation per context (contexts may differ in length). ``seeds``: one random stream per
        context (default: derived from ``params.seed`` and the context's index, see :func:`sequence_seeds`)."""

    @abstractmethod
    def stats(self) -> EngineStats:
        """Counters accumulated since the last :meth:`reset_stats`."""

    @abstractmethod
    def reset_stats(self) -> None: ...

    def sync_weights(self, model: Any) -> None:
        """Load the trainer's current weights (engines that hold their own copy override this)."""

    def sleep(self) -> None:
        """Free engine memory while the trainer updates (vLLM sleep mode on GPU); woken by the next call."""

    def clear_cache(self) -> None:
        """Drop any prefix/KV cache (called after a weight update so rollouts stay on-policy)."""


def sequence_seeds(n: int, params: SamplingParams, seeds: Sequence[int] | None, who: str) -> list[int]:
    """Per-sequence seeds of one ``generate`` call: the caller's ``seeds`` (one per context), else
    ``derive_seed(params.seed, i)`` for context i (a fresh random base when ``params.seed`` is None)."""
    if seeds is not None:
        if len(seeds) != n:
            raise ValueError(f"{who}.generate: {len(seeds)} seeds for {n} contexts")
        return [int(x) for x in seeds]
    base = params.seed if params.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)))
    return [derive_seed(base, i) for i in range(n)]
