"""Rollout wall time of two at2po source trees side by side (e.g. before/after an engine change).

    git worktree add /tmp/at2po-old <commit>
    python benchmarks/rollout_versions.py --old /tmp/at2po-old [--policy sft-cpu-small|sft-cpu-deep] [--prompts 16]
        [--reps 3]

Each run is a subprocess with its own ``at2po`` import, on ``rollout_bench.py``'s warm start and prompt picking
(``--policy``, the test set's hop mix): an entropy tree (M=10, L=2, K=6) and 22 chains on the same prompts, phase
batching. The old and the new tree alternate, ``--reps`` runs each, so drift of a noisy machine hits both alike;
medians are compared. The two versions may draw different random numbers (the generated-token counts are
printed), so compare wall time per generated token as well.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(src: str, policy: str, prompts: int) -> None:
    sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]  # not the installed at2po
    sys.path.insert(0, src)
    import time

    import torch

    import at2po.rollout.driver as drv  # noqa: F401  (before compare.py puts this tree's root on sys.path)

    sys.path.insert(1, str(ROOT / "benchmarks"))
    from rollout_bench import load_sft_policy, pick_rows, read_jsonl

    from at2po.agent.env import QAExample
    from at2po.agent.retrievers.bm25 import BM25Retriever
    from at2po.agent.search_env import SearchEnv
    from at2po.rollout.driver import RolloutConfig, rollout
    from at2po.rollout.hf_engine import HFEngine

    torch.set_num_threads(2)
    world, _, model, tok, env_cfg = load_sft_policy(policy, ROOT / "runs/bench")
    env = SearchEnv(tok, BM25Retriever.load(world.index), env_cfg)
    rows = pick_rows(read_jsonl(world.test), prompts)
    ex = [QAExample(r["question"], r["golden_answers"], id=r["id"]) for r in rows]
    eng = HFEngine(model, tok, max_batch_sequences=256)
    rollout(eng, env, ex[:2], RolloutConfig(mode="chain", n=2, max_turn_tokens=96))  # warm-up
    out = {}
    for mode in ("tree", "chain"):
        cfg = RolloutConfig(mode=mode, m=10, l=2, k=6, n=22, max_turn_tokens=96, max_response_tokens=2048, seed=0,
                            max_concurrent_sequences=256)
        eng.clear_cache()
        t0 = time.perf_counter()
        res = rollout(eng, env, ex, cfg)
        out[mode] = {"wall": time.perf_counter() - t0, "tokens": res.metrics["generated_tokens"]}
    env.close()
    print("RESULT " + json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="source tree of the old version (a git worktree)")
    ap.add_argument("--new", default=str(ROOT), help="source tree of the new version (default: this one)")
    ap.add_argument("--policy", choices=["sft-cpu-small", "sft-cpu-deep"], default="sft-cpu-small")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.policy, args.prompts)
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    for _ in range(args.reps):
        for name, src in (("old", args.old), ("new", args.new)):
            cmd = [sys.executable, __file__, "--old", args.old, "--child", src, "--policy", args.policy,
                   "--prompts", str(args.prompts)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=os.environ)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                raise SystemExit(f"{name} ({src}) failed:\n{proc.stderr[-3000:]}")
            runs[name].append(json.loads(line[7:]))
    med = {name: {mode: statistics.median(r[mode]["wall"] for r in rs) for mode in ("tree", "chain")}
           for name, rs in runs.items()}
    for name, rs in runs.items():
        for mode in ("tree", "chain"):
            walls = [round(r[mode]["wall"], 2) for r in rs]
            print(f"{name:3s} {mode:5s} wall median {med[name][mode]:.2f} s (all {walls}), "
                  f"generated tokens {rs[0][mode]['tokens']:.0f}")
    for mode in ("tree", "chain"):
        o, n = med["old"][mode], med["new"][mode]
        o_tok, n_tok = runs["old"][0][mode]["tokens"], runs["new"][0][mode]["tokens"]
        print(f"ratio.new_over_old_wall_{mode}={n / o:.3f}")
        print(f"info.new_over_old_wall_per_token_{mode}={(n / n_tok) / (o / o_tok):.3f}")


if __name__ == "__main__":
    main()
