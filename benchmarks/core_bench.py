"""Speed of the core kernels, as side-by-side ratios measured in one run.

1. Policy loss forward+backward on B rows × T tokens with ~6 turns per row: ``turn`` (ATPO) vs ``token``
   (GRPO) vs ``sequence`` (GSPO), same inputs, same metrics. Target: turn ≤ 1.5× token.
2. Credit assignment (``estimate("at2po", ...)`` and the other estimators) for 64 trees × 22 leaves in array
   form (M=10 chains + L·K = 2·6 forks), against one forward of a SmolLM2-135M-sized random
   LlamaForCausalLM over one ~1,000-token trajectory. Target: credit ≪ forward.

Usage: ``python benchmarks/core_bench.py [--threads 1] [--reps 7] [--device cpu] [--skip-model]``. Prints
medians (losses are timed round-robin so machine load hits all three alike; the turn/token ratio is the
median of per-round ratios); the last two lines are ``ratio.turn_over_token_loss=<x>`` and
``credit_ms_64x22=<ms>``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from at2po.core.credit import estimate
from at2po.core.losses import policy_loss
from at2po.core.tree import TreeArrays


def median_ms(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def make_batch(b: int, t: int, turns: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows shaped like agent trajectories: prompt, then `turns` turns of observation + generated tokens."""
    g = torch.Generator().manual_seed(seed)
    prompt = t // 16
    pos = torch.arange(t).expand(b, t)
    # turn boundaries: random cut points after the prompt, sorted per row
    cuts = torch.sort(torch.randint(prompt, t, (b, turns - 1), generator=g), dim=1).values  # [B, turns-1]
    turn_ids = (pos[:, :, None] >= cuts[:, None, :]).sum(-1)  # [B, T] 0..turns-1
    turn_ids = torch.where(pos < prompt, torch.full_like(turn_ids, -1), turn_ids)
    # the first ~20% of each turn is observation (masked); generated tokens after it
    start = torch.cat([torch.full((b, 1), prompt), cuts], dim=1).gather(1, turn_ids.clamp(min=0))  # [B, T]
    obs = (pos - start) < 0.2 * (t - prompt) / turns
    mask = (turn_ids >= 0) & ~obs
    old = -torch.rand(b, t, generator=g) * 3.0
    lp = (old + 0.01 * torch.randn(b, t, generator=g)).requires_grad_(True)
    adv = torch.randn(b, turns, generator=g).gather(1, turn_ids.clamp(min=0))  # one advantage per turn
    return {"log_prob": lp, "old_log_prob": old, "advantages": adv, "response_mask": mask.float(), "turn_ids": turn_ids}


def bench_losses(b: int, t: int, turns: int, reps: int, device: str = "cpu") -> tuple[dict[str, float], float]:
    """Median fwd+bwd ms per loss, measured round-robin (token, sequence, turn, token, ...) so that load
    changes on a shared machine hit all three alike; also the median of the per-round turn/token ratios."""
    batch = {k: v.to(device) for k, v in make_batch(b, t, turns).items()}
    batch["log_prob"] = batch["log_prob"].detach().requires_grad_(True)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step(name: str) -> float:
        batch["log_prob"].grad = None
        sync()
        t0 = time.perf_counter()
        loss, _ = policy_loss(name, **batch)
        loss.backward()
        sync()
        return (time.perf_counter() - t0) * 1e3

    names = ("token", "sequence", "turn")
    for name in names:  # warm-up
        step(name)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(reps):
        for name in names:
            times[name].append(step(name))
    ratio = statistics.median(tu / tk for tu, tk in zip(times["turn"], times["token"], strict=True))
    return {n: statistics.median(v) for n, v in times.items()}, ratio


def _chain(par: list[int], frm: int, length: int) -> None:
    """Append a chain of ``length`` nodes under node ``frm`` to the parent list ``par``."""
    p = frm
    for _ in range(length):
        par.append(p)
        p = len(par) - 1


def random_forest(
    n_trees: int, m: int = 10, rounds: int = 2, k: int = 6, max_turns: int = 5, seed: int = 0
) -> tuple[TreeArrays, np.ndarray]:
    """Trees shaped like AT²PO rollouts: M chains from the root, then L = ``rounds`` rounds of K forks at random nodes.

    A fork of node n adds a sibling chain under parent(n) of random length; every chain ends in a leaf.
    Built in plain Python (setup, not timed); the result is the stacked array form.
    """
    rng = np.random.default_rng(seed)
    parents, ents, rewards, tidx = [], [], [], []
    for tree in range(n_trees):
        par = [-1]
        for _ in range(m):
            _chain(par, 0, int(rng.integers(1, max_turns + 1)))
        for _ in range(rounds):
            internal = [i for i in range(len(par)) if i == 0 or i in set(par[1:])]
            for n in rng.choice(internal, size=k):
                frm = 0 if n == 0 else par[n]
                _chain(par, frm, int(rng.integers(1, max_turns + 1)))
        par_a = np.array(par)
        is_leaf = np.ones(len(par), bool)
        is_leaf[par_a[par_a >= 0]] = False
        is_leaf[0] = False
        off = sum(len(x) for x in parents)
        parents.append(np.where(par_a >= 0, par_a + off, -1))
        ents.append(np.where(par_a >= 0, rng.gamma(2.0, 0.3, len(par)), 0.0))
        rewards.append(np.where(is_leaf, rng.integers(0, 2, len(par)).astype(float), np.nan))
        tidx.append(np.full(len(par), tree))
    parent = np.concatenate(parents)
    is_leaf = np.ones(parent.size, bool)
    is_leaf[parent[parent >= 0]] = False
    is_leaf[parent < 0] = False
    arrays = TreeArrays(
        parent=parent,
        entropy=np.concatenate(ents),
        reward=np.concatenate(rewards),
        is_leaf=is_leaf,
        group=np.zeros(parent.size, dtype=np.int64),
    )
    return arrays, np.concatenate(tidx)


def bench_model_forward(tokens: int, reps: int) -> float:
    """One forward of a random SmolLM2-135M-shaped LlamaForCausalLM over `tokens` tokens (no grad)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, tokens))
    with torch.no_grad():
        return median_ms(lambda: model(input_ids=ids), reps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 on a shared machine)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--trees", type=int, default=64)
    ap.add_argument("--model-tokens", type=int, default=1000)
    ap.add_argument("--device", default="cpu", help="device for the loss benchmark (cpu, cuda)")
    ap.add_argument("--skip-model", action="store_true", help="skip the 135M-model forward")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, reps={args.reps} (medians)")

    losses, ratio = bench_losses(args.rows, args.tokens, args.turns, args.reps, args.device)
    for name, ms in losses.items():
        print(f"loss.{name}.fwd_bwd_ms={ms:.1f}  ({args.rows}x{args.tokens}, ~{args.turns} turns/row, {args.device})")
    print(f"ratio.sequence_over_token_loss={losses['sequence'] / losses['token']:.3f}")

    arrays, tidx = random_forest(args.trees)
    n_leaves = int(arrays.is_leaf.sum())
    print(f"forest: {args.trees} trees, {arrays.parent.size} nodes, {n_leaves} leaves")
    credit = {}
    estimators = (("grpo", {}), ("tree_grpo", {}), ("at2po", {}),
                  ("at2po", {"value_mode": "leaf_mean", "adv_mode": "td+global"}))
    for name, opts in estimators:
        key = name + ("" if not opts else "[" + ",".join(f"{v}" for v in opts.values()) + "]")
        credit[key] = median_ms(partial(estimate, name, arrays, tidx, **opts), max(args.reps, 20))
        print(f"credit.{key}_ms={credit[key]:.3f}")
    credit_ms = credit["at2po"]

    if not args.skip_model:
        fwd = bench_model_forward(args.model_tokens, max(3, args.reps // 2))
        print(f"model135m.forward_{args.model_tokens}tok_ms={fwd:.1f}")
        print(f"ratio.credit_over_135m_forward={credit_ms / fwd:.5f}")
    print(f"ratio.turn_over_token_loss={ratio:.3f}")
    print(f"credit_ms_64x22={credit_ms:.3f}")


if __name__ == "__main__":
    main()
