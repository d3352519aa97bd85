"""vLLM engine vs HF engine on the same entropy-tree rollout (SmolLM2-135M-Instruct, fp32, CPU).

    python benchmarks/vllm_bench.py [--prompts 1] [--max-turn-tokens 48] [--max-response-tokens 256]

Both engines run the rollout driver's entropy tree (M=10, L=2, K=6 → 22 leaves per prompt) over the synthetic
world with the real SearchEnv + BM25 index, same prompts and rollout config. Each engine is warmed up by one
short call first (vLLM's first forward allocates its kernels), then timed on the full rollout. Each engine runs
in a fresh subprocess (vLLM's CPU backend binds OpenMP threads for the whole process).

Prints per engine: generated tokens, generation tokens/s (generated tokens / engine wall time), prefill and cached
tokens; then ``ratio.vllm_over_hf_throughput`` (vLLM tokens/s ÷ HF tokens/s) and ``ratio.vllm_prefix_cached_share``
(vLLM's cached_tokens ÷ (prefill_tokens + cached_tokens): the share of context tokens of the tree served from the
prefix cache). Needs vllm (``bash scripts/install_vllm_cpu.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch


def run(engine: Any, env: Any, examples: list[Any], cfg: Any) -> dict[str, float]:
    from at2po.rollout.driver import rollout
    from at2po.rollout.engine import SamplingParams

    engine.generate([env.prompt_ids(examples[0])], SamplingParams(max_new_tokens=4, temperature=0.0))  # warm-up
    engine.clear_cache()
    engine.reset_stats()
    t0 = time.perf_counter()
    res = rollout(engine, env, examples, cfg)
    wall = time.perf_counter() - t0
    st = engine.stats()
    return {
        "wall_s": wall,
        "engine_s": st.wall_s,
        "generated_tokens": float(st.generated_tokens),
        "prefill_tokens": float(st.prefill_tokens),
        "cached_tokens": float(st.cached_tokens),
        "tokens_per_s": st.generated_tokens / max(st.wall_s, 1e-9),
        "leaves": res.metrics["leaves"],
    }


def measure(engine_name: str, args: argparse.Namespace) -> dict[str, float]:
    """One engine's tree rollout, in this process (called in a fresh subprocess per engine by :func:`main`)."""
    from at2po.agent.datasets import load_qa
    from at2po.agent.retrievers import load_retriever
    from at2po.agent.search_env import EnvConfig, SearchEnv
    from at2po.agent.world import make_world
    from at2po.models.smollm2 import convert_smollm2
    from at2po.rollout.driver import RolloutConfig

    torch.set_num_threads(os.cpu_count() or 1)
    model_dir = convert_smollm2()
    world = make_world(tempfile.mkdtemp(prefix="vllm_bench_"), seed=args.seed, with_sft=False)
    examples = load_qa(world.train, limit=args.prompts)
    cfg = RolloutConfig(
        mode="tree", m=10, l=2, k=6, expansion="entropy", temperature=1.0, seed=args.seed,
        max_turn_tokens=args.max_turn_tokens, max_response_tokens=args.max_response_tokens,
    )
    retriever = load_retriever(str(world.index))
    if engine_name == "hf":
        from at2po.rollout.hf_engine import HFEngine

        engine = HFEngine.from_pretrained(model_dir, device="cpu", dtype=torch.float32)
    else:
        from at2po.rollout.vllm_engine import VLLMConfig, VLLMEngine

        engine = VLLMEngine(model_dir, VLLMConfig(kv_cache_gib=args.kv_cache_gib, max_model_len=2048, max_num_seqs=64))
    env = SearchEnv(engine.tokenizer, retriever, EnvConfig())
    try:
        return run(engine, env, examples, cfg)
    finally:
        env.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=1)
    ap.add_argument("--max-turn-tokens", type=int, default=48)
    ap.add_argument("--max-response-tokens", type=int, default=256)
    ap.add_argument("--kv-cache-gib", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["hf", "vllm"], help=argparse.SUPPRESS)  # child mode: one engine, JSON out
    args = ap.parse_args()
    if args.only:
        print("RESULT " + json.dumps(measure(args.only, args)), flush=True)
        return

    results: dict[str, dict[str, float]] = {}
    for name in ("hf", "vllm"):  # each engine in a fresh process: vLLM binds OpenMP threads process-wide
        cmd = [sys.executable, __file__, "--only", name] + [
            f"--prompts={args.prompts}", f"--max-turn-tokens={args.max_turn_tokens}",
            f"--max-response-tokens={args.max_response_tokens}", f"--kv-cache-gib={args.kv_cache_gib}",
            f"--seed={args.seed}",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if out.returncode != 0 or line is None:
            sys.stderr.write(out.stderr[-4000:])
            raise SystemExit(f"vllm_bench: the {name} run failed (exit {out.returncode})")
        results[name] = json.loads(line[len("RESULT "):])
        print(f"{name}: done in {results[name]['wall_s']:.1f} s", flush=True)

    r_hf, r_vl = results["hf"], results["vllm"]
    print(f"entropy tree M=10 L=2 K=6, {args.prompts} prompt(s), max_turn_tokens={args.max_turn_tokens}, "
          f"max_response_tokens={args.max_response_tokens}, SmolLM2-135M-Instruct fp32, {os.cpu_count()} CPU cores")
    print(f"{'engine':8} {'leaves':>6} {'gen tok':>8} {'engine s':>9} {'tok/s':>8} {'prefill':>8} {'cached':>8} "
          f"{'wall s':>8}")
    for name, r in (("hf", r_hf), ("vllm", r_vl)):
        print(f"{name:8} {r['leaves']:6.0f} {r['generated_tokens']:8.0f} {r['engine_s']:9.2f} {r['tokens_per_s']:8.1f} "
              f"{r['prefill_tokens']:8.0f} {r['cached_tokens']:8.0f} {r['wall_s']:8.2f}")
    share = r_vl["cached_tokens"] / max(r_vl["prefill_tokens"] + r_vl["cached_tokens"], 1.0)
    print(f"ratio.vllm_over_hf_throughput={r_vl['tokens_per_s'] / max(r_hf['tokens_per_s'], 1e-9):.3f}")
    print(f"ratio.vllm_prefix_cached_share={share:.3f}")


if __name__ == "__main__":
    main()
