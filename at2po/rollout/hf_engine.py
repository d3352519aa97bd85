"""The Hugging Face transformers engine: a hand-written batched decode loop with prefix reuse and continuous
batching.

One decode loop serves both :meth:`HFEngine.generate` (all contexts up front) and :meth:`HFEngine.run` (requests
arrive from a scheduler while others decode). The running batch is bounded by ``max_batch_sequences`` and
``max_batch_tokens`` (memory stays bounded); waiting requests join it between decode steps:

1. prefix lookup: each new context takes the key/values of its longest common prefix with a finished sequence in
   the :class:`~at2po.rollout.prefix_cache.PrefixCache` and only its suffix is prefilled; requests that join
   together with the same context (the n chains of a prompt) are prefilled once and share the result;
2. prefill: straight into the running batch's :class:`~at2po.rollout.slab_cache.SlabCache`, under its rows:
   each new row's cached prefix and suffix are contiguous and right-aligned at the batch's last column; the
   suffixes go through one forward as a left-padded block whose padding columns are not written (they hold the
   longer rows' prefixes). Masked columns and explicit position ids give RoPE the positions of an unpadded
   forward. Prefilled key/values are never copied again;
3. decode: one token per live row per step, sampled with per-sequence counter-based streams (``sampling.py``,
   stream position = the row's own token count, so a sequence's draws do not depend on when it joined);
   rows stop on stop token ids, on stop strings (checked on the decoded tail, so a stop string may straddle
   tokens; only after a token that can complete one, ``stops.py``), on their ``max_new_tokens`` or on the model
   length. Finished rows leave the batch at once (their key/values go to the prefix cache) and are handed back,
   so later steps only compute live rows. New rows are ordered longest context first and decode attention runs
   in row groups, each from its first used column (``grouped_attention.py``), so short rows do not read the long
   rows' padding.
"""

from __future__ import annotations

import inspect
import time
from collections import deque
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from at2po.rollout.engine import (
    Engine,
    EngineStats,
    FinishReason,
    Generation,
    Request,
    SamplingParams,
    Scheduler,
    sequence_seeds,
    validate_requests,
)
from at2po.rollout.grouped_attention import Groups, plan_groups, use_grouped_attention
from at2po.rollout.prefix_cache import KVEntry, PrefixCache
from at2po.rollout.sampling import sample, topk_entropy
from at2po.rollout.slab_cache import SlabCache
from at2po.rollout.stops import StopChecker


def cache_kwarg(model: torch.nn.Module) -> str:
    """The name ``model.forward`` takes its key/value cache under: transformers ≥ 5.2x renamed ``past_key_values``
    to ``cache`` and warns on the old name."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class HFEngine(Engine):
    """Sampling engine over a ``transformers`` causal LM (CPU or CUDA).

    Args:
        model, tokenizer: a causal LM with a DynamicCache-compatible attention (Llama, Qwen, SmolLM2, ...).
        max_batch_sequences: most sequences decoded together (the concurrency bound).
        max_batch_tokens: bound on Σ (context + max_new_tokens) over a chunk (the memory bound).
        prefix_cache: keep key/values of finished sequences and reuse shared prefixes.
        cache_max_tokens: LRU bound on the tokens held by the prefix cache.
        cache_memory_bytes, batch_memory_bytes: the same two bounds in bytes of key/values (converted with
            :func:`kv_bytes_per_token`; the smaller of the token and byte bound applies). A byte budget is what a
            user can size: 262,144 tokens of SmolLM2-135M key/values are ~12 GB in fp32, of a tiny model ~0.5 GB.
        stop_at_eos: also stop at the tokenizer's eos id (besides ``SamplingParams.stop_token_ids``).
        admit_wait: continuous batching joins new requests in groups (one prefill forward each): when fewer than
            1/8 of the running batch are waiting, they wait up to this many decode steps for more.
        grouped_attention: decode attention per row group, each over the columns its rows use
            (``grouped_attention.py``; only when the model uses ``sdpa``). False: one SDPA call over the whole
            window, masked columns included (same results up to float rounding).
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
        admit_wait: int = 4,
        grouped_attention: bool = True,
        cache_memory_bytes: int | None = None,
        batch_memory_bytes: int | None = None,
    ) -> None:
        per_token = kv_bytes_per_token(model)
        if cache_memory_bytes is not None:
            cache_max_tokens = min(cache_max_tokens, max(1, int(cache_memory_bytes) // per_token))
        if batch_memory_bytes is not None:
            max_batch_tokens = min(max_batch_tokens, max(1, int(batch_memory_bytes) // per_token))
        self.kv_bytes_per_token = per_token
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_model_len = int(max_model_len or getattr(model.config, "max_position_embeddings", 4096))
        self.max_batch_sequences = max_batch_sequences
        self.max_batch_tokens = max_batch_tokens
        self.admit_wait = admit_wait
        self.grouped_attention = grouped_attention
        self.cache = PrefixCache(cache_max_tokens) if prefix_cache else None
        self.eos_ids: tuple[int, ...] = ()
        if stop_at_eos and tokenizer.eos_token_id is not None:
            self.eos_ids = (int(tokenizer.eos_token_id),)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0])
        self.vocab_size = int(model.config.vocab_size)
        self._stats = EngineStats()
        self._stop_checkers: dict[tuple[str, ...], StopChecker] = {}
        self._cache_kw = cache_kwarg(model)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None, dtype: Any = None, **kw: Any) -> HFEngine:
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
        seeds = sequence_seeds(len(contexts), params, seeds, "HFEngine")
        batch = _AllAtOnce(
            [Request(c, s, params.max_new_tokens, i) for i, (c, s) in enumerate(zip(contexts, seeds, strict=True))]
        )
        self._run(batch, params)  # contexts are validated there, all at once: errors name their index
        return batch.out  # type: ignore[return-value]

    def run(self, scheduler: Scheduler, params: SamplingParams) -> None:
        """Continuous batching (see :meth:`Engine.run`): requests join the running batch between decode steps
        (their prefix looked up in the prefix cache, their suffix prefilled, their key/values left-padded into the
        batch's), and each sequence is handed back at the step it ends."""
        self._run(scheduler, params)

    # --- internals ----------------------------------------------------------------------------------
    def _run(self, scheduler: Scheduler, params: SamplingParams) -> None:
        """The decode loop with the call's stats (``generate`` and ``run`` share it; a subclass may override
        ``run`` with ``Engine.run``'s waves, which call ``generate``)."""
        t0 = time.perf_counter()
        n = self._decode_loop(scheduler, params)
        self._stats.calls += 1
        self._stats.sequences += n
        self._stats.wall_s += time.perf_counter() - t0

    def _decode_loop(self, scheduler: Scheduler, params: SamplingParams) -> int:
        """Admit → sample → retire → decode, until the scheduler has nothing left. Returns the sequences run."""
        was_training = self.model.training  # the trainer may share this model: no dropout, keep the KV cache on
        self.model.eval()
        stop_ids = set(params.stop_token_ids) | set(self.eos_ids)
        stops = self._stop_checker(tuple(params.stop))
        waiting: deque[Request] = deque()
        live: _Live | None = None
        n_seq = 0
        waited = 0  # decode steps the oldest waiting request has waited
        ents: dict[int, list[float]] = {}  # id(request) → its early tokens' top-k entropies (entropy_topk > 0)
        try:
            with torch.inference_mode(), self._attention() as grouped:
                while True:
                    new = scheduler.next_requests(idle=live is None and not waiting)
                    if new:
                        validate_requests(new, self.max_model_len, self.vocab_size, "HFEngine")
                        waiting.extend(new)
                        n_seq += len(new)
                    # a join costs one prefill forward, whatever its size: gather a few requests unless the batch is
                    # small or they have waited ``admit_wait`` steps (a request then waits at most that long)
                    ready = waiting and (
                        live is None or len(waiting) * 8 >= len(live.reqs) or waited >= self.admit_wait
                    )
                    admit = self._admit(live, waiting) if ready else []
                    waited = waited + 1 if waiting and not admit else 0
                    if admit:
                        live = self._join(live, admit)
                    if live is None:
                        return n_seq
                    # sample one token per live row; a row's stream position is its own token count
                    steps = torch.tensor([len(g) for g in live.gen], dtype=torch.int64)  # [B]
                    tok, lp = sample(live.logits, live.seeds, steps, params.temperature, params.top_k, params.top_p)
                    if params.entropy_topk > 0 and bool((steps < params.entropy_tokens).any()):
                        ent_l = topk_entropy(live.logits, params.temperature, params.entropy_topk).tolist()
                        for r, req in enumerate(live.reqs):
                            if steps[r] < params.entropy_tokens:
                                ents.setdefault(id(req), []).append(ent_l[r])
                    self._stats.decode_steps += 1
                    stop_strs = stops.check(live.gen, tok)  # before the new tokens are appended
                    tok_l, lp_l = tok.tolist(), lp.tolist()
                    done: list[tuple[int, Generation]] = []
                    for r, req in enumerate(live.reqs):
                        t, g = tok_l[r], live.gen[r]
                        g.append(t)
                        live.lps[r].append(lp_l[r])
                        reason: FinishReason | None = None
                        stop_str = None
                        if t in stop_ids:
                            reason = "eos"
                        elif stop_strs[r] is not None:
                            reason, stop_str = "stop", stop_strs[r]
                        if reason is None and (
                            len(g) >= req.max_new_tokens or len(req.context) + len(g) >= self.max_model_len
                        ):
                            reason = "length"
                        if reason is not None:
                            topk = ents.pop(id(req), []) if params.entropy_topk > 0 else None
                            done.append((r, Generation(g, live.lps[r], reason, stop_str, topk_entropy=topk)))
                    live.tok = tok
                    if done:
                        self._retire(live, [r for r, _ in done])
                        self._stats.generated_tokens += sum(len(g.token_ids) for _, g in done)
                        finished = [(live.reqs[r], g) for r, g in done]
                        live = _drop(live, {r for r, _ in done})
                        scheduler.finished(finished)
                    if live is not None:  # feed the sampled tokens: logits for the next step
                        live.mask = torch.cat([live.mask, live.mask.new_ones((len(live.reqs), 1))], dim=1)  # [B, W+1]
                        kw = {self._cache_kw: live.cache}
                        skipped = 0  # columns before each row group's first used one (grouped_attention.py)
                        if grouped:
                            if live.groups == "stale":
                                live.groups = plan_groups(live.mask)
                            kw["at2po_groups"] = live.groups
                            skipped = sum((g1 - g0) * c0 for g0, g1, c0 in live.groups or ())
                        self._stats.kv_read += live.mask.numel() - skipped
                        self._stats.kv_live += sum(len(r.context) for r in live.reqs) + sum(map(len, live.gen))
                        live.logits = self.model(
                            input_ids=live.tok[:, None], attention_mask=live.mask, position_ids=live.next_pos[:, None],
                            use_cache=True, **kw,
                        ).logits[:, -1]  # [B, V]
                        live.next_pos = live.next_pos + 1
        finally:
            self.model.train(was_training)

    def _stop_checker(self, stops: tuple[str, ...]) -> StopChecker:
        """One :class:`StopChecker` per stop-string tuple (building its candidate mask decodes the vocabulary)."""
        if stops not in self._stop_checkers:
            self._stop_checkers[stops] = StopChecker(self.tokenizer, stops, self.vocab_size)
        return self._stop_checkers[stops]

    def _admit(self, live: _Live | None, waiting: deque[Request]) -> list[Request]:
        """Take waiting requests while the batch stays within ``max_batch_sequences`` sequences and
        ``max_batch_tokens`` Σ (context + max_new_tokens); an empty batch always takes one."""
        n = len(live.reqs) if live is not None else 0
        used = sum(len(r.context) + r.max_new_tokens for r in live.reqs) if live is not None else 0
        out: list[Request] = []
        while waiting and n + len(out) < self.max_batch_sequences:
            need = len(waiting[0].context) + waiting[0].max_new_tokens
            if (out or n) and used + need > self.max_batch_tokens:
                break
            out.append(waiting.popleft())
            used += need
        return out

    def _join(self, live: _Live | None, reqs: list[Request]) -> _Live:
        """Prefill ``reqs`` straight into the running batch's slab, under its rows, and return the grown batch.

        Prefix lookup + one forward over the suffixes of the distinct contexts; requests with the same context as
        an earlier one (the n chains of a prompt) take a copy of its row (key/values, mask, first logits), counted
        as cached tokens."""
        order, src = self._distinct(reqs)
        U, B = max(src) + 1, len(order)
        uniq = order[:U]
        ctxs = [list(r.context) for r in uniq]
        arrays = [np.asarray(c, dtype=np.int64) for c in ctxs]
        # 1. prefix lookup (keep ≥ 1 suffix token: its logits give the first sampled token)
        hits = [self.cache.lookup(a, len(a) - 1) if self.cache is not None else (0, None) for a in arrays]
        plen = [h[0] for h in hits]
        suffixes = [c[p:] for c, p in zip(ctxs, plen, strict=True)]
        S = max(len(s) for s in suffixes)
        self._stats.prefill_tokens += sum(len(s) for s in suffixes)
        self._stats.cached_tokens += sum(plen) + sum(len(r.context) for r in order[U:])

        # 2. layout: each row's [cached prefix | suffix] contiguous and right-aligned at the slab's ``hi`` (block
        # width W = the longest row); the suffixes are fed as one left-padded [U, S] block, whose padding columns
        # keep the prefix key/values that reach into them (``keep``)
        lens = [len(c) for c in ctxs]
        W = max(lens)
        ids = torch.full((U, S), self.pad_id, dtype=torch.long)  # [U, S]
        pos = torch.zeros((U, S), dtype=torch.long)  # [U, S]
        mask = torch.zeros((U, W), dtype=torch.long)  # [U, W]
        for b, (s, p) in enumerate(zip(suffixes, plen, strict=True)):
            ids[b, S - len(s):] = torch.tensor(s)
            pos[b, S - len(s):] = torch.arange(p, p + len(s))
            mask[b, W - lens[b]:] = 1
        slen = torch.tensor([len(s) for s in suffixes])  # [U]
        keep = torch.arange(S)[None, :] < (S - slen)[:, None] if int(slen.min()) < S else None  # [U, S]
        right = max(r.max_new_tokens for r in order) + 1
        slab = live.cache if live is not None else self._new_slab(B, W + right)
        grew = slab.reserve(B, W, max(right, _room(live)) if live is not None else right)
        view = slab.block(U, W, filled=W - S, keep=keep.to(self.device) if keep is not None else None)
        for b, (p, e) in enumerate(hits):
            if p:
                slab.put_prefix(view, b, e.keys, e.values, p, end=len(suffixes[b]))
        ids, pos, mask = ids.to(self.device), pos.to(self.device), mask.to(self.device)
        logits = self.model(
            input_ids=ids, attention_mask=mask, position_ids=pos, **{self._cache_kw: view}, use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]  # [U, V]
        next_pos = pos[:, -1] + 1  # [U]
        if B > U:  # copies of the distinct rows
            slab.copy_rows(src[U:], list(range(U, B)), W)
            idx = torch.tensor(src, device=mask.device)  # [B]
            mask, next_pos = mask.index_select(0, idx), next_pos.index_select(0, idx)
            logits = logits.index_select(0, idx)
        slab.commit(B)
        seeds = torch.tensor([r.seed for r in order], dtype=torch.int64)
        if live is None:
            return _Live(reqs=order, gen=[[] for _ in order], lps=[[] for _ in order], cache=slab, mask=mask,
                         next_pos=next_pos, seeds=seeds, logits=logits)
        pad = torch.nn.functional.pad
        live.mask = torch.cat([pad(live.mask, (grew, 0)), pad(mask, (slab.width - mask.shape[1], 0))])  # [B', W]
        live.reqs = live.reqs + order
        live.gen, live.lps = live.gen + [[] for _ in order], live.lps + [[] for _ in order]
        live.next_pos = torch.cat([live.next_pos, next_pos])
        live.seeds = torch.cat([live.seeds, seeds])
        live.logits = torch.cat([live.logits, logits])
        live.groups = "stale"
        return live

    def _attention(self) -> AbstractContextManager[bool]:
        """The decode loop's attention switch: grouped SDPA when enabled (yields whether it is on)."""
        return use_grouped_attention(self.model) if self.grouped_attention else nullcontext(False)

    def _distinct(self, reqs: list[Request]) -> tuple[list[Request], list[int]]:
        """``reqs`` reordered as [distinct contexts, then repeats], each part longest context first (rows of similar
        width stay together: grouped decode attention reads less padding), and for each the row of the distinct
        context it shares. With the prefix cache off every request is its own row."""
        first: dict[tuple[int, ...], int] = {}
        uniq: list[Request] = []
        repeats: list[tuple[Request, int]] = []
        for r in reqs:
            i = first.setdefault(tuple(r.context), len(uniq)) if self.cache is not None else len(uniq)
            if i == len(uniq):
                uniq.append(r)
            else:
                repeats.append((r, i))
        by_len = sorted(range(len(uniq)), key=lambda i: -len(uniq[i].context))
        rank = {old: new for new, old in enumerate(by_len)}
        repeats.sort(key=lambda x: -len(x[0].context))
        ordered = [uniq[i] for i in by_len] + [r for r, _ in repeats]
        return ordered, list(range(len(uniq))) + [rank[i] for _, i in repeats]

    def _new_slab(self, rows: int, width: int) -> SlabCache:
        """An empty slab for ``rows`` sequences of ``width`` columns, shaped from the model config."""
        layers, heads, head_dim = kv_shape(self.model)
        dtype = next(self.model.parameters()).dtype
        return SlabCache(layers, heads, head_dim, dtype, self.device, rows_cap=rows, width_cap=width)

    def _retire(self, live: _Live, rows: list[int]) -> None:
        """Move the key/values of finished rows into the prefix cache (context + generated tokens but the last)."""
        if self.cache is None:
            return
        for r in rows:
            cols = live.mask[r].nonzero()[:, 0]  # [n]: the row's attended columns
            tokens = np.asarray(list(live.reqs[r].context) + live.gen[r][:-1], dtype=np.int64)
            if len(cols) != len(tokens):  # a layout bug would silently poison later rollouts
                raise RuntimeError(f"HFEngine: cached {len(cols)} key/values for {len(tokens)} tokens")
            keys = [lay.keys[r].index_select(1, cols) for lay in live.cache.layers]  # per layer [H_kv, n, D]
            values = [lay.values[r].index_select(1, cols) for lay in live.cache.layers]
            self._stats.evicted_tokens += self.cache.insert(KVEntry(tokens, keys, values))


def kv_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of a causal LM, from its config."""
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return int(cfg.num_hidden_layers), int(heads), int(head_dim)


def kv_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of cached keys + values per token: 2 · layers · kv heads · head dim · element size."""
    layers, heads, head_dim = kv_shape(model)
    return 2 * layers * heads * head_dim * next(model.parameters()).element_size()


@dataclass
class _Live:
    """The running batch, one row per live sequence."""

    reqs: list[Request]
    gen: list[list[int]]  # sampled ids per row
    lps: list[list[float]]
    cache: SlabCache  # per layer [B, H_kv, W, D]
    mask: torch.Tensor  # [B, W]: which cache columns each row attends to
    next_pos: torch.Tensor  # [B]: position id of the next fed token
    seeds: torch.Tensor  # [B] int64
    logits: torch.Tensor  # [B, V]: logits for the next sample
    tok: torch.Tensor | None = None  # [B]: the last sampled tokens (fed at the next forward)
    groups: Groups | Literal["stale"] | None = "stale"  # decode attention's row groups (plan_groups); "stale": replan


def _room(live: _Live) -> int:
    """Columns the batch may still append: the largest remaining token budget of a row."""
    return max(r.max_new_tokens - len(g) for r, g in zip(live.reqs, live.gen, strict=True)) + 1


def _drop(live: _Live, rows: set[int]) -> _Live | None:
    """``live`` without ``rows`` (their slots refilled from the end); leading cache columns no remaining row
    attends to are cut. None when empty."""
    if len(rows) == len(live.reqs):
        return None
    order = live.cache.remove_rows(sorted(rows))
    sel = torch.tensor(order, device=live.mask.device)
    mask = live.mask.index_select(0, sel)
    first = int(mask.any(0).long().argmax())  # left padding of retired long rows
    live.cache.drop_leading(first)
    live.mask = mask[:, first:]
    live.reqs = [live.reqs[r] for r in order]
    live.gen = [live.gen[r] for r in order]
    live.lps = [live.lps[r] for r in order]
    live.next_pos = live.next_pos.index_select(0, sel)
    live.seeds = live.seeds[torch.tensor(order)]
    live.logits = live.logits.index_select(0, sel)
    live.tok = live.tok.index_select(0, sel) if live.tok is not None else None
    live.groups = "stale"
    return live


class _AllAtOnce:
    """The scheduler behind :meth:`HFEngine.generate`: every context up front, results by position."""

    def __init__(self, reqs: list[Request]) -> None:
        self.reqs: list[Request] | None = reqs
        self.out: list[Generation | None] = [None] * len(reqs)

    def next_requests(self, idle: bool) -> list[Request]:
        reqs, self.reqs = self.reqs or [], None
        return reqs

    def finished(self, done: list[tuple[Request, Generation]]) -> None:
        for req, g in done:
            self.out[req.tag] = g
