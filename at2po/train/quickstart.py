"""The embedded default (``at2po train`` with no arguments): the synthetic multi-hop world end to end on a CPU.

1. build the world (corpus, train/test questions, BM25 index, noisy expert demonstrations) — ``make_world``;
2. make a tiny model on the spot: a byte-level BPE tokenizer trained on the world's text + a small random Llama;
3. SFT warm start on the expert's demonstrations (observation tokens masked);
4. evaluate (greedy) on held-out questions, train with AT²PO (entropy-guided trees, turn credit, turn loss),
   evaluate again;
5. print before/after success, write the learning curves (PNG) and one rendered AT²PO tree.

Every setting is an ordinary config key, so ``at2po train --quickstart rollout.m=6 train.steps=40`` changes them.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from at2po.config import RunConfig, load_config

# Sized for 2 CPU cores: see BENCHMARKS.md (Quickstart) for the measured time and before/after numbers.
# The demos' observations use the same top-k and budget as the env below, so SFT sees what rollouts see.
WORLD_KNOBS: dict[str, Any] = {
    "n_train": 400, "n_test": 60, "hops": (0.0, 0.35, 0.35, 0.3), "n_people": 300, "n_companies": 60,
    "expert_noise": 0.1, "topk": 2, "max_obs_tokens": 256,
}
MODEL_ARCH: dict[str, Any] = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2
)
VOCAB_SIZE = 4096  # large enough that most made-up names are single tokens: copying them is then easy
QUICKSTART_OVERRIDES: list[str] = [
    "train.steps=100", "train.batch_prompts=8", "train.mini_batch_prompts=4", "train.micro_batch_tokens=16384",
    "optim.lr=2e-4", "optim.max_grad_norm=1.0",
    "rollout.m=4", "rollout.l=1", "rollout.k=4", "rollout.max_turn_tokens=48", "rollout.max_response_tokens=1024",
    "rollout.max_concurrent_sequences=64",
    "env.max_tool_calls=5", "env.topk=2", "env.max_obs_tokens=256",
    "sft.epochs=12", "sft.lr=3e-3", "sft.batch_rows=8",
    "eval.batch_prompts=64", "checkpoint.every=0", "logging.progress=false",
]


@dataclass
class QuickstartResult:
    before: dict[str, float]
    after: dict[str, float]
    run_dir: Path
    curves: Path | None
    tree: Path | None
    wall_s: float


def quickstart_config(out_dir: Path, world: Any, model_dir: Path, overrides: list[str]) -> RunConfig:
    base = [
        f"model.path={model_dir}", f"data.train={world.train}", f"data.test={world.test}", f"data.index={world.index}",
        f"data.sft={world.sft}", f"train.output_dir={out_dir / 'rl'}", f"sft.output_dir={out_dir / 'sft'}",
    ]
    return load_config(overrides=base + QUICKSTART_OVERRIDES + list(overrides), preset="at2po")


def _texts(world: Any) -> list[str]:
    """Tokenizer training text: the instruction, the corpus, and the expert's turns and observations."""
    from at2po.agent.protocol import INSTRUCTION

    texts = [INSTRUCTION]
    texts += [json.loads(line)["text"] for line in Path(world.corpus).read_text().splitlines() if line.strip()]
    for line in Path(world.sft).read_text().splitlines():
        for t in json.loads(line)["turns"]:
            texts.append(t["text"])
            if t.get("observation"):
                texts.append(t["observation"])
    return texts


def _interest(tree: Any) -> tuple[int, int, float]:
    """How much a tree shows: distinct leaf rewards, forks below the root, its highest turn entropy."""
    rewards = {round(float(tree.nodes[i].reward), 6) for i in tree.leaves()}
    below = sum(1 for n in tree.nodes[1:] if n.info.get("forked_from", 0))
    return len(rewards), below, max((n.entropy for n in tree.nodes[1:]), default=0.0)


def render_tree(cfg: RunConfig, model_dir: Path, out_dir: Path, candidates: int = 8) -> Path:
    """Roll out AT²PO trees on the first ``candidates`` test questions with the trained policy and write the one
    that shows most (mixed rewards first, then forks below the root, then entropy) as text and as a PNG."""
    from rich.console import Console as RichConsole

    from at2po.rollout.driver import rollout
    from at2po.rollout.render import render_png, render_text
    from at2po.rollout.scoring import score_trees
    from at2po.train.components import build_engine, build_env, load_examples, load_policy, load_tokenizer

    tok = load_tokenizer(model_dir)
    model = load_policy(cfg.model.model_copy(update={"path": str(model_dir), "lora_r": 0}), trainable=False)
    env = build_env(cfg, tok)
    res = rollout(build_engine(model, tok, cfg), env, load_examples(cfg.data.test, candidates), cfg.rollout)
    score_trees(res.trees, env, tok)
    env.close()
    tree = max(res.trees, key=_interest)  # max keeps the first of equals
    rec = RichConsole(record=True, width=140, file=io.StringIO())  # capture only
    rec.print(render_text(tree))
    (out_dir / "tree.txt").write_text(rec.export_text())
    return render_png(tree, out_dir / "tree.png", title=tree.meta["example"].question)


def run_quickstart(
    out_dir: str | Path = "runs/quickstart",
    overrides: list[str] | None = None,
    seed: int = 0,
    world_knobs: dict[str, Any] | None = None,
    arch: dict[str, Any] | None = None,
    vocab_size: int = VOCAB_SIZE,
) -> QuickstartResult:
    """Build everything under ``out_dir`` and run SFT → eval → AT²PO → eval. Returns before/after EM.

    ``overrides`` are config overrides (``train.steps=40``); ``world_knobs`` / ``arch`` update
    :data:`WORLD_KNOBS` / :data:`MODEL_ARCH` (world size, model size).
    """
    import torch

    from at2po.agent.world import make_world
    from at2po.models.tiny import build_tiny_model
    from at2po.train.logging import make_console
    from at2po.train.plot import plot_runs
    from at2po.train.sft import sft
    from at2po.train.trainer import train

    console = make_console()
    t0 = time.perf_counter()
    out = Path(out_dir)
    torch.manual_seed(seed)
    console.rule("[bold]at2po quickstart: synthetic multi-hop search world, tiny model, AT²PO on CPU")
    world = make_world(out / "world", seed=seed, **{**WORLD_KNOBS, **(world_knobs or {})})
    console.print(f"world: {world.stats['documents']} documents, train hops {world.stats['train_hops']}, "
                  f"test hops {world.stats['test_hops']} → {world.out_dir}")
    model_arch = {**MODEL_ARCH, **(arch or {})}
    model_dir = build_tiny_model(_texts(world), out / "model-init", vocab_size=vocab_size, seed=seed, **model_arch)
    cfg = quickstart_config(out, world, model_dir, overrides or [])
    console.print(f"tiny model (random Llama, {model_arch['num_hidden_layers']} layers × {model_arch['hidden_size']}, "
                  f"BPE vocab {vocab_size}) → {model_dir}")
    console.rule("SFT warm start on noisy expert demonstrations")
    sft_dir = sft(cfg)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": str(sft_dir)})})
    console.rule("AT²PO (entropy-guided tree search, turn-wise credit, turn-level loss)")
    res = train(cfg)
    before, after = res.evals.get(0, {}), res.evals.get(cfg.train.steps, {})
    curves = plot_runs([res.run_dir], out / "curves.png")
    tree = render_tree(cfg, res.final_dir, out) if res.final_dir else None
    wall = time.perf_counter() - t0
    console.rule("result")
    console.print(f"held-out EM before RL (after SFT): {before.get('em', float('nan')):.3f}   "
                  f"after AT²PO: {after.get('em', float('nan')):.3f}   (format {before.get('format_ok', 0):.2f} → "
                  f"{after.get('format_ok', 0):.2f})")
    console.print(f"curves: {curves}   tree: {tree}   total {wall / 60:.1f} min")
    (out / "summary.json").write_text(json.dumps({"before": before, "after": after, "wall_s": wall}, indent=2))
    return QuickstartResult(before, after, res.run_dir, curves, tree, wall)
