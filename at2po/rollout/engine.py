"""The inference engine interface: token ids in, token ids + per-token log-probs out.

Token in, token out: an engine never re-tokenises a context. Observation text is tokenised by the caller, once,
by itself, and appended to the context ids. The HF engine (``hf_engine.py``) and the vLLM engine
(``vllm_engine.py``) both implement :class:`Engine`; the rollout driver only sees this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

import torch

from at2po.rollout.seeds import derive_seed

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
    # > 0: also report, for each of the first ``entropy_tokens`` generated tokens, Σ_{v ∈ top-k} −p_v·log p_v over
    # the ``entropy_topk`` most likely tokens of the temperature-scaled distribution (AEPO's step entropy)
    entropy_topk: int = 0
    entropy_tokens: int = 20

    def __post_init__(self) -> None:
        if any(not s for s in self.stop):
            raise ValueError(f"SamplingParams.stop: empty stop string in {self.stop!r} (it would match at once)")


@dataclass
class Generation:
    token_ids: list[int]
    logprobs: list[float]  # log π(y_t | ·) of each sampled token under the temperature-scaled distribution
    finish_reason: FinishReason
    stop_str: str | None = None  # which stop string matched, when finish_reason == "stop"
    topk_entropy: list[float] | None = None  # per early token, with SamplingParams.entropy_topk > 0


@dataclass
class Request:
    """One sequence for :meth:`Engine.run`: a context, its random stream and its own token budget."""

    context: list[int]
    seed: int
    max_new_tokens: int
    tag: Any = None  # the caller's handle, passed back with the generation


class Scheduler(Protocol):
    """The caller's side of continuous batching (:meth:`Engine.run`)."""

    def next_requests(self, idle: bool) -> list[Request]:
        """New sequences to start now, polled between decode steps; [] when nothing is ready. ``idle``: the engine
        has nothing left to decode, so the scheduler should wait for work still in flight (e.g. tool calls) and
        return [] only when no request will ever come again (the engine then returns)."""
        ...

    def finished(self, done: list[tuple[Request, Generation]]) -> None:
        """The sequences that ended at this decode step, in a deterministic order."""
        ...


@dataclass
class EngineStats:
    generated_tokens: int = 0
    prefill_tokens: int = 0  # context tokens whose key/values were computed
    cached_tokens: int = 0  # context tokens served from a prefix cache instead
    sequences: int = 0
    calls: int = 0
    decode_steps: int = 0  # batched forward passes that sampled one token per live sequence
    # Attention work of the decode forwards (HFEngine): Σ over steps of rows × key/value columns read (masked
    # padding included, but not the columns grouped attention skips) and of the rows' true context lengths. Decode
    # cost per token grows with its context, so these, not generated_tokens alone, predict decode time.
    kv_read: int = 0
    kv_live: int = 0
    # Tokens the prefix cache dropped to stay within its bound (HFEngine ``cache_max_tokens``, LRU; entries
    # superseded by a longer one are not counted). Non-zero: continuations may re-prefill evicted prefixes.
    evicted_tokens: int = 0
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
            bad = lo if lo < 0 else hi
            raise ValueError(f"{who}.generate: context {i} has token id {bad} outside [0, {vocab_size})")
    return ctxs


def validate_requests(reqs: Sequence[Request], max_model_len: int, vocab_size: int, who: str) -> None:
    """:func:`validate_contexts` on the requests' contexts (stored back as int lists), and ``max_new_tokens ≥ 1``;
    ValueError naming the context index or the request's tag."""
    for r, c in zip(reqs, validate_contexts([r.context for r in reqs], max_model_len, vocab_size, who), strict=True):
        if r.max_new_tokens < 1:
            raise ValueError(f"{who}: request {r.tag!r} has max_new_tokens={r.max_new_tokens} (must be ≥ 1)")
        r.context = c


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

    def run(self, scheduler: Scheduler, params: SamplingParams) -> None:
        """Continuous batching: sample every request ``scheduler`` hands out, with ``params``' sampling settings
        (temperature, top-k/p, stops) and each request's own seed and ``max_new_tokens``, until it has nothing left.

        This default runs in waves: one :meth:`generate` call on everything waiting, then ``finished`` on all of
        it. Engines with a step-wise decode loop (``HFEngine``) override it to start a request as soon as it
        arrives and to report each sequence at the step it ends, so nobody waits for the longest sequence."""
        while reqs := scheduler.next_requests(idle=True):
            wave = replace(params, max_new_tokens=max(r.max_new_tokens for r in reqs))
            gens = self.generate([r.context for r in reqs], wave, [r.seed for r in reqs])
            # sampling is causal: a generation cut to a shorter budget is what that budget would have produced
            scheduler.finished([(r, cut(g, r.max_new_tokens)) for r, g in zip(reqs, gens, strict=True)])

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


def cut(g: Generation, max_new_tokens: int) -> Generation:
    """``g`` limited to ``max_new_tokens`` tokens (finish reason "length" when that removes tokens)."""
    if len(g.token_ids) <= max_new_tokens:
        return g
    topk = g.topk_entropy[:max_new_tokens] if g.topk_entropy is not None else None
    return Generation(g.token_ids[:max_new_tokens], g.logprobs[:max_new_tokens], "length", topk_entropy=topk)


def sequence_seeds(n: int, params: SamplingParams, seeds: Sequence[int] | None, who: str) -> list[int]:
    """Per-sequence seeds of one ``generate`` call: the caller's ``seeds`` (one per context), else
    ``derive_seed(params.seed, i)`` for context i (a fresh random base when ``params.seed`` is None)."""
    if seeds is not None:
        if len(seeds) != n:
            raise ValueError(f"{who}.generate: {len(seeds)} seeds for {n} contexts")
        return [int(x) for x in seeds]
    base = params.seed if params.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)))
    return [derive_seed(base, i) for i in range(n)]
