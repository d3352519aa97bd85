"""AEPO's entropy-balanced rollout with the tiny real model, real BM25 and the search env: the budget, branches
as siblings after the same observation, restarts, pre-monitoring, determinism, and the engine's top-k entropy
against teacher forcing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from rollout_fixtures import QUESTIONS

from at2po.config import ConfigError, load_config
from at2po.core.branching import global_samples, step_entropy_topk
from at2po.rollout.driver import RolloutConfig, rollout
from at2po.rollout.engine import SamplingParams
from at2po.rollout.hf_engine import HFEngine
from at2po.rollout.sampling import topk_entropy


def aepo_cfg(**aepo) -> RolloutConfig:
    return RolloutConfig(mode="aepo", seed=0, max_turn_tokens=16, max_response_tokens=600,
                         aepo={"budget": 8, "initial": 3, **aepo})


def _sig(trees):
    return [[(n.parent, tuple(n.obs_ids), tuple(n.gen_ids)) for n in t.nodes] for t in trees]


def test_budget_branches_and_restarts(tiny, scripted_env):
    model, tok = tiny
    cfg = aepo_cfg(threshold=0.3)  # branch often, so every mechanism runs
    res = rollout(HFEngine(model, tok), scripted_env, QUESTIONS, cfg)
    branched = restarts = 0
    for tree in res.trees:
        assert len(tree.leaves()) == cfg.aepo.budget  # branches + restarts use the whole budget, never more
        roots = tree.nodes[0].children
        for i, n in enumerate(tree.nodes[1:], 1):
            assert n.info["topk_entropy"] > 0  # every turn reports the authors' step entropy
            if "forked_from" in n.info:  # a branch: a sibling of the continuation, after the same observation
                src = n.info["forked_from"]
                assert n.parent == src and tree.nodes[src].info.get("aepo_branches", 0) >= 1
                sibs = [tree.nodes[c] for c in tree.nodes[src].children if c != i]
                assert sibs and all(s.obs_ids == n.obs_ids for s in sibs)
                branched += 1
        restarts += len(roots) - cfg.aepo.initial
        assert len(roots) >= cfg.aepo.initial
    assert branched > 0 and restarts > 0
    again = rollout(HFEngine(model, tok), scripted_env, QUESTIONS, cfg)
    assert _sig(again.trees) == _sig(res.trees)  # every draw from the turns' own streams


def test_no_branching_above_threshold_gives_chains(tiny, scripted_env):
    model, tok = tiny
    cfg = aepo_cfg(threshold=10.0, step_entropy="sampled")  # p ≤ 1 + w·ΔH < 10: never branch
    res = rollout(HFEngine(model, tok), scripted_env, QUESTIONS[:2], cfg)
    for tree in res.trees:
        assert len(tree.nodes[0].children) == cfg.aepo.budget  # initial chains + restarts
        assert not any("forked_from" in n.info for n in tree.nodes)
        assert not any("topk_entropy" in n.info for n in tree.nodes[1:])  # sampled H(n): no top-k requested


def test_premonitor_sets_the_global_share_from_the_probe(tiny, scripted_env):
    model, tok = tiny
    eng = HFEngine(model, tok)
    cfg = aepo_cfg(premonitor=True, beta=5.0)
    res = rollout(eng, scripted_env, QUESTIONS, cfg)
    for tree in res.trees:
        probe = tree.nodes[0].children[0]  # the first chain; its later turns are the first subtree's chain
        path, n = [], probe
        while tree.nodes[n].children:
            n = tree.nodes[n].children[0]
            path.append(n)
        hs = step_entropy_topk(np.array([n.info.get("topk_entropy", 0.0) for n in tree.nodes]), eng.vocab_size)

        def h(i: int, hs=hs) -> float:
            return float(hs[i])

        h_tool = np.mean([h(i) for i in path]) if path else h(probe)
        m = global_samples(cfg.aepo.budget, np.array([h(probe)]), np.array([h_tool]), 5.0)[0]
        assert tree.meta["aepo_global"] == m and len(tree.leaves()) == cfg.aepo.budget


def test_topk_entropy_matches_teacher_forcing(tiny):
    model, tok = tiny
    eng = HFEngine(model, tok)
    ctx = tok("What is the capital of France?")["input_ids"]
    p = SamplingParams(max_new_tokens=12, temperature=0.7, seed=3, entropy_topk=5, entropy_tokens=8)
    g = eng.generate([ctx], p)[0]
    assert len(g.topk_entropy) == min(8, len(g.token_ids))
    with torch.no_grad():
        logits = model(torch.tensor([ctx + g.token_ids])).logits[0, len(ctx) - 1 : len(ctx) - 1 + 8]  # [8, V]
    ref = topk_entropy(logits, 0.7, 5)[: len(g.topk_entropy)]
    np.testing.assert_allclose(g.topk_entropy, ref.tolist(), rtol=1e-4, atol=1e-5)
    full = topk_entropy(logits, 1.0, logits.shape[-1])  # k = V: the full entropy
    lp = torch.log_softmax(logits.float(), -1)
    np.testing.assert_allclose(full, -(lp.exp() * lp).sum(-1), rtol=1e-5)
    assert math.isclose(float(topk_entropy(torch.zeros(1, 4), 1.0, 4)[0]), math.log(4), rel_tol=1e-6)


def test_config_errors():
    with pytest.raises(ConfigError, match=r"rollout.aepo.initial \(20\) exceeds rollout.aepo.budget \(16\)"):
        load_config(None, ["rollout.mode=aepo", "rollout.aepo.initial=20"])
    with pytest.raises(ConfigError, match=r"aepo branches between phases: it needs rollout\.batching=phase"):
        load_config(None, ["rollout.mode=aepo", "rollout.batching=continuous"])
