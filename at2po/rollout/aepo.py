"""AEPO's entropy-balanced rollout (``rollout.mode=aepo``; ``at2po.core.branching`` holds the equations).

Per prompt (one tree, every trajectory a root-to-leaf path, group 0), ``aepo.budget`` trajectories:

1. *Global samples*: ``aepo.initial`` chains — or, with ``aepo.premonitor``, a probe chain first, then
   m − 1 more with m = budget·σ(β·(H_root − H̄_tool)) from the probe's first-turn entropy and the mean entropy of
   its turns after a tool call (H̄_tool = H_root when it made none).
2. *Entropy-balanced branching*, after every phase: each trajectory that continues after a tool call draws, for
   each of ``beam − 1`` slots, U(0, 1) from its own random stream and opens one more continuation of the same
   state (a sibling of its next turn) when p = (U + w·(H_t − H_init))·max(0, 1 − c·l) ≥ τ, while the prompt's
   budget lasts (H_t: the tool-calling turn's step entropy; H_init: the trajectory's first turn's; l: consecutive
   phases in which this prompt branched).
3. *Restarts*: a prompt with budget left and no open trajectory starts one fresh chain (as the authors' code does,
   one at a time).

Step entropy (``aepo.step_entropy``): "topk", the authors' (Σ over the first ``entropy_tokens`` tokens of the top-
``entropy_topk`` −p·log p, / ln|V|; the engines report it with ``SamplingParams.entropy_topk``), or "sampled",
at2po's H(n). Every random number comes from a turn's stream (``rollout.seeds``), so the trees do not depend on
batching.
"""

from __future__ import annotations

import numpy as np
import torch

from at2po.config.rollout import RolloutConfig
from at2po.core.branching import branch_probability, capped_by_budget, global_samples, step_entropy_topk
from at2po.core.tree import TurnTree
from at2po.rollout.phase import Branch, PhaseRunner
from at2po.rollout.sampling import uniforms
from at2po.rollout.seeds import tree_seed, turn_seed

_BRANCH = 2  # turn_seed kind of an AEPO branch (0: chains and continuations, 1: tree-mode forks)


def _step_entropy(tree: TurnTree, n: int, cfg: RolloutConfig, vocab: int) -> float:
    node = tree.nodes[n]
    if cfg.aepo.step_entropy == "sampled":
        return float(node.entropy)
    return float(step_entropy_topk(np.array([node.info.get("topk_entropy", 0.0)]), vocab)[0])


def _first_turn(tree: TurnTree, n: int) -> int:
    while tree.nodes[n].parent > 0:
        n = tree.nodes[n].parent
    return n


def run_aepo(runner: PhaseRunner, trees: list[TurnTree], cfg: RolloutConfig) -> None:
    """Roll out every tree of ``trees`` with AEPO's entropy-balanced rollout (module docstring)."""
    a = cfg.aepo
    vocab = int(getattr(runner.engine, "vocab_size", 0) or len(runner.tokenizer))
    started = np.zeros(len(trees), dtype=np.int64)  # trajectories started per prompt (the budget's use)
    consecutive = np.zeros(len(trees), dtype=np.int64)  # l per prompt
    n_chains = np.zeros(len(trees), dtype=np.int64)  # global samples and restarts so far (their stream index)

    def chains(t: int, count: int) -> list[Branch]:
        out = []
        for _ in range(count):
            j = int(n_chains[t])
            out.append(Branch(t, 0, [], "", 0, trees[t].prompt_ids, turn_seed(tree_seed(cfg.seed, t), 0, 0, j)))
            n_chains[t] += 1
            started[t] += 1
        return out

    def on_phase(opened: list[Branch]) -> list[Branch]:
        if not opened or a.beam < 2:
            consecutive[:] = 0
            return []
        slots = a.beam - 1
        cand = [b for b in opened for _ in range(slots)]  # [B·(beam−1)] candidate branches, in order
        prompt = np.array([b.tree for b in cand], dtype=np.int64)
        slot = np.tile(np.arange(slots), len(opened))
        u = uniforms(torch.tensor([b.seed for b in cand], dtype=torch.int64), torch.as_tensor(slot)).numpy()
        h_t = np.array([_step_entropy(trees[b.tree], b.parent, cfg, vocab) for b in cand])
        h_init = np.array([_step_entropy(trees[b.tree], _first_turn(trees[b.tree], b.parent), cfg, vocab)
                           for b in cand])
        p = branch_probability(u, h_t, h_init, consecutive[prompt], a.entropy_weight, a.consecutive_penalty)
        take = capped_by_budget(prompt, p >= a.threshold, a.budget - started)
        new = []
        for b, j, keep in zip(cand, slot, take, strict=True):
            if keep:
                node = trees[b.tree].nodes[b.parent]
                new.append(Branch(b.tree, b.parent, list(b.obs_ids), b.obs_text, b.group, list(b.context),
                                  turn_seed(node.info["seed"], _BRANCH, 0, int(j)), forked_from=b.parent))
                node.info["aepo_branches"] = node.info.get("aepo_branches", 0) + 1
        branched = np.bincount(prompt[take], minlength=len(trees)) > 0
        np.add.at(started, prompt[take], 1)
        consecutive[:] = np.where(branched, consecutive + 1, 0)  # a phase without a branch ends the run of l
        return new

    def on_idle(t: int) -> list[Branch]:  # budget left and nothing open: one fresh sample
        return chains(t, 1) if started[t] < a.budget else []

    ts = range(len(trees))
    if a.premonitor:
        runner.run([b for t in ts for b in chains(t, 1)])  # the probes (one global sample each)
        h_root, h_tool = np.zeros(len(trees)), np.zeros(len(trees))
        for t, tree in enumerate(trees):
            first = tree.nodes[0].children[0]
            path = [n for n in range(1, len(tree.nodes)) if n != first]  # the probe's later turns
            h_root[t] = _step_entropy(tree, first, cfg, vocab)
            hs = [_step_entropy(tree, n, cfg, vocab) for n in path]
            h_tool[t] = float(np.mean(hs)) if hs else h_root[t]
        m = global_samples(a.budget, h_root, h_tool, a.beta)
        for t, tree in enumerate(trees):
            tree.meta["aepo_global"] = int(m[t])
        # a prompt whose probe took the whole global share and made no branch yet restarts (its budget is unused)
        initial = [b for t in ts for b in chains(t, max(int(m[t]) - 1, int(started[t] < a.budget)))]
    else:
        initial = [b for t in ts for b in chains(t, a.initial)]
    runner.run(initial, on_idle=on_idle, on_phase=on_phase)
