"""Equal-budget comparison of RL methods on the synthetic multi-hop world — one command per table.

    python benchmarks/compare.py --table methods    --seeds 0,1,2       # (a) AT²PO vs GRPO, DAPO, GSPO, Tree-GRPO
    python benchmarks/compare.py --table ablation   --seeds 0,1,2       # (b) progressive ablation
    python benchmarks/compare.py --table credit     --seeds 0,1,2       # (c) value/advantage modes (paper's 8 rows)
    python benchmarks/compare.py --table efficiency --steps 3           # (d) chains vs random tree vs entropy tree
    python benchmarks/compare.py --table methods --size gpu --seeds 0,1,2   # the same grid, larger, vLLM engine
    python benchmarks/compare.py --table wiki       --seeds 0 --threads 2   # AT²PO vs GRPO, SmolLM2 on Wikipedia

Every run starts from ONE shared warm start, built once per size and cached in ``--work-dir``: the world
(1-, 2- and 3-hop questions, held-out test set, BM25 index, noisy expert demos), a tiny Llama with a BPE
tokenizer trained on the world, and its SFT checkpoint. Each method runs from that checkpoint until its
cumulative *generated* tokens reach ``--token-budget`` (``train.max_generated_tokens``), so every method gets the
same sampling budget; curves use generated tokens as the x-axis.

Method settings come from the presets unchanged (losses, clips, credit, KL, DAPO's dynamic sampling). The size
only sets the scale, identically for every method: prompts per step, the tree shape (paper M=10, L=2, K=6) and
chain count (paper 16) scaled so a tree and a chain group cost about the same tokens ((M + L·K/2) ≈ n), turn and
response lengths, and DAPO's overlong buffer kept at the paper's 2000/6192 of the response length.

Each run is a subprocess (its own peak memory; a crash does not stop the grid); a finished run (``bench.json``
present) is not re-run, so an interrupted grid continues where it stopped. Outputs (small, committed):
``benchmarks/results/<table>/{results.csv, summary.md, *.png}``. Run directories stay in ``--work-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass(frozen=True)
class Size:
    """Scale of one grid: world, model, rollout width, lengths and default budget (same for every method)."""

    world: dict[str, Any]
    arch: dict[str, Any]
    vocab: int
    chains: int  # chains per prompt (paper 16)
    tree: tuple[int, int, int]  # M, L, K (paper 10, 2, 6)
    batch_prompts: int
    mini_batch_prompts: int
    max_turn_tokens: int
    max_response_tokens: int
    max_tool_calls: int
    lr: float
    sft: tuple[int, float, int]  # epochs, lr, batch rows
    budget: int  # default generated-token budget per run
    eval_every: int  # RL steps between held-out evals (0: before and after only)
    engine: str = "hf"
    extra: tuple[str, ...] = field(default_factory=tuple)


_ARCH_SMALL = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
SIZES: dict[str, Size] = {
    # ~1–2 min per run on one loaded CPU core; the quickstart's world/model, with 3-hop questions added
    "cpu-small": Size(
        world=dict(n_train=400, n_test=90, n_sft=500, hops=(0.3, 0.4, 0.3), expert_noise=0.1, topk=2, max_obs_tokens=256),
        arch=_ARCH_SMALL, vocab=4096, chains=6, tree=(4, 1, 4), batch_prompts=8, mini_batch_prompts=4,
        max_turn_tokens=48, max_response_tokens=768, max_tool_calls=4, lr=2e-4, sft=(12, 3e-3, 8),
        budget=60_000, eval_every=6,
    ),
    # cpu-small's model on a deeper world (10/20/30/40 % 1- to 4-hop questions; 4-hop needs 5 turns): longer
    # trajectories, where a fork saves more of a chain (benchmarks/rollout_bench.py --policy sft-cpu-deep)
    "cpu-deep": Size(
        world=dict(n_train=400, n_test=90, n_sft=500, n_people=300, n_companies=60, hops=(0.1, 0.2, 0.3, 0.4),
                   expert_noise=0.1, topk=2, max_obs_tokens=256),
        arch=_ARCH_SMALL, vocab=4096, chains=6, tree=(4, 1, 4), batch_prompts=8, mini_batch_prompts=4,
        max_turn_tokens=48, max_response_tokens=1024, max_tool_calls=5, lr=2e-4, sft=(12, 3e-3, 8),
        budget=80_000, eval_every=6,
    ),
    "cpu-medium": Size(
        world=dict(n_train=500, n_test=150, n_sft=500, hops=(0.3, 0.4, 0.3), expert_noise=0.1, topk=2, max_obs_tokens=256,
                   distractors=30),
        arch=dict(_ARCH_SMALL, num_hidden_layers=6, hidden_size=192, intermediate_size=384), vocab=4096, chains=10,
        tree=(6, 2, 4), batch_prompts=16, mini_batch_prompts=4, max_turn_tokens=64, max_response_tokens=1024,
        max_tool_calls=5, lr=2e-4, sft=(12, 3e-3, 8), budget=600_000, eval_every=10,
    ),
    # paper shapes (16 chains vs M=10, L=2, K=6 trees, 64 prompts/step) on a GPU with the vLLM engine
    "gpu": Size(
        world=dict(n_train=2000, n_test=300, n_sft=1000, hops=(0.3, 0.4, 0.3), expert_noise=0.1, topk=3, max_obs_tokens=512,
                   distractors=100, name_similarity=0.3),
        arch=dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4),
        vocab=8192, chains=16, tree=(10, 2, 6), batch_prompts=64, mini_batch_prompts=8, max_turn_tokens=128,
        max_response_tokens=2048, max_tool_calls=6, lr=1e-4, sft=(8, 1e-3, 32), budget=20_000_000, eval_every=10,
        engine="vllm",
    ),
}

_M, _L, _K = "rollout.m", "rollout.l", "rollout.k"
TABLES: dict[str, list[tuple[str, str, list[str]]]] = {  # label, preset, overrides (beyond the size's)
    "methods": [(p, p, []) for p in ("at2po", "grpo", "dapo", "gspo", "tree-grpo")],
    "ablation": [
        ("random tree + token loss", "ablation-random-token", []),
        ("+ turn loss", "ablation-random-turn", []),
        ("+ entropy expansion", "ablation-entropy-turn", []),
        ("+ turn credit (AT²PO)", "ablation-full", []),
    ],
    "credit": [
        (f"{a}/{v}", "at2po", [f"credit.adv_mode={a}", f"credit.value_mode={v}"])
        for a, v in [("value", "child_weighted"), ("value", "child_mean"), ("value", "leaf_mean"),
                     ("td", "child_weighted"), ("td", "leaf_mean"), ("global", "child_weighted"),
                     ("global", "leaf_mean"), ("td+global", "leaf_mean"), ("value", "child_softmax")]
    ],
    # (3) real text: SmolLM2-135M-Instruct (LoRA) on the Wikipedia benchmark, configs/tasks/wiki-smollm2.yaml
    "wiki": [(p, p, []) for p in ("at2po", "grpo")],
    # the same loss/credit (at2po) so only the rollout shape differs
    "efficiency": [
        ("chains", "at2po", ["rollout.mode=chain"]),
        ("random tree", "at2po", ["rollout.expansion=random"]),
        ("entropy tree", "at2po", ["rollout.expansion=entropy"]),
    ],
}


# --------------------------------------------------------------------------------------------- shared warm start
def build_shared(size_name: str, work: Path, world_seed: int = 0) -> dict[str, str]:
    """World + tiny model + SFT checkpoint, built once per (size, world seed) and cached under ``work``."""
    import torch

    from at2po.agent.world import make_world
    from at2po.config import load_config
    from at2po.models.tiny import build_tiny_model
    from at2po.train.quickstart import _texts
    from at2po.train.sft import sft

    size = SIZES[size_name]
    root = work / f"shared-{size_name}-w{world_seed}"
    done = root / "shared.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    torch.manual_seed(world_seed)
    world = make_world(root / "world", seed=world_seed, **size.world)
    model_dir = build_tiny_model(_texts(world), root / "model-init", vocab_size=size.vocab, seed=world_seed, **size.arch)
    paths = {"train": str(world.train), "test": str(world.test), "index": str(world.index), "sft": str(world.sft)}
    epochs, lr, rows = size.sft
    cfg = load_config(preset="at2po", overrides=[
        f"model.path={model_dir}", f"data.train={paths['train']}", f"data.index={paths['index']}", f"data.sft={paths['sft']}",
        f"train.output_dir={root / 'sft-run'}", f"sft.output_dir={root / 'sft'}", f"sft.epochs={epochs}", f"sft.lr={lr}",
        f"sft.batch_rows={rows}", f"env.topk={size.world['topk']}", f"env.max_obs_tokens={size.world['max_obs_tokens']}",
        f"env.max_tool_calls={size.max_tool_calls}", "logging.progress=false",
    ])
    sft_dir = sft(cfg)
    shared = {**paths, "sft_model": str(sft_dir), "build_s": time.perf_counter() - t0, "world_stats": world.stats}
    done.write_text(json.dumps(shared, indent=2, default=str))
    return shared


WIKI_CONFIG = ROOT / "configs" / "tasks" / "wiki-smollm2.yaml"
WIKI_BUDGET = 20_000  # generated tokens per wiki run (6 steps, ≈ 25 min on 2 idle cores)


def build_shared_wiki() -> dict[str, str]:
    """The wiki table's warm start, at the paths of ``configs/tasks/wiki-smollm2.yaml``; each input is made by its
    command when missing (``make-wiki``, ``convert-smollm2``, ``wiki-demos``, ``sft``), as in the README."""
    from at2po.agent.wiki import make_wiki
    from at2po.agent.wiki_expert import qa_rows, write_wiki_demonstrations
    from at2po.config import load_config
    from at2po.models.smollm2 import convert_smollm2
    from at2po.train.components import build_env, load_tokenizer
    from at2po.train.sft import sft

    cfg = load_config(str(WIKI_CONFIG))
    if not (Path(cfg.data.train).is_file() and Path(cfg.data.index).is_dir()):
        make_wiki(Path(cfg.data.train).parent)
    convert_smollm2(cfg.model.path)  # a no-op when already converted
    if not Path(cfg.data.sft).is_file():
        env = build_env(cfg, load_tokenizer(cfg.model.path))
        try:
            write_wiki_demonstrations(qa_rows(cfg.data.train), env, cfg.data.sft, seed=cfg.train.seed)
        finally:
            env.close()
    sft_dir = Path(cfg.sft.output_dir)
    if not (sft_dir / "config.json").is_file():
        sft(cfg)
    return {"config": str(WIKI_CONFIG), "sft_model": str(sft_dir), "test": str(cfg.data.test)}


def wiki_overrides(shared: dict[str, str], seed: int, budget: int | None, steps: int, out_dir: Path) -> list[str]:
    """A wiki run: the task config unchanged, from the protocol-SFT checkpoint, budgeted like the grid."""
    ov = [f"model.path={shared['sft_model']}", f"data.test={shared['test']}", f"train.output_dir={out_dir}",
          f"train.seed={seed}", f"rollout.seed={seed}", f"train.steps={steps}", "eval.every=0",
          "checkpoint.every=0", "checkpoint.keep_last=1", "logging.progress=false", "logging.tensorboard=false"]
    return ov + ([f"train.max_generated_tokens={budget}"] if budget else [])


def run_overrides(size: Size, shared: dict[str, str], preset: str, seed: int, budget: int | None, steps: int,
                  out_dir: Path) -> list[str]:
    """Config overrides of one run: data/model from the shared warm start, then the size's scale."""
    from at2po.presets import get_preset

    m, l, k = size.tree
    ov = [
        f"model.path={shared['sft_model']}", f"data.train={shared['train']}", f"data.test={shared['test']}",
        f"data.index={shared['index']}", f"train.output_dir={out_dir}", f"train.seed={seed}", f"rollout.seed={seed}",
        f"train.steps={steps}", f"train.batch_prompts={size.batch_prompts}",
        f"train.mini_batch_prompts={size.mini_batch_prompts}", f"optim.lr={size.lr}",
        f"rollout.n={size.chains}", f"{_M}={m}", f"{_L}={l}", f"{_K}={k}", f"rollout.engine={size.engine}",
        f"rollout.max_turn_tokens={size.max_turn_tokens}", f"rollout.max_response_tokens={size.max_response_tokens}",
        f"env.max_tool_calls={size.max_tool_calls}", f"env.topk={size.world['topk']}",
        f"env.max_obs_tokens={size.world['max_obs_tokens']}", f"eval.every={size.eval_every}",
        "eval.batch_prompts=64", "checkpoint.every=0", "checkpoint.keep_last=1", "logging.progress=false",
        "logging.tensorboard=false", *size.extra,
    ]
    if budget:
        ov.append(f"train.max_generated_tokens={budget}")
    buf = get_preset(preset).get("train", {}).get("overlong_buffer", 0)
    if buf:  # DAPO: the paper's buffer is 2000 of 6192 response tokens; keep that fraction at this length
        ov.append(f"train.overlong_buffer={max(1, round(size.max_response_tokens * buf / 6192))}")
    return ov


def run_one(spec_path: Path) -> None:
    """Child process: one training run; writes ``<run_dir>/bench.json`` (wall time, peak memory, result)."""
    import torch

    from at2po.config import load_config
    from at2po.train.trainer import train

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    cfg = load_config(spec.get("config"), overrides=spec["overrides"], preset=spec["preset"])
    t0 = time.perf_counter()
    res = train(cfg)
    out = {
        **spec, "wall_s": time.perf_counter() - t0, "steps_done": res.steps_done,
        "stopped_by_budget": res.stopped_by_budget, "evals": {str(k): v for k, v in res.evals.items()},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
    }
    (Path(cfg.train.output_dir) / "bench.json").write_text(json.dumps(out, indent=2))


def size_name(args: argparse.Namespace) -> str:
    """The scale a table runs at: ``--size``, except the wiki table, which has its own task config."""
    return "wiki-smollm2" if args.table == "wiki" else args.size


def run_grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    wiki = args.table == "wiki"
    size = SIZES[args.size]
    work = Path(args.work_dir)
    print(f"[compare] shared warm start for {'the wiki task' if wiki else 'size ' + args.size} …", flush=True)
    shared = build_shared_wiki() if wiki else build_shared(args.size, work)
    budget = None if args.table == "efficiency" else (args.token_budget or (WIKI_BUDGET if wiki else size.budget))
    steps = args.steps or (3 if args.table == "efficiency" else 10_000)  # a budgeted run stops at its budget
    rows = [r for r in TABLES[args.table] if not args.only or r[0] in args.only.split(",")]
    done: list[dict[str, Any]] = []
    for seed in args.seeds:
        for label, preset, extra in rows:
            slug = label.replace(" ", "_").replace("/", "-").replace("+", "p").replace("²", "2").replace("(", "").replace(")", "")
            run_dir = work / f"{args.table}-{size_name(args)}-b{budget or 0}" / f"{slug}-s{seed}"
            bench = run_dir / "bench.json"
            if not bench.is_file():
                if run_dir.exists():  # an interrupted run: start it again from scratch
                    import shutil

                    shutil.rmtree(run_dir)
                run_dir.mkdir(parents=True)
                if wiki:
                    overrides = wiki_overrides(shared, seed, budget, steps, run_dir) + extra
                else:
                    overrides = run_overrides(size, shared, preset, seed, budget, steps, run_dir) + extra
                if args.table == "efficiency":  # rollout/update cost only: no held-out evaluation
                    overrides.append("data.test=null")
                overrides += args.set
                spec = {"table": args.table, "label": label, "preset": preset, "seed": seed,
                        "size": size_name(args), "config": shared.get("config"),
                        "budget": budget, "threads": args.threads, "overrides": overrides}
                (run_dir / "spec.json").write_text(json.dumps(spec, indent=2))
                print(f"[compare] {label} seed {seed} → {run_dir}", flush=True)
                with open(run_dir / "stdout.log", "w") as log:
                    rc = subprocess.call([sys.executable, __file__, "--run-one", str(run_dir / "spec.json")],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
                if rc != 0:
                    print(f"[compare] FAILED ({rc}): see {run_dir / 'stdout.log'}", flush=True)
                    continue
            done.append({"run_dir": str(run_dir), **json.loads(bench.read_text())})
            print(f"[compare]   done: {done[-1]['steps_done']} steps, {done[-1]['wall_s']:.0f} s", flush=True)
    return done


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", choices=sorted(TABLES), help="which table to produce")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (train.seed = rollout.seed)")
    ap.add_argument("--size", choices=sorted(SIZES), default="cpu-small")
    ap.add_argument("--token-budget", type=int, default=None, help="generated tokens per run (default: the size's)")
    ap.add_argument("--steps", type=int, default=None, help="step cap (efficiency default 3; budgeted runs: none)")
    ap.add_argument("--only", default=None, help="comma-separated row labels to run (default: all rows)")
    ap.add_argument("--set", nargs="*", default=[], help="extra KEY=VALUE overrides for every run (applied last)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (runs are sequential)")
    ap.add_argument("--work-dir", default="runs/bench", help="run directories and the cached warm start")
    ap.add_argument("--out", default=None, help="results directory (default benchmarks/results/<table>)")
    ap.add_argument("--report-only", action="store_true", help="rebuild CSV/plots from finished runs only")
    ap.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run_one:
        return run_one(Path(args.run_one))
    if not args.table:
        ap.error("--table is required")
    args.seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    from compare_report import write_report

    if args.report_only:
        runs = [json.loads(p.read_text()) | {"run_dir": str(p.parent)}
                for p in sorted(Path(args.work_dir).glob(f"{args.table}-{size_name(args)}-*/*/bench.json"))]
    else:
        runs = run_grid(args)
    out = Path(args.out or ROOT / "benchmarks" / "results" / args.table)
    write_report(args.table, runs, out, command=" ".join(["python", "benchmarks/compare.py",
                                               *[a for a in (argv or sys.argv[1:]) if a != "--report-only"]]))
    print(f"[compare] wrote {out}", flush=True)


if __name__ == "__main__":
    main()
