"""Rollout wall time of two at2po source trees side by side (e.g. before/after an engine change).

    git worktree add /tmp/at2po-old <commit>
    python benchmarks/rollout_versions.py --old /tmp/at2po-old [--prompts 16] [--reps 3]

Each tree runs in its own subprocess (its own ``at2po`` import) on compare.py's ``sft-cpu-small`` warm start and
world: an entropy tree (M=10, L=2, K=6) and 22 chains on the same prompts (one per hop count in turn), phase
batching, ``--reps`` times each; medians are compared. The two versions may draw different random numbers (the
generated-token counts are printed), so compare wall time per generated token as well.
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


def child(src: str, prompts: int, reps: int) -> None:
    sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]  # not the installed at2po
    sys.path.insert(0, src)
    import time

    import torch

    import at2po.rollout.driver as drv  # noqa: F401  (before compare.py puts this tree's root on sys.path)

    sys.path.insert(1, str(ROOT / "benchmarks"))
    from compare import SIZES, build_shared
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from at2po.agent.env import QAExample
    from at2po.agent.retrievers.bm25 import BM25Retriever
    from at2po.agent.search_env import EnvConfig, SearchEnv
    from at2po.rollout.driver import RolloutConfig, rollout
    from at2po.rollout.hf_engine import HFEngine

    torch.set_num_threads(2)
    shared, grid = build_shared("cpu-small", ROOT / "runs/bench"), SIZES["cpu-small"]
    tok = AutoTokenizer.from_pretrained(shared["sft_model"])
    model = AutoModelForCausalLM.from_pretrained(shared["sft_model"]).eval()
    env = SearchEnv(tok, BM25Retriever.load(Path(shared["index"])),
                    EnvConfig(topk=grid.world["topk"], max_obs_tokens=grid.world["max_obs_tokens"], max_tool_calls=grid.max_tool_calls))
    by: dict = {}
    for line in open(shared["test"], encoding="utf-8"):
        r = json.loads(line)
        by.setdefault(r["hops"], []).append(r)
    rows = [r for i in range(prompts) for h in sorted(by) for r in by[h][i:i + 1]][:prompts]
    ex = [QAExample(r["question"], r["golden_answers"], id=r["id"]) for r in rows]
    eng = HFEngine(model, tok, max_batch_sequences=256)
    rollout(eng, env, ex[:2], RolloutConfig(mode="chain", n=2, max_turn_tokens=96))  # warm-up
    out = {}
    for mode in ("tree", "chain"):
        cfg = RolloutConfig(mode=mode, m=10, l=2, k=6, n=22, max_turn_tokens=96, max_response_tokens=2048, seed=0,
                            max_concurrent_sequences=256)
        walls = []
        for _ in range(reps):
            eng.clear_cache()
            t0 = time.perf_counter()
            res = rollout(eng, env, ex, cfg)
            walls.append(time.perf_counter() - t0)
        out[mode] = {"wall": statistics.median(walls), "walls": walls, "tokens": res.metrics["generated_tokens"]}
    print("RESULT " + json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="source tree of the old version (a git worktree)")
    ap.add_argument("--new", default=str(ROOT), help="source tree of the new version (default: this one)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.prompts, args.reps)
    res = {}
    for name, src in (("old", args.old), ("new", args.new)):
        proc = subprocess.run([sys.executable, __file__, "--old", args.old, "--child", src, "--prompts", str(args.prompts),
                               "--reps", str(args.reps)], capture_output=True, text=True, cwd=ROOT, env=os.environ)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            raise SystemExit(f"{name} ({src}) failed:\n{proc.stderr[-3000:]}")
        res[name] = json.loads(line[7:])
        for mode, r in res[name].items():
            print(f"{name:3s} {mode:5s} wall median {r['wall']:.2f} s (all {[round(w, 2) for w in r['walls']]}), "
                  f"generated tokens {r['tokens']:.0f}")
    for mode in ("tree", "chain"):
        o, n = res["old"][mode], res["new"][mode]
        print(f"ratio.new_over_old_wall_{mode}={n['wall'] / o['wall']:.3f}")
        print(f"info.new_over_old_wall_per_token_{mode}={(n['wall'] / n['tokens']) / (o['wall'] / o['tokens']):.3f}")


if __name__ == "__main__":
    main()
