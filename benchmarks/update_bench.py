"""Training-step benchmark: old log-probs + one PPO update, tree-packed vs flat rows, on the same batches.

    python benchmarks/update_bench.py [--cases deep-tree22,deep-chain16,wiki-tree8,wiki-tree22] [--reps 3]
        [--work-dir runs/bench] [--threads 2]

Cases (each batch is rolled out once by the HF engine and cached under ``--work-dir/update_bench``):

* ``deep-tree22``: benchmarks/compare.py's cpu-deep warm start (1- to 4-hop world), 8 prompts × the paper's tree
  shape M=10, L=2, K=6 (22 leaves), the ``at2po`` preset (turn loss);
* ``deep-chain16``: the same policy and prompts, 16 chains each, the ``grpo`` preset (token loss, KL 0.001);
* ``wiki-tree8``: SmolLM2-135M-Instruct (LoRA) after its protocol SFT on the Wikipedia task,
  ``configs/tasks/wiki-smollm2.yaml`` as it is (4 prompts × 8 leaves);
* ``wiki-tree22``: the same, 2 prompts × 22-leaf trees.

Variants, each in a fresh subprocess per repetition (so each has its own peak memory), interleaved repetition by
repetition: ``flat`` = padded rows and the full ``[B, T, V]`` logits (the trainer before tree packing:
``train.packing=rows train.logprob_chunk_tokens=0``); ``rows+chunk`` = padded rows, LM head only on response tokens
(info: the LM head's share of the gain); ``packed`` = the default (trie packing + chunked head). Peak memory is the
growth of the process's resident set during the timed section (``VmHWM`` reset just before it, minus the RSS then:
model, optimizer and interpreter are the same for all variants), medians over repetitions. Every variant must
produce the same old log-probs and the same updated weights (checked, to 1e-4 relative).

Ends with one ``ratio.<name>=<value>`` line per ratio and ``info.*`` lines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS: dict[str, list[str]] = {
    "flat": ["train.packing=rows", "train.logprob_chunk_tokens=0"],
    "rows+chunk": ["train.packing=rows"],
    "packed": ["train.packing=tree"],
}


def case_spec(name: str, work: Path) -> dict[str, Any]:
    """Config (file, preset, overrides) and prompt count of a case."""
    if name.startswith("deep-"):
        from compare import SIZES, build_shared, run_overrides

        size = SIZES["cpu-deep"]
        shared = build_shared("cpu-deep", work)
        preset = "at2po" if name == "deep-tree22" else "grpo"
        ov = run_overrides(size, shared, preset, seed=0, budget=None, steps=1, out_dir=work / "update_bench" / name)
        ov += ["rollout.m=10", "rollout.l=2", "rollout.k=6", "rollout.n=16", "train.batch_prompts=8",
               "train.mini_batch_prompts=4", "rollout.max_concurrent_sequences=256"]
        return {"config": None, "preset": preset, "overrides": ov}
    from compare import WIKI_CONFIG, build_shared_wiki

    shared = build_shared_wiki()
    ov = [f"model.path={shared['sft_model']}", f"train.output_dir={work / 'update_bench' / name}", "data.test=null",
          "logging.progress=false", "logging.tensorboard=false"]
    if name == "wiki-tree22":
        ov += ["rollout.m=10", "rollout.l=2", "rollout.k=6", "train.batch_prompts=2", "train.mini_batch_prompts=1",
               "rollout.max_concurrent_sequences=64"]
    return {"config": str(WIKI_CONFIG), "preset": None, "overrides": ov}


def make_batch(name: str, work: Path, threads: int) -> Path:
    """Roll the case's prompts out once (HF engine, credit assigned) and cache the batch."""
    import numpy as np
    import torch

    path = work / "update_bench" / f"{name}.pt"
    if path.is_file():
        return path
    from accelerate.utils import set_seed

    from at2po.config import load_config
    from at2po.train.components import build_engine, build_env, load_examples, load_policy, load_tokenizer
    from at2po.train.experience import build_batch, collect

    torch.set_num_threads(threads)
    spec = case_spec(name, work)
    cfg = load_config(spec["config"], spec["overrides"], spec["preset"])
    set_seed(0)
    tok = load_tokenizer(cfg.model.tokenizer or cfg.model.path)
    policy = load_policy(cfg.model)
    engine, env = build_engine(policy, tok, cfg), build_env(cfg, tok)
    examples = load_examples(cfg.data.train, None)
    t0 = time.perf_counter()
    try:
        trees, roll, _ = collect(engine, env, lambda k: examples[:k], cfg.train.batch_prompts, cfg, seed=0)
    finally:
        env.close()
    batch, row_tree, metrics = build_batch(trees, cfg, int(tok.pad_token_id))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"batch": asdict(batch), "row_tree": np.asarray(row_tree), "metrics": metrics, "rollout": roll,
                "spec": spec, "rollout_s": time.perf_counter() - t0}, path)
    print(f"[{name}] rolled out {len(batch)} rows in {time.perf_counter() - t0:.0f}s", flush=True)
    return path


def child(args: argparse.Namespace) -> None:
    """One variant, one repetition: old log-probs + one PPO update on the cached batch; prints one JSON line."""
    import numpy as np
    import torch
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from at2po.config import load_config
    from at2po.train.batching import Batch
    from at2po.train.components import load_policy
    from at2po.train.memory import peak_rss_kb, reset_peak_rss
    from at2po.train.trainer import make_accelerator
    from at2po.train.update import compute_log_probs, forward_spec, ppo_update

    torch.set_num_threads(args.threads)
    data = torch.load(args.child_batch, weights_only=False)
    spec = data["spec"]
    cfg = load_config(spec["config"], spec["overrides"] + VARIANTS[args.child_variant] + args.set, spec["preset"])
    batch = Batch(**data["batch"])
    acc = make_accelerator(cfg.train.precision)
    set_seed(cfg.train.seed)
    model = load_policy(cfg.model)
    ref_model = load_policy(cfg.model, trainable=False) if cfg.loss.kl_coef > 0 else None
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
    sched = get_scheduler("constant", opt)
    model, opt = acc.prepare(model, opt)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters() if p.requires_grad])
    rss0 = _read_rss_kb()
    reset_peak_rss()
    t0 = time.perf_counter()
    batch.old_log_prob = compute_log_probs(model, batch, cfg.train.micro_batch_tokens, cfg.rollout.temperature,
                                           acc.device, acc.autocast, forward_spec(cfg.train))
    if ref_model is not None:  # as the trainer does when KL is on (GRPO): one more forward, with the reference
        batch.ref_log_prob = compute_log_probs(ref_model, batch, cfg.train.micro_batch_tokens, cfg.rollout.temperature,
                                               acc.device, acc.autocast, forward_spec(cfg.train))
    t1 = time.perf_counter()
    stats = ppo_update(acc, model, opt, sched, batch, data["row_tree"], cfg, np.random.default_rng([0, 1, 0]), 0)
    t2 = time.perf_counter()
    peak = peak_rss_kb() or 0
    after = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])
    m = batch.response_mask
    print(json.dumps({
        "old_s": t1 - t0, "update_s": t2 - t1, "total_s": t2 - t0, "peak_gb": peak / 2**20,
        "delta_gb": (peak - rss0) / 2**20, "forward_tokens": stats.forward_tokens, "updates": stats.updates,
        "old_sum": float((batch.old_log_prob * m).sum()), "moved": float((after - before).norm()),
    }), flush=True)
    torch.save(after - before, Path(args.child_batch).with_suffix(f".{args.child_variant}.delta.pt"))


def _read_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run_variant(batch: Path, variant: str, threads: int, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child-batch", str(batch), "--child-variant", variant, "--threads", str(threads),
           *(f"--set={x}" for x in extra)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{batch.name} / {variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="deep-tree22,deep-chain16,wiki-tree8,wiki-tree22")
    ap.add_argument("--variants", default="flat,rows+chunk,packed")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--work-dir", type=Path, default=Path("runs/bench"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every variant (e.g. train.micro_batch_tokens=8192); repeatable")
    ap.add_argument("--child-batch", help=argparse.SUPPRESS)
    ap.add_argument("--child-variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_batch:
        child(args)
        return
    import torch

    cases = args.cases.split(",")
    variants = args.variants.split(",")
    batches = {c: make_batch(c, args.work_dir.resolve(), args.threads) for c in cases}
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rep in range(args.reps):
        for c in cases:
            for v in variants:
                r = run_variant(batches[c], v, args.threads, args.set)
                results.setdefault((c, v), []).append(r)
                print(f"  rep {rep} {c:>13} {v:>10}: old {r['old_s']:6.1f}s update {r['update_s']:6.1f}s "
                      f"peak +{r['delta_gb']:.2f} GB", flush=True)
    med = {k: {f: median(x[f] for x in rs) for f in ("old_s", "update_s", "total_s", "peak_gb", "delta_gb")}
           | {"forward_tokens": rs[0]["forward_tokens"], "old_sum": rs[0]["old_sum"], "moved": rs[0]["moved"]}
           for k, rs in results.items()}
    print(f"\n{'case':>13} {'variant':>10} {'old s':>7} {'update s':>9} {'total s':>8} {'peak GB':>8} {'+GB':>6} "
          f"{'fwd tokens':>11}")
    for (c, v), r in med.items():
        print(f"{c:>13} {v:>10} {r['old_s']:7.1f} {r['update_s']:9.1f} {r['total_s']:8.1f} {r['peak_gb']:8.2f} "
              f"{r['delta_gb']:6.2f} {r['forward_tokens']:11.0f}")
    ratio_names = {"deep-tree22": "", "deep-chain16": "_chains", "wiki-tree8": "_wiki8", "wiki-tree22": "_wiki22"}
    for c in cases:
        data = torch.load(batches[c], weights_only=False)
        m = data["metrics"]
        print(f"info.tree_token_ratio{ratio_names[c]}={m['batch/tree_token_ratio']:.3f}  # {c}: {m['batch/rows']:.0f} "
              f"rows, {m['batch/tokens']:.0f} row tokens, {m['batch/response_tokens']:.0f} response tokens")
        ref = torch.load(batches[c].with_suffix(".flat.delta.pt")) if "flat" in variants else None
        for v in variants:
            if ref is not None and v != "flat":
                d = torch.load(batches[c].with_suffix(f".{v}.delta.pt"))
                rel = float((d - ref).norm() / ref.norm().clamp(min=1e-30))
                old_rel = abs(med[(c, v)]["old_sum"] - med[(c, "flat")]["old_sum"]) / abs(med[(c, "flat")]["old_sum"])
                print(f"info.same_result{ratio_names[c]}_{v}=update {rel:.2e}, old log-probs {old_rel:.2e}  # relative "
                      f"difference to flat")
    for c in cases:
        if "flat" not in variants or "packed" not in variants:
            break
        p, f = med[(c, "packed")], med[(c, "flat")]
        print(f"ratio.packed_over_flat_update_time{ratio_names[c]}={p['total_s'] / f['total_s']:.3f}")
        print(f"ratio.packed_over_flat_peak_mem{ratio_names[c]}={p['delta_gb'] / f['delta_gb']:.3f}")
        if "rows+chunk" in variants:
            r = med[(c, "rows+chunk")]
            print(f"info.rows_chunk_over_flat_time{ratio_names[c]}={r['total_s'] / f['total_s']:.3f}  # the chunked "
                  f"LM head alone")
            print(f"info.rows_chunk_over_flat_peak_mem{ratio_names[c]}={r['delta_gb'] / f['delta_gb']:.3f}")


if __name__ == "__main__":
    main()
