"""Where a rollout's time goes: model forward time (decode steps and prefills, and the attention kernel's share of
each) of the entropy tree and of the chains, the fixed cost of one decode forward, and — when tree rollouts with
and without prefix reuse differ — whether that is float noise.

    python benchmarks/rollout_profile.py [--policy sft-cpu-deep] [--prompts 16] [--hops 4]

Uses ``rollout_bench.py``'s warm starts and prompt picking (``--policy sft-cpu-small|sft-cpu-deep``). It answers
why tree/chain wall time stays above tree/chain generated tokens (BENCHMARKS.md, Rollouts): decode forwards of the tree
and the chains cost about the same, because a fork's tokens attend over deep contexts (``kv_live``/``kv_read``).
Times are wall-clock around ``model.forward`` (CPU: exact; CUDA would need a synchronize, so run it on CPU).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rollout_bench import load_sft_policy, pick_rows, read_jsonl, timed_rollout


def forward_timer(model) -> tuple[dict[str, float], Callable[[], None]]:
    """Wrap ``model.forward``: accumulate seconds and calls of decode forwards (one new token per row) and of
    prefills (several) into the returned dict, and the seconds spent inside attention (torch's
    ``scaled_dot_product_attention``, which transformers' sdpa attention calls) within each kind. Returns the dict
    and a function that unwraps both."""
    acc = {"decode_s": 0.0, "decode_calls": 0, "prefill_s": 0.0, "prefill_calls": 0, "decode_attn_s": 0.0,
           "prefill_attn_s": 0.0}
    inner, sdpa = model.forward, torch.nn.functional.scaled_dot_product_attention
    kind = ["decode"]

    @functools.wraps(inner)  # keeps forward's signature visible (HFEngine inspects it for the cache keyword)
    def timed(*args, **kwargs):
        kind[0] = "decode" if kwargs["input_ids"].shape[1] == 1 else "prefill"
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        acc[f"{kind[0]}_s"] += time.perf_counter() - t0
        acc[f"{kind[0]}_calls"] += 1
        return out

    def timed_sdpa(*args, **kwargs):
        t0 = time.perf_counter()
        out = sdpa(*args, **kwargs)
        acc[f"{kind[0]}_attn_s"] += time.perf_counter() - t0
        return out

    def restore() -> None:
        model.forward = inner
        torch.nn.functional.scaled_dot_product_attention = sdpa

    model.forward = timed
    torch.nn.functional.scaled_dot_product_attention = timed_sdpa
    return acc, restore


def step_cost_ms(model, batch: int, width: int, reps: int = 40) -> float:
    """Median ms of one decode forward (one token per row, ``width`` cached columns) at ``batch`` rows."""
    from transformers import DynamicCache

    from at2po.rollout.hf_engine import cache_kwarg
    from at2po.rollout.slab_cache import SlabCache

    kw = cache_kwarg(model)
    vocab = int(model.config.vocab_size)
    with torch.inference_mode():
        cache = DynamicCache()
        model(input_ids=torch.randint(0, vocab, (batch, width)), use_cache=True, **{kw: cache})
        slab = SlabCache.from_cache(cache, rows_cap=batch, right=reps + 1)
        mask = torch.ones(batch, width, dtype=torch.long)
        tok = torch.randint(0, vocab, (batch, 1))
        times = []
        for i in range(reps):
            mask = torch.cat([mask, mask.new_ones(batch, 1)], 1)
            t0 = time.perf_counter()
            model(input_ids=tok, attention_mask=mask, position_ids=torch.full((batch, 1), width + i),
                  **{kw: slab}, use_cache=True)
            times.append(time.perf_counter() - t0)
    return sorted(times)[reps // 2] * 1e3


def _pick(node, j: int, p: torch.Tensor) -> str:
    """Token ``j`` of ``node`` with its probability under ``p`` ("end" where the node stops before it)."""
    return f"{node.gen_ids[j]} (p={float(p[node.gen_ids[j]]):.4g})" if j < len(node.gen_ids) else "end"


def first_difference(model, a, b) -> str:
    """The first token where two rollouts' trees differ, with both picks' probabilities and how far each run's
    log-probs before it are from teacher forcing (float noise: both tiny, and the picks neighbours in the CDF)."""
    for ti, (ta, tb) in enumerate(zip(a.trees, b.trees, strict=True)):
        for i, (na, nb) in enumerate(zip(ta.nodes, tb.nodes, strict=False)):
            if na.gen_ids == nb.gen_ids:
                continue
            pairs = zip(na.gen_ids, nb.gen_ids, strict=False)  # the first differing token, else where one stops
            j = next((k for k, (x, y) in enumerate(pairs) if x != y), min(len(na.gen_ids), len(nb.gen_ids)))
            ctx = ta.context_ids(i, include_gen=False)
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([ctx + na.gen_ids[:j + 1]])).logits[0].float(), -1)  # [T, V]
            tf = [float(lp[len(ctx) - 1 + k, t]) for k, t in enumerate(na.gen_ids[:j])]
            dev_a = max((abs(x - y) for x, y in zip(tf, na.gen_logprobs[:j], strict=True)), default=0.0)
            dev_b = max((abs(x - y) for x, y in zip(tf, nb.gen_logprobs[:j], strict=True)), default=0.0)
            p = lp[len(ctx) - 1 + j].exp()
            return (f"tree {ti} node {i} token {j}: with reuse {_pick(na, j, p)}, without {_pick(nb, j, p)}; "
                    f"max |log-prob − teacher forcing| before it: with reuse {dev_a:.2e}, without {dev_b:.2e}")
    return "identical"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", choices=["sft-cpu-small", "sft-cpu-deep"], default="sft-cpu-deep")
    ap.add_argument("--work-dir", type=Path, default=Path("runs/bench"), help="compare.py's cache")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--hops", type=lambda v: [int(x) for x in v.split(",")], default=None)
    ap.add_argument("--m", type=int, default=10)
    ap.add_argument("--l", type=int, default=2)
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from at2po.agent.env import QAExample
    from at2po.agent.retrievers.bm25 import BM25Retriever
    from at2po.agent.search_env import SearchEnv
    from at2po.rollout.driver import RolloutConfig
    from at2po.rollout.hf_engine import HFEngine

    world, _, model, tok, env_cfg = load_sft_policy(args.policy, args.work_dir)
    env = SearchEnv(tok, BM25Retriever.load(world.index), env_cfg)
    rows = read_jsonl(world.test)
    if args.hops:
        rows = [r for r in rows if r.get("hops") in args.hops]
    examples = [QAExample(r["question"], r["golden_answers"], id=r["id"]) for r in pick_rows(rows, args.prompts)]
    base = dict(max_turn_tokens=96, max_response_tokens=2048, seed=0, max_concurrent_sequences=256)
    leaves = args.m + args.l * args.k
    configs = {"tree": RolloutConfig(mode="tree", m=args.m, l=args.l, k=args.k, **base),
               "chain": RolloutConfig(mode="chain", n=leaves, **base)}
    eng = HFEngine(model, tok, max_batch_sequences=256)
    timed_rollout(eng, env, examples[:2], RolloutConfig(mode="chain", n=2, **base))  # warm-up
    acc, restore = forward_timer(model)
    print(f"{args.policy}, {len(examples)} prompts, tree M={args.m} L={args.l} K={args.k} vs {leaves} chains")
    res = {}
    for name, cfg in configs.items():
        for key in acc:
            acc[key] = 0
        res[name] = timed_rollout(eng, env, examples, cfg)
        m = res[name].metrics
        print(f"{name:>6}: wall {m['wall_s']:.2f} s, generated tokens {m['generated_tokens']:.0f}, decode steps "
              f"{m['decode_steps']:.0f}, kv_live {m['kv_live'] / 1e6:.1f}M, kv_read {m['kv_read'] / 1e6:.1f}M | model "
              f"forward: decode {acc['decode_s']:.2f} s (attention {acc['decode_attn_s']:.2f} s), prefill "
              f"{acc['prefill_s']:.2f} s ({acc['prefill_calls']} calls; attention {acc['prefill_attn_s']:.2f} s) | "
              f"rest {m['wall_s'] - acc['decode_s'] - acc['prefill_s']:.2f} s", flush=True)
    restore()
    t, c = res["tree"].metrics, res["chain"].metrics
    print(f"tree/chain: tokens {t['generated_tokens'] / c['generated_tokens']:.3f}, "
          f"wall {t['wall_s'] / c['wall_s']:.3f}, kv_live {t['kv_live'] / c['kv_live']:.3f}, "
          f"kv_read {t['kv_read'] / c['kv_read']:.3f}")
    width = round(c["kv_live"] / max(1.0, c["generated_tokens"]))
    costs = {b: step_cost_ms(model, b, width) for b in (1, 8, 32, 128)}
    print(f"decode forward at {width} cached columns: "
          + ", ".join(f"batch {b}: {ms:.2f} ms" for b, ms in costs.items()))
    no_reuse = timed_rollout(HFEngine(model, tok, prefix_cache=False, max_batch_sequences=256), env, examples,
                             configs["tree"])
    print(f"tree with vs without prefix reuse: {first_difference(model, res['tree'], no_reuse)}")
    env.close()


if __name__ == "__main__":
    main()
