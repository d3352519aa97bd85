"""The rollout driver: independent chains (GRPO/DAPO/GSPO), random trees (Tree-GRPO) and entropy-guided trees
(AT²PO, spec Component 1), every open branch of every tree advancing together in batched phases.

A *branch* is an open trajectory waiting for its next turn. A phase generates the next turn of every open branch
in one batched engine call, classifies each turn with ``env.parse_turn``, runs all tool calls of the phase in one
``env.run_tools`` call (concurrent, with timeouts), and turns every tool call into a new branch whose context is
the old one + the sampled ids + the observation ids (token in, token out: nothing is re-tokenised).

Tree mode: M initial chains per prompt; then L rounds, each selecting K nodes per tree with
``at2po.core.expansion.select_nodes_forest`` (score s(n) = H(n) − α·|children(parent(n))|, or uniform at random)
and forking each selected node n: a new sibling of n is sampled from n's state — the context up to, not including,
n's generated tokens (so including the observation that preceded n) — and rolled out to completion. Picking the
root starts a new chain. Every branch ends in exactly one leaf, so a tree has M + L·K leaves.

Scheduling (``tree_schedule``): "lockstep" (default) runs round r of all trees after all trees finished round
r−1; with "per_tree" each tree starts its next round as soon as its own branches have all ended, and its forks join
the next phase next to other trees' branches of any round, so a tree of short trajectories does not wait for the
longest tree. Selection reads only the tree itself and each turn's random stream is keyed by (seed, tree, node),
so both schedules build the same trees; only the phase count and wall time differ.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from at2po.agent.env import AgentEnv
from at2po.config.rollout import RolloutConfig
from at2po.core.expansion import EXPANSION_MODES, select_nodes_forest
from at2po.core.tree import TurnTree, stack_trees
from at2po.rollout.aepo import run_aepo
from at2po.rollout.continuous import ContinuousRunner
from at2po.rollout.engine import Engine
from at2po.rollout.phase import Branch, PhaseRunner
from at2po.rollout.sampling import uniforms
from at2po.rollout.seeds import tree_seed, turn_seed


@dataclass
class RolloutResult:
    trees: list[TurnTree]  # one per example (tree.meta["example"]); leaves unscored: see rollout.scoring
    metrics: dict[str, float]
    phases: list[dict[str, float]] = field(default_factory=list)  # per phase: sequences, tokens, gen_s, tool_s, ...


def rollout(engine: Engine, env: AgentEnv, examples: list[Any], cfg: RolloutConfig) -> RolloutResult:
    """Roll out every example (chains or a tree each) and return the trees with the rollout's metrics.

    Leaves are not scored here: the caller scores them (``at2po.rollout.scoring.score_trees``: the env's reward
    or a user's reward function), so one rollout can be scored by any reward."""
    if not examples:
        raise ValueError("rollout: examples is empty")
    t0 = time.perf_counter()
    s0 = engine.stats().as_dict()
    trees: list[TurnTree] = []
    for i, ex in enumerate(examples):
        prompt = list(env.prompt_ids(ex))
        if not prompt:
            raise ValueError(f"rollout: env.prompt_ids returned no tokens for example {i} ({env.describe(ex)!r})")
        trees.append(TurnTree(prompt_ids=prompt, meta={"example": ex, "mode": cfg.mode, "expansion": cfg.expansion}))
    runner = (ContinuousRunner if cfg.batching == "continuous" else PhaseRunner)(engine, env, trees, cfg)
    if cfg.mode == "chain":
        runner.run([Branch(t, 0, [], "", 0, tree.prompt_ids, turn_seed(tree_seed(cfg.seed, t), 0, 0, j))
                    for t, tree in enumerate(trees) for j in range(cfg.n)])
    elif cfg.mode == "aepo":
        run_aepo(runner, trees, cfg)
    else:
        _run_trees(runner, trees, cfg)
    return RolloutResult(trees, _metrics(trees, runner, engine, s0, time.perf_counter() - t0), runner.phases)


def _run_trees(runner: PhaseRunner, trees: list[TurnTree], cfg: RolloutConfig) -> None:
    """M initial chains per tree, then L expansion rounds of K forks per tree (``cfg.tree_schedule``: each tree
    starts its next round as soon as its own branches have ended, or all trees round by round)."""
    # Tree-GRPO (random expansion): each chain from the root is its own group (tree)
    random_groups = EXPANSION_MODES.lookup(cfg.expansion).chain_groups
    next_group = [cfg.m] * len(trees)

    def forks(ts: list[int], r: int) -> list[Branch]:
        """Round ``r``: select K nodes in each tree of ``ts`` (one vectorised call) and open a branch at each.
        Random picks and exact-tie breaks use a uniform per (node stream, round), so they depend neither on the
        schedule nor on the order nodes were added (continuous batching)."""
        arrays, _, offsets = stack_trees([trees[t] for t in ts])
        streams = [
            tree_seed(cfg.seed, t) if n == 0 else node.info["seed"] for t in ts for n, node in enumerate(trees[t].nodes)
        ]
        keys = uniforms(torch.tensor(streams, dtype=torch.int64), r).numpy()  # [N]
        entropy = _same_turn_same_entropy([trees[t] for t in ts], arrays.entropy, offsets)
        picks = select_nodes_forest(
            arrays.parent, entropy, arrays.is_leaf, cfg.k, cfg.alpha, cfg.expansion, allow_leaves=cfg.expand_leaves,
            keys=keys,
        )  # [len(ts), K] node indices into the stacked forest
        out: list[Branch] = []
        for row, t in enumerate(ts):
            tree = trees[t]
            picked: dict[int, int] = {}  # forks of each node so far in this round (a node may be picked twice)
            cand = [i for i in range(1, len(tree.nodes)) if cfg.expand_leaves or tree.nodes[i].children]
            cand_h = np.array([tree.nodes[i].entropy for i in cand], dtype=np.float64)  # [C]
            for g in picks[row]:
                if g < 0:
                    continue
                n = int(g - offsets[row])
                # diagnostics: the depth of the re-sampled turn (0 = a new chain) and where the forked node's H
                # ranks among the tree's candidates (1 = the highest, 0 = the lowest)
                rank = (float((cand_h < tree.nodes[n].entropy).sum()) / max(len(cand) - 1, 1)) if n else math.nan
                tree.meta.setdefault("fork_log", []).append((tree.depth(n) if n else 0, rank))
                j = picked[n] = picked.get(n, -1) + 1
                if n == 0:  # the root: a new independent chain
                    group = next_group[t] if random_groups else 0
                    next_group[t] += random_groups
                    seed = turn_seed(tree_seed(cfg.seed, t), 1, r, j)
                    out.append(Branch(t, 0, [], "", group, tree.prompt_ids, seed, forked_from=0, round=r))
                else:
                    node = tree.nodes[n]
                    out.append(Branch(t, node.parent, node.obs_ids, node.obs_text, node.group, tree.context_ids(n),
                                      turn_seed(node.info["seed"], 1, r, j), forked_from=n, round=r))
                    node.info["forks"] = node.info.get("forks", 0) + 1
        return out

    initial = [
        Branch(t, 0, [], "", j if random_groups else 0, tree.prompt_ids, turn_seed(tree_seed(cfg.seed, t), 0, 0, j))
        for t, tree in enumerate(trees) for j in range(cfg.m)
    ]
    if cfg.tree_schedule == "lockstep":
        runner.run(initial)
        for r in range(1, cfg.l + 1):
            runner.run(forks(list(range(len(trees))), r))
        return
    done_rounds = [0] * len(trees)

    def on_idle(t: int) -> list[Branch]:
        while done_rounds[t] < cfg.l:  # a round without candidates opens nothing: go on to the next one
            done_rounds[t] += 1
            r = done_rounds[t]
            new = forks([t], r)
            if new:
                return new
        return []

    runner.run(initial, on_idle)


def _same_turn_same_entropy(trees: list[TurnTree], entropy: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``entropy`` [N] (stacked forest) with turns of identical full context (same prompt, earlier turns,
    observations and sampled tokens; e.g. two chains that opened alike) given the same H (their min).

    In exact arithmetic such turns have identical H(n); the engine's log-probs differ by float noise (~1e-5) with
    the batch layout, which would let the layout, not the tie-break key, decide between them. Different turns keep
    their own estimates. Contexts are compared as classes built top-down — a node's class is (its parent's class,
    its observation, its tokens) — so the cost is the tokens of the nodes, not of their whole contexts."""
    out = np.asarray(entropy, dtype=np.float64).copy()
    for tree, off in zip(trees, offsets[:-1], strict=True):
        cls = [0]  # per node: the class of its full context (parents come before their children)
        groups: dict[tuple, list[int]] = {}
        for i, node in enumerate(tree.nodes[1:], 1):
            members = groups.setdefault((cls[node.parent], tuple(node.obs_ids), tuple(node.gen_ids)), [])
            if not members:
                members.append(len(groups))  # the class id, stored first
            members.append(off + i)
            cls.append(members[0])
        for members in groups.values():
            idx = members[1:]
            if len(idx) > 1:
                out[idx] = out[idx].min()
    return out


# The metrics of ``_metrics`` that are totals over the rollout (they add up over several rollouts, e.g. DAPO's
# extra generation batches); the others are rates or means.
ADDITIVE_METRICS = frozenset({
    "generated_tokens", "prefill_tokens", "cached_tokens", "forks", "tool_calls", "tool_errors", "tool_fallbacks",
    "invalid_turns", "limit_hits", "turns", "leaves", "phases", "decode_steps", "kv_read", "kv_live", "evicted_tokens",
    "wall_s", "gen_s", "tool_s", "tool_wait_s",
})


def _metrics(
    trees: list[TurnTree], runner: PhaseRunner, engine: Engine, s0: dict[str, Any], wall: float
) -> dict[str, float]:
    s1 = engine.stats().as_dict()
    leaves = [(tree, i) for tree in trees for i in tree.leaves()]
    depths = np.array([tree.depth(i) for tree, i in leaves], dtype=np.float64)
    resp = np.array(
        [len(tree.context_ids(i, include_gen=True)) - len(tree.prompt_ids) for tree, i in leaves], dtype=np.float64
    )
    ends = [tree.nodes[i].end.value for tree, i in leaves]
    node_depths = [tree.depth(i) for tree in trees for i in range(1, len(tree.nodes))]
    fork_log = np.array([f for tree in trees for f in tree.meta.get("fork_log", [])], dtype=np.float64).reshape(-1, 2)
    below = fork_log[fork_log[:, 0] > 0]  # forks below the root: [F, (depth, entropy rank)]
    out = {
        "generated_tokens": float(s1["generated_tokens"] - s0["generated_tokens"]),
        "prefill_tokens": float(s1["prefill_tokens"] - s0["prefill_tokens"]),
        "cached_tokens": float(s1["cached_tokens"] - s0["cached_tokens"]),
        "tool_calls": float(runner.counts["tool_calls"]),
        "tool_errors": float(runner.counts["tool_errors"]),
        "tool_fallbacks": float(runner.counts["tool_fallbacks"]),
        "invalid_turns": float(runner.counts["invalid_turns"]),
        "limit_hits": float(runner.counts["limit_hits"]),
        "turns": float(sum(len(t.nodes) - 1 for t in trees)),
        "turns_mean": float(depths.mean()) if len(depths) else 0.0,
        "depth_mean": float(np.mean(node_depths)) if node_depths else 0.0,
        "forks": float(len(fork_log)),
        "leaves": float(len(leaves)),
        "leaves_per_tree": float(len(leaves) / len(trees)),
        "response_tokens_mean": float(resp.mean()) if len(resp) else 0.0,
        "truncated_frac": float(np.mean([e == "truncated" for e in ends])) if ends else 0.0,
        "phases": float(len(runner.phases)),
        "wall_s": wall,
        "decode_steps": float(s1["decode_steps"] - s0["decode_steps"]),
        "kv_read": float(s1["kv_read"] - s0["kv_read"]),
        "kv_live": float(s1["kv_live"] - s0["kv_live"]),
        "evicted_tokens": float(s1["evicted_tokens"] - s0["evicted_tokens"]),
        "gen_s": runner.gen_s,
        "tool_s": runner.tool_s,
        "tool_wait_s": runner.tool_wait_s,
    }
    if len(fork_log):  # rates only where there are forks (chains have none)
        out["fork_root_frac"] = float((fork_log[:, 0] == 0).mean())
    if len(below):
        out["fork_depth_mean"] = float(below[:, 0].mean())
        out["fork_entropy_rank"] = float(np.nanmean(below[:, 1]))
    return out
