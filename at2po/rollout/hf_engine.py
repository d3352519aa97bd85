"""The Hugging Face transformers engine: a hand-written batched decode loop with prefix reuse.

One :meth:`HFEngine.generate` call samples a continuation for every context, in chunks bounded by
``max_batch_sequences`` and ``max_batch_tokens`` (memory stays bounded). Per chunk:

1. prefix lookup: each context takes the key/values of its longest common prefix with a finished sequence in the
   :class:`~at2po.rollout.prefix_cache.PrefixCache` and only its suffix is prefilled;
2. prefill: cached key/values are right-aligned in a block of width P = max cached length, the suffixes are
   left-padded in a block of width S = max suffix length after it. Gaps are masked by the 2-D attention mask and
   every real token gets its true position id, so RoPE sees the same positions as an unpadded forward;
3. decode: one token per live row per step, sampled with per-sequence counter-based streams (``sampling.py``);
   rows stop on stop token ids, on stop strings (checked on the decoded tail, so a stop string may straddle
   tokens), on ``max_new_tokens`` or on the model length. Finished rows leave the batch (their key/values go to the
   prefix cache) so later steps only compute live rows.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from at2po.rollout.engine import (
    Engine,
    EngineStats,
    FinishReason,
    Generation,
    SamplingParams,
    sequence_seeds,
    validate_contexts,
)
from at2po.rollout.prefix_cache import KVEntry, PrefixCache
from at2po.rollout.sampling import sample


class HFEngine(Engine):
    """Sampling engine over a ``transformers`` causal LM (CPU or CUDA).

    Args:
        model, tokenizer: a causal LM with a DynamicCache-compatible attention (Llama, Qwen, SmolLM2, ...).
        max_batch_sequences: most sequences decoded together (the concurrency bound).
        max_batch_tokens: bound on Σ (context + max_new_tokens) over a chunk (the memory bound).
        prefix_cache: keep key/values of finished sequences and reuse shared prefixes.
        cache_max_tokens: LRU bound on the tokens held by the prefix cache.
        stop_at_eos: also stop at the tokenizer's eos id (besides ``SamplingParams.stop_token_ids``).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch_sequences: int = 64,
        max_batch_tokens: int = 262_144,
        prefix_cache: bool = True,
        cache_max_tokens: int = 262_144,
        stop_at_eos: bool = True,
        max_model_len: int | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_model_len = int(max_model_len or getattr(model.config, "max_position_embeddings", 4096))
        self.max_batch_sequences = max_batch_sequences
        self.max_batch_tokens = max_batch_tokens
        self.cache = PrefixCache(cache_max_tokens) if prefix_cache else None
        self.eos_ids: tuple[int, ...] = ()
        if stop_at_eos and tokenizer.eos_token_id is not None:
            self.eos_ids = (int(tokenizer.eos_token_id),)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0])
        self.vocab_size = int(model.config.vocab_size)
        self._stats = EngineStats()
        # transformers ≥ 5.2x renamed ``past_key_values`` to ``cache`` (the old name is deprecated)
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None, dtype: Any = None, **kw: Any) -> "HFEngine":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        return cls(model, tok, **kw)

    # --- Engine API ---------------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        return self._stats

    def reset_stats(self) -> None:
        self._stats = EngineStats()

    def clear_cache(self) -> None:
        if self.cache is not None:
            self.cache.clear()

    def sync_weights(self, model: Any) -> None:
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())
        self.clear_cache()  # cached key/values were computed by the old weights

    def generate(
        self, contexts: Sequence[Sequence[int]], params: SamplingParams, seeds: Sequence[int] | None = None
    ) -> list[Generation]:
        t0 = time.perf_counter()
        ctxs = validate_contexts(contexts, self.max_model_len, self.vocab_size, "HFEngine")
        seeds = sequence_seeds(len(ctxs), params, seeds, "HFEngine")
        out: list[Generation | None] = [None] * len(ctxs)
        was_training = self.model.training  # the trainer may share this model: no dropout, keep the KV cache on
        self.model.eval()
        try:
            for chunk in self._chunks(ctxs, params.max_new_tokens):
                gens = self._generate_chunk([ctxs[i] for i in chunk], [seeds[i] for i in chunk], params)
                for i, g in zip(chunk, gens):
                    out[i] = g
        finally:
            self.model.train(was_training)
        self._stats.calls += 1
        self._stats.sequences += len(ctxs)
        self._stats.wall_s += time.perf_counter() - t0
        return out  # type: ignore[return-value]

    # --- internals ----------------------------------------------------------------------------------
    def _chunks(self, ctxs: list[list[int]], max_new: int) -> list[list[int]]:
        chunks: list[list[int]] = [[]]
        budget = 0
        for i, c in enumerate(ctxs):
            need = len(c) + max_new
            if chunks[-1] and (len(chunks[-1]) >= self.max_batch_sequences or budget + need > self.max_batch_tokens):
                chunks.append([])
                budget = 0
            chunks[-1].append(i)
            budget += need
        return chunks

    @torch.inference_mode()
    def _generate_chunk(self, ctxs: list[list[int]], seeds: list[int], params: SamplingParams) -> list[Generation]:
        dev, B = self.device, len(ctxs)
        arrays = [np.asarray(c, dtype=np.int64) for c in ctxs]
        # 1. prefix lookup (keep ≥ 1 suffix token: its logits give the first sampled token)
        hits = [self.cache.lookup(a, len(a) - 1) if self.cache is not None else (0, None) for a in arrays]
        plen = [h[0] for h in hits]
        P = max(plen)
        suffixes = [c[p:] for c, p in zip(ctxs, plen)]
        S = max(len(s) for s in suffixes)
        self._stats.prefill_tokens += sum(len(s) for s in suffixes)
        self._stats.cached_tokens += sum(plen)

        # 2. prefill layout: [cached block | suffix block], each right-aligned
        ids = torch.full((B, S), self.pad_id, dtype=torch.long)  # [B, S]
        pos = torch.zeros((B, S), dtype=torch.long)  # [B, S]
        mask = torch.zeros((B, P + S), dtype=torch.long)  # [B, P+S]
        for b, (s, p) in enumerate(zip(suffixes, plen)):
            ids[b, S - len(s):] = torch.tensor(s)
            pos[b, S - len(s):] = torch.arange(p, p + len(s))
            mask[b, P - p:P] = 1
            mask[b, P + S - len(s):] = 1
        cache = DynamicCache()
        if P > 0:
            ref = next(h[1] for h in hits if h[1] is not None)
            for layer, (k0, v0) in enumerate(zip(ref.keys, ref.values)):
                k = k0.new_zeros((B, k0.shape[0], P, k0.shape[-1]))  # [B, H_kv, P, D]
                v = v0.new_zeros((B, v0.shape[0], P, v0.shape[-1]))
                for b, (p, (_, e)) in enumerate(zip(plen, hits)):
                    if p:
                        k[b, :, P - p:] = e.keys[layer][:, :p]
                        v[b, :, P - p:] = e.values[layer][:, :p]
                cache.update(k, v, layer)
        ids, pos, mask = ids.to(dev), pos.to(dev), mask.to(dev)
        logits = self.model(
            input_ids=ids, attention_mask=mask, position_ids=pos, **{self._cache_kw: cache}, use_cache=True, logits_to_keep=1
        ).logits[:, -1]  # [B, V]
        next_pos = pos[:, -1] + 1  # [B]

        # 3. decode
        stop_ids = set(params.stop_token_ids) | set(self.eos_ids)
        stops = tuple(params.stop)
        window = max((len(s.encode()) for s in stops), default=0) + 1  # tokens covering any stop string
        gen: list[list[int]] = [[] for _ in range(B)]
        lps: list[list[float]] = [[] for _ in range(B)]
        result: list[Generation | None] = [None] * B
        rows = list(range(B))  # batch row → sequence index
        row_seeds = torch.tensor(seeds, dtype=torch.int64)  # [B]
        step = 0
        while True:
            tok, lp = sample(logits, row_seeds, step, params.temperature, params.top_k, params.top_p)
            tok_l, lp_l = tok.tolist(), lp.tolist()
            done_rows: list[int] = []
            tails = [gen[i][-(window - 1):] + [t] for i, t in zip(rows, tok_l)] if stops else []
            texts = self.tokenizer.batch_decode(tails) if stops else []
            for r, i in enumerate(rows):
                t = tok_l[r]
                gen[i].append(t)
                lps[i].append(lp_l[r])
                reason: FinishReason | None = None
                stop_str = None
                if t in stop_ids:
                    reason = "eos"
                elif stops:
                    stop_str = next((s for s in stops if s in texts[r]), None)
                    reason = "stop" if stop_str is not None else None
                if reason is None and (
                    len(gen[i]) >= params.max_new_tokens or len(ctxs[i]) + len(gen[i]) >= self.max_model_len
                ):
                    reason = "length"
                if reason is not None:
                    result[i] = Generation(gen[i], lps[i], reason, stop_str)
                    done_rows.append(r)
            step += 1
            if done_rows:
                self._retire(cache, mask, rows, done_rows, ctxs, gen)
                keep = [r for r in range(len(rows)) if r not in set(done_rows)]
                if not keep:
                    break
                sel = torch.tensor(keep, device=dev)
                mask = mask.index_select(0, sel)
                # drop leading columns no live row attends to (left padding of retired long rows)
                first = int(mask.any(0).long().argmax())
                for lay in cache.layers:
                    lay.keys = lay.keys.index_select(0, sel)[:, :, first:]
                    lay.values = lay.values.index_select(0, sel)[:, :, first:]
                mask = mask[:, first:]
                tok, next_pos = tok.index_select(0, sel), next_pos.index_select(0, sel)
                row_seeds = row_seeds[torch.tensor(keep)]
                rows = [rows[r] for r in keep]
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)  # [B', T+1]
            logits = self.model(
                input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                **{self._cache_kw: cache}, use_cache=True,
            ).logits[:, -1]
            next_pos = next_pos + 1
        self._stats.generated_tokens += sum(len(g) for g in gen)
        return result  # type: ignore[return-value]

    def _retire(
        self, cache: DynamicCache, mask: torch.Tensor, rows: list[int], done_rows: list[int],
        ctxs: list[list[int]], gen: list[list[int]],
    ) -> None:
        """Move the key/values of finished rows into the prefix cache (context + generated tokens but the last)."""
        if self.cache is None:
            return
        for r in done_rows:
            i = rows[r]
            valid = mask[r].bool()  # [T]
            tokens = np.asarray(ctxs[i] + gen[i][:-1], dtype=np.int64)
            keys = [lay.keys[r][:, valid] for lay in cache.layers]  # per layer [H_kv, n, D]
            if keys[0].shape[1] != len(tokens):  # a layout bug would silently poison later rollouts
                raise RuntimeError(f"HFEngine: cached {keys[0].shape[1]} key/values for {len(tokens)} tokens")
            values = [lay.values[r][:, valid] for lay in cache.layers]
            self.cache.insert(KVEntry(tokens, keys, values))
