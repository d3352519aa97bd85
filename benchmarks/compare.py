"""Equal-budget comparison of RL methods on the synthetic multi-hop world — one command per table.

    python benchmarks/compare.py --table methods  --jobs 2       # (a) AT²PO vs GRPO, DAPO, GSPO, Tree-GRPO, 5 seeds
    python benchmarks/compare.py --table ablation --jobs 2       # (b) progressive ablation
    python benchmarks/compare.py --table credit   --seeds 0,1,2  # (c) value/advantage modes (paper's 8 rows)
    python benchmarks/compare.py --table efficiency --steps 3    # (d) chains vs random tree vs entropy tree
    python benchmarks/compare.py --table methods --world-seed 1  # the same kind of world from another seed
    python benchmarks/compare.py --table methods --size gpu      # the same grid, larger, vLLM engine
    python benchmarks/compare.py --table wiki --seeds 0,1,2 --threads 2   # AT²PO vs GRPO, SmolLM2 on Wikipedia
    python benchmarks/compare.py --table methods --report-only   # re-report from the committed run records

Protocol (fixed before any test result is looked at; BENCHMARKS.md explains each choice):

* ONE shared warm start per (size, world seed), built once and cached in ``--work-dir``: the world (default
  ``cpu-hard``: 2- to 4-hop questions with ambiguous names and distractor documents), a stratified validation split
  of its training questions (every 5th of each hop count), a tiny Llama with a BPE tokenizer trained on the world,
  and its SFT checkpoint on noisy expert demonstrations.
* Every run trains from that checkpoint on the remaining training questions until its cumulative *generated*
  tokens reach ``--token-budget`` (``train.max_generated_tokens``): equal sampling budgets; curves use generated
  tokens as the x-axis.
* Method settings come from the presets unchanged (losses, clips, credit, KL, DAPO's dynamic sampling). The size
  sets the scale identically for every method: prompts per step, the tree shape (paper M=10, L=2, K=6) and chain
  count (paper 16) scaled so a tree and a chain group cost about the same tokens ((M + L·K/2) ≈ n), turn and
  response lengths, and DAPO's overlong buffer kept at the paper's 2000/6192 of the response length.
* The learning rate is the one shared setting chosen per row: every row runs the same ``--lr-grid`` on the
  validation split (``--select-seeds``), and takes the lr of the highest final validation EM (mean over the selection
  seeds; a tie to the smaller lr). Only then do the table's runs (``--seeds``) evaluate on the test split, once.

Each run is a subprocess (its own peak memory; a crash does not stop the grid), ``--jobs`` at a time. A finished
run leaves a small record (spec, result, curves, code version) in
``benchmarks/results/<table>/<size>-w<world seed>-b<budget>/{runs,select}/``; commit those: a run whose record
exists is never re-run, so a grid continues across sessions and machines, and ``--report-only`` rebuilds
``results.csv``, ``summary.md`` and the PNGs of that folder from the records alone.
"""

from __future__ import annotations

import argparse
import json
import math
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


_ARCH_SMALL = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2)
SIZES: dict[str, Size] = {
    # The default testbed, built so that turns matter (docs: BENCHMARKS.md "the cpu-hard testbed"):
    # * deep: 20/40/40 % 2-, 3- and 4-hop questions, 4.2 turns per expert trajectory on average;
    # * uncertain turns: 30 % of names reuse or vary an earlier name (two "Varno Kel"s, a "Varno Kell"), 40
    #   distractor documents that mention people and places without stating a relation compete in retrieval;
    # * a warm start with something left to explore: 25 % of the demonstrations carry one deliberate mistake (a
    #   wrong query that is then recovered from, an early answer, a wrong answer) and SFT runs 9 epochs, not 12
    #   (held-out EM of the warm start on world 0: 6 epochs 0.07, 9 epochs 0.38, 12 epochs 0.48).
    "cpu-hard": Size(
        world=dict(n_train=500, n_test=100, n_sft=500, n_people=300, n_companies=60, hops=(0.0, 0.2, 0.4, 0.4),
                   distractors=40, name_similarity=0.3, expert_noise=0.25, topk=2, max_obs_tokens=256),
        arch=_ARCH_SMALL, vocab=4096, chains=6, tree=(4, 1, 4), batch_prompts=8, mini_batch_prompts=4,
        max_turn_tokens=48, max_response_tokens=1024, max_tool_calls=5, lr=2e-4, sft=(9, 3e-3, 8),
        budget=400_000, eval_every=20,
    ),
    # ~1–2 min per run on one loaded CPU core; the quickstart's world/model, with 3-hop questions added
    "cpu-small": Size(
        world=dict(n_train=400, n_test=90, n_sft=500, hops=(0.3, 0.4, 0.3), expert_noise=0.1, topk=2,
                   max_obs_tokens=256),
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
        world=dict(n_train=500, n_test=150, n_sft=500, hops=(0.3, 0.4, 0.3), expert_noise=0.1, topk=2,
                   max_obs_tokens=256, distractors=30),
        arch=dict(_ARCH_SMALL, num_hidden_layers=6, hidden_size=192, intermediate_size=384), vocab=4096, chains=10,
        tree=(6, 2, 4), batch_prompts=16, mini_batch_prompts=4, max_turn_tokens=64, max_response_tokens=1024,
        max_tool_calls=5, lr=2e-4, sft=(12, 3e-3, 8), budget=600_000, eval_every=10,
    ),
    # paper shapes (16 chains vs M=10, L=2, K=6 trees, 64 prompts/step) on a GPU with the vLLM engine
    "gpu": Size(
        world=dict(n_train=2000, n_test=300, n_sft=1000, hops=(0.3, 0.4, 0.3), expert_noise=0.1, topk=3,
                   max_obs_tokens=512, distractors=100, name_similarity=0.3),
        arch=dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4),
        vocab=8192, chains=16, tree=(10, 2, 6), batch_prompts=64, mini_batch_prompts=8, max_turn_tokens=128,
        max_response_tokens=2048, max_tool_calls=6, lr=1e-4, sft=(8, 1e-3, 32), budget=20_000_000, eval_every=10,
        engine="vllm",
    ),
}

_M, _L, _K = "rollout.m", "rollout.l", "rollout.k"
TABLES: dict[str, list[tuple[str, str, list[str]]]] = {  # label, preset, overrides (beyond the size's)
    "methods": [(p, p, []) for p in ("at2po", "grpo", "dapo", "gspo", "tree-grpo", "aepo")],
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
SHARED_VERSION = 3  # bump when the warm start's recipe changes, so cached warm starts are rebuilt
VAL_EVERY = 5  # every 5th training question of each hop count is held out for the lr selection


def split_validation(train_path: Path, out_dir: Path, every: int = VAL_EVERY) -> tuple[Path, Path]:
    """Hold out every ``every``-th training question of each hop count (stratified, deterministic): returns
    (train_fit.jsonl, val.jsonl). Every run trains on train_fit; the lr selection evaluates on val; test stays
    unseen."""
    rows = [json.loads(line) for line in train_path.read_text().splitlines() if line.strip()]
    seen: dict[int, int] = {}
    fit, val = [], []
    for r in rows:
        h = int(r.get("hops", 0))
        seen[h] = seen.get(h, 0) + 1
        (val if seen[h] % every == 0 else fit).append(r)
    paths = out_dir / "train_fit.jsonl", out_dir / "val.jsonl"
    for path, part in zip(paths, (fit, val), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    return paths


def weights_digest(model_dir: Path) -> str:
    """sha256 (first 16 hex digits) of a checkpoint's weight files: run records name the warm start they used."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def build_shared(size_name: str, work: Path, world_seed: int = 0) -> dict[str, str]:
    """World + validation split + tiny model + SFT checkpoint, built once per (size, world seed), cached in ``work``."""
    import torch

    from at2po.agent.world import make_world
    from at2po.config import load_config
    from at2po.models.tiny import build_tiny_model
    from at2po.train.quickstart import _texts
    from at2po.train.sft import sft

    size = SIZES[size_name]
    root = work / f"shared-{size_name}-w{world_seed}"
    done = root / "shared.json"
    if done.is_file() and json.loads(done.read_text()).get("version") == SHARED_VERSION:
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    # one thread: the same warm start on every machine with the same CPU vector ISA (torch's AVX2 and AVX-512
    # kernels round differently, so an AVX-512 machine builds other bits; records name the warm start they used)
    torch.set_num_threads(1)
    torch.manual_seed(world_seed)
    world = make_world(root / "world", seed=world_seed, **size.world)
    fit, val = split_validation(world.train, root / "world")
    model_dir = build_tiny_model(_texts(world), root / "model-init", vocab_size=size.vocab, seed=world_seed,
                                 **size.arch)
    paths = {"train": str(fit), "val": str(val), "test": str(world.test), "index": str(world.index),
             "sft": str(world.sft)}
    epochs, lr, rows = size.sft
    cfg = load_config(preset="at2po", overrides=[
        f"model.path={model_dir}", f"data.train={paths['train']}", f"data.index={paths['index']}",
        f"data.sft={paths['sft']}", f"train.output_dir={root / 'sft-run'}", f"sft.output_dir={root / 'sft'}",
        f"sft.epochs={epochs}", f"sft.lr={lr}", f"sft.batch_rows={rows}", f"env.topk={size.world['topk']}",
        f"env.max_obs_tokens={size.world['max_obs_tokens']}", f"env.max_tool_calls={size.max_tool_calls}",
        "logging.progress=false",
    ])
    sft_dir = sft(cfg)
    torch.set_num_threads(threads)
    shared = {**paths, "sft_model": str(sft_dir), "build_s": time.perf_counter() - t0, "world_stats": world.stats,
              "version": SHARED_VERSION, "world_seed": world_seed, "warm_start_sha": weights_digest(Path(sft_dir))}
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
                  out_dir: Path, lr: float | None = None, split: str = "test") -> list[str]:
    """Config overrides of one run: data/model from the shared warm start, then the size's scale. ``split`` is
    the held-out set it is evaluated on (``val`` for the lr selection, ``test`` for the table)."""
    from at2po.config.presets import get_preset

    m, rounds, k = size.tree
    ov = [
        f"model.path={shared['sft_model']}", f"data.train={shared['train']}", f"data.test={shared[split]}",
        f"data.index={shared['index']}", f"train.output_dir={out_dir}", f"train.seed={seed}", f"rollout.seed={seed}",
        f"train.steps={steps}", f"train.batch_prompts={size.batch_prompts}",
        f"train.mini_batch_prompts={size.mini_batch_prompts}", f"optim.lr={lr or size.lr}",
        f"rollout.n={size.chains}", f"{_M}={m}", f"{_L}={rounds}", f"{_K}={k}", f"rollout.engine={size.engine}",
        # AEPO: the same trajectories per prompt as the chain baselines, half of them global (the paper's 8 of 16)
        f"rollout.aepo.budget={size.chains}", f"rollout.aepo.initial={max(1, size.chains // 2)}",
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


def code_version() -> str:
    """``git describe --always --dirty`` of the checkout (stored in every run's result file)."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def slug(label: str) -> str:
    return (label.replace(" ", "_").replace("/", "-").replace("+", "p").replace("²", "2")
            .replace("(", "").replace(")", ""))


def select_lr(records: list[dict[str, Any]], grid: list[float]) -> dict[str, float]:
    """The selection rule, the same for every row: per row label, the grid lr with the highest final validation EM
    averaged over the selection seeds; a tie goes to the smaller lr. A row is left out until every grid point of
    it has a finished run."""
    per: dict[str, dict[float, list[float]]] = {}
    for r in records:
        em = r["row"].get("em_after")
        if isinstance(em, (int, float)):
            per.setdefault(r["label"], {}).setdefault(float(r["lr"]), []).append(float(em))
    chosen = {}
    for label, by_lr in per.items():
        if all(lr in by_lr for lr in grid):
            means = {lr: sum(v) / len(v) for lr, v in by_lr.items() if lr in grid}
            chosen[label] = max(sorted(means), key=lambda lr: means[lr])  # max keeps the first (smallest) of ties
    return chosen


@dataclass
class Job:
    """One training run of the grid: its run directory (in ``--work-dir``) and its small committed result file."""

    label: str
    preset: str
    seed: int
    lr: float | None
    split: str  # val (lr selection) | test (the table)
    run_dir: Path
    record: Path
    overrides: list[str]


def run_jobs(jobs: list[Job], args: argparse.Namespace, spec_extra: dict[str, Any]) -> list[dict[str, Any]]:
    """Run the jobs whose result file is missing (``--jobs`` at a time, ``--threads`` torch threads each); return
    every finished job's record. A run's record is written as soon as it finishes, so a killed grid continues."""
    from concurrent.futures import ThreadPoolExecutor

    from compare_report import load_record, run_record, save_record

    def one(job: Job) -> dict[str, Any] | None:
        if job.record.is_file():
            return load_record(job.record)
        bench = job.run_dir / "bench.json"
        if not bench.is_file():
            if job.run_dir.exists():  # an interrupted run: start it again from scratch
                import shutil

                shutil.rmtree(job.run_dir)
            job.run_dir.mkdir(parents=True)
            spec = {"table": args.table, "label": job.label, "preset": job.preset, "seed": job.seed, "lr": job.lr,
                    "split": job.split, "size": size_name(args), "world_seed": args.world_seed,
                    "threads": args.threads, "code_version": code_version(), "overrides": job.overrides, **spec_extra}
            (job.run_dir / "spec.json").write_text(json.dumps(spec, indent=2))
            print(f"[compare] {job.label} seed {job.seed} lr {job.lr} ({job.split}) → {job.run_dir}", flush=True)
            with open(job.run_dir / "stdout.log", "w") as log:
                rc = subprocess.call([sys.executable, __file__, "--run-one", str(job.run_dir / "spec.json")],
                                     stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            if rc != 0:
                print(f"[compare] FAILED ({rc}): see {job.run_dir / 'stdout.log'}", flush=True)
                return None
        rec = run_record({"run_dir": str(job.run_dir), **json.loads(bench.read_text())})
        save_record(rec, job.record)
        print(f"[compare]   done {job.label} seed {job.seed}: {rec['steps_done']} steps, {rec['wall_s']:.0f} s, "
              f"EM {rec['row'].get('em_before', float('nan')):.3f} → {rec['row'].get('em_after', float('nan')):.3f}",
              flush=True)
        return rec

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        return [r for r in pool.map(one, jobs) if r is not None]


def table_budget(args: argparse.Namespace) -> int | None:
    """Generated tokens per run: ``--token-budget``, else the size's (the wiki task's); the efficiency table has
    none."""
    if args.table == "efficiency":
        return None
    return args.token_budget or (WIKI_BUDGET if args.table == "wiki" else SIZES[args.size].budget)


def results_dir(args: argparse.Namespace, budget: int | None) -> Path:
    """``benchmarks/results/<table>/<size>-w<world seed>-b<budget>``: one folder per grid (``--out`` overrides)."""
    grid = f"{size_name(args)}-w{args.world_seed}-b{budget or 0}"
    return Path(args.out) if args.out else ROOT / "benchmarks" / "results" / args.table / grid


def run_grid(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
    """lr selection on the validation split (when a grid is given), then the table's runs on the test split.
    Returns (test records, selection records, chosen lr per row)."""
    wiki = args.table == "wiki"
    size = SIZES[args.size]
    work = Path(args.work_dir).resolve()  # absolute: the cached warm start records its paths, valid from any cwd
    budget = table_budget(args)
    steps = args.steps or (3 if args.table == "efficiency" else 10_000)  # a budgeted run stops at its budget
    out = results_dir(args, budget)
    rows = [r for r in TABLES[args.table] if not args.only or r[0] in args.only.split(",")]
    print(f"[compare] shared warm start for {'the wiki task' if wiki else 'size ' + args.size} …", flush=True)
    shared = build_shared_wiki() if wiki else build_shared(args.size, work, args.world_seed)
    run_root = work / f"{args.table}-{size_name(args)}-w{args.world_seed}-b{budget or 0}"
    import torch

    # the warm start's bits depend on the CPU's vector ISA (AVX2 vs AVX-512 kernels round differently): record it
    extra = {"config": shared.get("config"), "budget": budget,
             "warm_start_sha": shared.get("warm_start_sha") or weights_digest(Path(shared["sft_model"])),
             "cpu_capability": torch.backends.cpu.get_cpu_capability()}

    def job(label: str, preset: str, ov: list[str], seed: int, lr: float | None, split: str) -> Job:
        tag = f"{slug(label)}-s{seed}" if split == "test" else f"{slug(label)}-lr{lr:g}-s{seed}"
        run_dir = run_root / ("runs" if split == "test" else "select") / tag
        if wiki:
            overrides = wiki_overrides(shared, seed, budget, steps, run_dir) + ov
        else:
            overrides = run_overrides(size, shared, preset, seed, budget, steps, run_dir, lr=lr, split=split) + ov
        if args.table == "efficiency":  # rollout/update cost only: no held-out evaluation
            overrides.append("data.test=null")
        return Job(label, preset, seed, lr, split, run_dir, out / ("runs" if split == "test" else "select") /
                   f"{tag}.json", overrides + args.set)

    grid = [] if wiki or args.table == "efficiency" else args.lr_grid
    selection, chosen = [], {}
    if grid:
        mid = grid[len(grid) // 2]  # the middle lr of every row first: an early look at all rows, same for each
        order = sorted(grid, key=lambda lr: (abs(math.log(lr / mid)), lr))
        sel_jobs = [job(lab, pre, ov, s, lr, "val") for lr in order for lab, pre, ov in rows for s in args.select_seeds]
        selection = run_jobs(sel_jobs, args, extra)
        chosen = select_lr(selection, grid)
        missing = [lab for lab, _, _ in rows if lab not in chosen]
        if missing:
            print(f"[compare] lr selection incomplete for {missing}: their test runs wait for it", flush=True)
        rows = [r for r in rows if r[0] in chosen]
    test_jobs = [job(lab, pre, ov, s, chosen.get(lab), "test") for s in args.seeds for lab, pre, ov in rows]
    return run_jobs(test_jobs, args, extra), selection, chosen


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", choices=sorted(TABLES), help="which table to produce")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (train.seed = rollout.seed)")
    ap.add_argument("--size", choices=sorted(SIZES), default="cpu-hard")
    ap.add_argument("--world-seed", type=int, default=0, help="seed of the world and of the warm start built on it")
    ap.add_argument("--lr-grid", default="1e-4,2e-4,4e-4",
                    help="lr grid searched per row on the validation split ('' = the size's lr for every row)")
    ap.add_argument("--select-seeds", default="100", help="seeds of the lr-selection runs")
    ap.add_argument("--token-budget", type=int, default=None, help="generated tokens per run (default: the size's)")
    ap.add_argument("--steps", type=int, default=None, help="step cap (efficiency default 3; budgeted runs: none)")
    ap.add_argument("--only", default=None, help="comma-separated row labels to run (default: all rows)")
    ap.add_argument("--set", nargs="*", default=[], help="extra KEY=VALUE overrides for every run (applied last)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (2 × --threads 1 on a 2-core machine)")
    ap.add_argument("--work-dir", default="runs/bench", help="run directories and the cached warm start")
    ap.add_argument("--out", default=None, help="results directory (default benchmarks/results/<table>/<grid>)")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild the report from the committed result files only (no run directory needed)")
    ap.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run_one:
        return run_one(Path(args.run_one))
    if not args.table:
        ap.error("--table is required")

    def ints(v: object) -> list[int]:
        return [int(x) for x in str(v).split(",") if x.strip()]

    args.seeds, args.select_seeds = ints(args.seeds), ints(args.select_seeds)
    args.lr_grid = sorted(float(x) for x in str(args.lr_grid).split(",") if x.strip())
    from compare_report import load_record, write_report

    out = results_dir(args, table_budget(args))
    if args.report_only:
        runs = [load_record(p) for p in sorted((out / "runs").glob("*.json"))]
        selection = [load_record(p) for p in sorted((out / "select").glob("*.json"))]
        chosen = select_lr(selection, args.lr_grid) if selection else {}
    else:
        runs, selection, chosen = run_grid(args)
    write_report(args.table, runs, out, command=" ".join(["python", "benchmarks/compare.py",
                                               *[a for a in (argv or sys.argv[1:]) if a != "--report-only"]]),
                 selection=selection, chosen=chosen, seeds=args.seeds)
    print(f"[compare] wrote {out}", flush=True)


if __name__ == "__main__":
    main()
