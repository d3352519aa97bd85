"""Rollout driver: chain / random-tree / entropy-tree topology, expansion choice, prefix reuse, tool failures,
call limits, truncation and determinism — tiny real model, real BM25, the real SearchEnv."""

from __future__ import annotations

import time

import numpy as np
import pytest
from rollout_fixtures import DOCS, QUESTIONS, ScriptedCallEnv

from at2po.agent.retrievers.base import Passage, RetrieverError
from at2po.agent.retrievers.bm25 import BM25Retriever
from at2po.agent.search_env import EnvConfig, SearchEnv
from at2po.core.expansion import expansion_scores
from at2po.core.tree import TurnEnd, TurnTree
from at2po.rollout.driver import ADDITIVE_METRICS, RolloutConfig, rollout
from at2po.rollout.engine import SamplingParams
from at2po.rollout.hf_engine import HFEngine
from at2po.rollout.scoring import leaf_metrics, score_trees

FAST = dict(max_turn_tokens=16, max_response_tokens=600)


def tree_cfg(**kw) -> RolloutConfig:
    return RolloutConfig(**{**dict(mode="tree", m=3, l=2, k=2, seed=0), **FAST, **kw})


def signature(trees: list[TurnTree]) -> list[list[tuple]]:
    return [[(n.parent, tuple(n.obs_ids), tuple(n.gen_ids), n.end) for n in t.nodes] for t in trees]


def check_tree(tree: TurnTree, leaves: int) -> None:
    assert len(tree.leaves()) == leaves
    for i, n in enumerate(tree.nodes[1:], 1):
        assert 0 <= n.parent < i and i in tree.nodes[n.parent].children
        assert len(n.gen_ids) == len(n.gen_logprobs) >= 1
        if n.children:  # internal turns are tool calls followed by their observation
            assert n.end == TurnEnd.TOOL_CALL
            assert all(tree.nodes[c].obs_ids for c in n.children)
        else:
            assert n.end in (TurnEnd.ANSWER, TurnEnd.TRUNCATED, TurnEnd.ERROR)
            # the rollout does not score: the trainer step does (at2po.rollout.scoring)
            assert np.isnan(n.reward) and "metrics" not in n.info


def test_entropy_tree_has_m_plus_lk_leaves(tiny, scripted_env):
    model, tok = tiny
    cfg = tree_cfg()
    res = rollout(HFEngine(model, tok), scripted_env, QUESTIONS, cfg)
    assert len(res.trees) == len(QUESTIONS)
    for tree, ex in zip(res.trees, QUESTIONS, strict=True):
        check_tree(tree, cfg.m + cfg.l * cfg.k)
        assert tree.meta["example"] is ex
        forks = [n for n in tree.nodes if "forked_from" in n.info]
        assert len(forks) == cfg.l * cfg.k
        for n in forks:  # a fork is a sibling of the node it forks, after the same observation
            src = n.info["forked_from"]
            if src != 0:
                assert n.parent == tree.nodes[src].parent and n.obs_ids == tree.nodes[src].obs_ids
    m = res.metrics
    assert ADDITIVE_METRICS <= set(m)  # the totals summed over DAPO's extra batches are all reported
    assert m["leaves"] == len(QUESTIONS) * (cfg.m + cfg.l * cfg.k)
    assert m["forks"] == len(QUESTIONS) * cfg.l * cfg.k and 0 <= m["fork_root_frac"] <= 1
    assert m["tool_calls"] > 0 and m["generated_tokens"] > 0 and m["turns_mean"] > 1
    assert m["prefill_tokens"] + m["cached_tokens"] > m["prefill_tokens"] > 0


def test_entropy_selection_forks_the_top_scoring_nodes(tiny, scripted_env):
    model, tok = tiny
    cfg = tree_cfg(m=5, l=1, k=3)
    res = rollout(HFEngine(model, tok), scripted_env, QUESTIONS, cfg)
    assert sum(len(t.nodes) for t in res.trees) > 3 * (cfg.m + cfg.k + 1)  # multi-turn trees: a real choice
    for tree in res.trees:
        n0 = min(i for i, n in enumerate(tree.nodes) if n.info.get("round") == 1)  # round-0 nodes come first
        sub = TurnTree.from_arrays(
            np.array([n.parent for n in tree.nodes[:n0]]), np.array([0.0] + [n.entropy for n in tree.nodes[1:n0]])
        )
        a = sub.to_arrays()
        s = expansion_scores(a.parent, a.entropy, cfg.alpha)
        cand = np.flatnonzero(~a.is_leaf)
        ranked = cand[np.argsort(-s[cand], kind="stable")]
        top = ranked[np.arange(cfg.k) % len(ranked)]  # fewer candidates than K: the ranking repeats
        picked = sorted(n.info["forked_from"] for n in tree.nodes[n0:] if "forked_from" in n.info)
        assert picked == sorted(top.tolist())
        assert all(s[p] >= s[c] - 1e-12 for p in picked for c in cand if c not in picked)
        # the fork diagnostics: the re-sampled turn's depth, and its entropy's rank among the non-root candidates
        log = tree.meta["fork_log"]
        assert sorted(d for d, _ in log) == sorted(tree.depth(p) if p else 0 for p in picked)
        h = {i: tree.nodes[i].entropy for i in cand if i}
        want = sorted(sum(v < h[p] for v in h.values()) / max(len(h) - 1, 1) for p in picked if p)
        assert sorted(r for d, r in log if d) == pytest.approx(want)


def canonical(trees: list[TurnTree]) -> list[list[tuple]]:
    """Trees up to node order: each turn by its random stream, ids and end (continuous batching adds nodes in
    the order turns end, not in phase order)."""
    return [sorted((n.info["seed"], tuple(n.obs_ids), tuple(n.gen_ids), n.end) for n in t.nodes[1:]) for t in trees]


def test_per_tree_schedule_builds_the_same_trees_in_fewer_phases(tiny, scripted_env):
    """Each turn's random stream is keyed by its place in the tree, so both schedules must build exactly the same
    trees (selection reads only the tree); a tree that finishes early starts its next round at once."""
    model, tok = tiny
    per = rollout(HFEngine(model, tok), scripted_env, QUESTIONS, tree_cfg(tree_schedule="per_tree", seed=3))
    lock = rollout(HFEngine(model, tok), scripted_env, QUESTIONS, tree_cfg(tree_schedule="lockstep", seed=3))
    assert signature(per.trees) == signature(lock.trees)
    for a in per.trees:
        check_tree(a, 3 + 2 * 2)
        rounds = [n.info["round"] for n in a.nodes[1:]]
        assert rounds == sorted(rounds)  # a tree's round r starts only after all its round r−1 branches ended
    assert per.metrics["generated_tokens"] == lock.metrics["generated_tokens"]
    depth = [max(t.depth(i) for i in t.leaves()) for t in per.trees]
    assert len(set(depth)) > 1  # trees of different depths: the case per-tree rounds are for
    assert per.metrics["phases"] < lock.metrics["phases"]
    assert any(len({n.info["round"] for t in per.trees for n in t.nodes[1:] if n.info.get("phase") == p}) > 1
               for p in range(int(per.metrics["phases"])))  # some phase mixes rounds of different trees
    # random expansion (Tree-GRPO): picks come from a stream per (seed, round, tree), so the same holds
    per_r = rollout(
        HFEngine(model, tok), scripted_env, QUESTIONS, tree_cfg(tree_schedule="per_tree", expansion="random")
    )
    lock_r = rollout(HFEngine(model, tok), scripted_env, QUESTIONS, tree_cfg(expansion="random"))
    assert signature(per_r.trees) == signature(lock_r.trees) != signature(per.trees)


@pytest.mark.parametrize("schedule", ["lockstep", "per_tree"])
@pytest.mark.parametrize("expansion", ["entropy", "random"])
def test_continuous_batching_builds_the_same_trees_in_fewer_decode_steps(tiny, scripted_env, schedule, expansion):
    """No phase barrier: a turn starts as soon as its tool returned, yet every turn samples the same tokens (its
    stream is keyed by its place in the tree), so the trees equal phase batching's up to node order."""
    model, tok = tiny
    cfg = tree_cfg(seed=3, tree_schedule=schedule, expansion=expansion)
    phase = rollout(HFEngine(model, tok), scripted_env, QUESTIONS, cfg)
    # synchronous tools: the batch layout does not depend on thread timing, so neither does any float
    cont = rollout(HFEngine(model, tok), scripted_env, QUESTIONS,
                   cfg.model_copy(update={"batching": "continuous", "async_tools": False}))
    assert canonical(cont.trees) == canonical(phase.trees)
    assert signature(cont.trees) != signature(phase.trees)  # nodes were added as turns ended, not phase by phase
    for t in cont.trees:
        check_tree(t, 3 + 2 * 2)
        assert [n.info["round"] for n in t.nodes[1:]] == sorted(n.info["round"] for n in t.nodes[1:])
    for key in ("generated_tokens", "tool_calls", "leaves"):
        assert cont.metrics[key] == phase.metrics[key]
    for r in (cont, phase):
        score_trees(r.trees, scripted_env, tok)
    assert leaf_metrics(cont.trees) == leaf_metrics(phase.trees)
    assert cont.metrics["phases"] == 0 and phase.metrics["phases"] > 0
    assert cont.metrics["decode_steps"] < 0.8 * phase.metrics["decode_steps"]
    # a tool's latency no longer stalls a whole phase but it still counts
    assert cont.metrics["tool_s"] > 0 and cont.metrics["gen_s"] > 0


def test_continuous_chains_match_phase_chains(tiny, scripted_env):
    model, tok = tiny
    cfg = RolloutConfig(mode="chain", n=4, seed=1, **FAST)
    phase = rollout(HFEngine(model, tok), scripted_env, QUESTIONS, cfg)
    cont = rollout(HFEngine(model, tok, max_batch_sequences=5), scripted_env, QUESTIONS,  # batch bound < chains
                   cfg.model_copy(update={"batching": "continuous", "async_tools": False}))
    assert canonical(cont.trees) == canonical(phase.trees)
    assert cont.metrics["decode_steps"] > 0


def test_random_expansion_groups_and_chain_mode(tiny, scripted_env):
    model, tok = tiny
    res = rollout(HFEngine(model, tok), scripted_env, QUESTIONS[:2], tree_cfg(expansion="random"))
    for tree in res.trees:
        firsts = [c for c in tree.root.children if "forked_from" not in tree.nodes[c].info]
        assert [tree.nodes[c].group for c in firsts] == [0, 1, 2]  # each initial chain its own Tree-GRPO group
        for n in tree.nodes[1:]:
            if n.parent != 0:
                assert n.group == tree.nodes[n.parent].group
    chains = rollout(HFEngine(model, tok), scripted_env, QUESTIONS[:2], RolloutConfig(mode="chain", n=5, **FAST))
    for tree in chains.trees:
        check_tree(tree, 5)
        assert len(tree.root.children) == 5
        assert all(len(n.children) <= 1 for n in tree.nodes[1:])  # independent single paths


def test_fork_prefill_is_much_smaller_than_context(tiny, scripted_env):
    model, tok = tiny
    eng = HFEngine(model, tok)
    res = rollout(eng, scripted_env, QUESTIONS, tree_cfg(l=0))
    tree = res.trees[0]
    deep = max(range(1, len(tree.nodes)), key=tree.depth)
    ctx = tree.context_ids(deep)  # the state a fork of `deep` samples from
    eng.reset_stats()
    eng.generate([ctx], SamplingParams(max_new_tokens=4, seed=0))
    assert len(ctx) > 100 and eng.stats().prefill_tokens <= 2 and eng.stats().cached_tokens >= len(ctx) - 2
    # whole trees: the same rollout without prefix reuse prefills several times more
    with_reuse = rollout(HFEngine(model, tok), scripted_env, QUESTIONS, tree_cfg()).metrics
    without = rollout(HFEngine(model, tok, prefix_cache=False), scripted_env, QUESTIONS, tree_cfg()).metrics
    assert with_reuse["generated_tokens"] == without["generated_tokens"]
    assert with_reuse["prefill_tokens"] < 0.5 * without["prefill_tokens"]


def test_tiny_cache_byte_budget_still_finishes_and_reports_evictions(tiny, scripted_env):
    """Byte budgets become token bounds through the model's key/value size; a prefix cache far too small for a
    tree's sequences evicts (counted), continuations re-prefill, and the rollout samples exactly the same trees."""
    from at2po.rollout.hf_engine import kv_bytes_per_token

    model, tok = tiny
    per_token = kv_bytes_per_token(model)
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert per_token == 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 4
    small = HFEngine(model, tok, cache_memory_bytes=60 * per_token, batch_memory_bytes=200 * per_token)
    assert small.cache.max_tokens == 60 and small.max_batch_tokens == 200
    tight = rollout(small, scripted_env, QUESTIONS, tree_cfg())
    roomy = rollout(HFEngine(model, tok), scripted_env, QUESTIONS, tree_cfg())
    assert tight.metrics["evicted_tokens"] > 0 and roomy.metrics["evicted_tokens"] == 0
    assert tight.metrics["prefill_tokens"] > roomy.metrics["prefill_tokens"]
    assert signature(tight.trees) == signature(roomy.trees)
    for tree in tight.trees:
        check_tree(tree, 3 + 2 * 2)


class FlakyRetriever(BM25Retriever):
    """BM25 that raises on Paris queries and hangs on Rome queries."""

    def batch_search(self, queries: list[str], k: int) -> list[list[Passage]]:
        if any("Paris" in q for q in queries):
            raise RetrieverError("index shard offline")
        if any("Rome" in q for q in queries):
            time.sleep(1.0)
        return super().batch_search(queries, k)


def test_failing_and_hanging_tools_do_not_stop_the_batch(tiny):
    model, tok = tiny
    flaky = FlakyRetriever.from_documents(DOCS)
    env = ScriptedCallEnv(tok, flaky, EnvConfig(max_tool_calls=3, tool_timeout_s=0.2))
    res = rollout(HFEngine(model, tok), env, QUESTIONS, tree_cfg())
    env.close()
    errors = [n.info["tool"]["error"] for t in res.trees for n in t.nodes if n.info.get("tool", {}).get("error")]
    assert any(e == "timeout" for e in errors) and any(e.startswith("retriever_error") for e in errors)
    assert res.metrics["tool_errors"] == len(errors) < res.metrics["tool_calls"]
    for tree in res.trees:
        check_tree(tree, 3 + 2 * 2)
        for n in tree.nodes[1:]:  # a failed call still gets an observation and the trajectory goes on
            if n.info.get("tool", {}).get("error") and n.children:
                assert "Search failed" in tree.nodes[n.children[0]].obs_text


class RaisingEnv(ScriptedCallEnv):
    """An env that breaks the never-raise contract of run_tools for Paris queries."""

    def run_tools(self, calls):
        if any(c.query and "Paris" in c.query for c in calls):
            raise RuntimeError("tool crashed")
        return super().run_tools(calls)


def test_env_that_raises_is_isolated_per_call(tiny, retriever):
    model, tok = tiny
    env = RaisingEnv(tok, retriever, EnvConfig(max_tool_calls=3))
    res = rollout(HFEngine(model, tok), env, QUESTIONS, tree_cfg(l=0, m=6))
    env.close()
    tools = [n.info["tool"] for t in res.trees for n in t.nodes if "tool" in n.info]
    assert any(t["error"] and "tool crashed" in t["error"] for t in tools) and any(t["ok"] for t in tools)


def test_call_limit_end_and_notice(tiny, retriever):
    model, tok = tiny
    for mode in ("end", "notice"):
        env = ScriptedCallEnv(tok, retriever, EnvConfig(max_tool_calls=1, limit_mode=mode), p_call=1.0)
        res = rollout(HFEngine(model, tok), env, QUESTIONS[:1], tree_cfg(l=0, max_response_tokens=300))
        env.close()
        tree = res.trees[0]
        assert res.metrics["limit_hits"] > 0
        for leaf in tree.leaves():
            searches = [n for n in tree.path(leaf) if tree.nodes[n].tool_call]
            assert len(searches) <= 1
            if mode == "end":  # every turn is read as a call: the second one ends the trajectory (or a cut)
                assert tree.nodes[leaf].end in (TurnEnd.ERROR, TurnEnd.TRUNCATED)
        if mode == "end":
            assert any(tree.nodes[leaf].end == TurnEnd.ERROR for leaf in tree.leaves())
        if mode == "notice":
            assert any("maximum of 1 searches" in n.obs_text for n in tree.nodes)


def test_truncation_respects_response_budget(tiny, scripted_env):
    model, tok = tiny
    cfg = tree_cfg(max_response_tokens=120)
    res = rollout(HFEngine(model, tok), scripted_env, QUESTIONS, cfg)
    ends = []
    for tree in res.trees:
        check_tree(tree, cfg.m + cfg.l * cfg.k)
        for leaf in tree.leaves():
            assert len(tree.context_ids(leaf, include_gen=True)) - len(tree.prompt_ids) <= cfg.max_response_tokens
            ends.append(tree.nodes[leaf].end)
    assert TurnEnd.TRUNCATED in ends


def test_rollout_is_deterministic_under_a_seed(tiny, scripted_env):
    model, tok = tiny
    a = rollout(HFEngine(model, tok), scripted_env, QUESTIONS, tree_cfg(seed=3))
    b = rollout(HFEngine(model, tok), scripted_env, QUESTIONS, tree_cfg(seed=3))
    c = rollout(HFEngine(model, tok), scripted_env, QUESTIONS, tree_cfg(seed=4))
    assert signature(a.trees) == signature(b.trees)
    assert signature(a.trees) != signature(c.trees)
    # independent of the engine's batch size (sequences per forward) and of the driver's chunking
    d = rollout(HFEngine(model, tok, max_batch_sequences=3), scripted_env, QUESTIONS, tree_cfg(seed=3))
    assert signature(d.trees) == signature(a.trees)
    e = rollout(HFEngine(model, tok), scripted_env, QUESTIONS, tree_cfg(seed=3, max_concurrent_sequences=2))
    assert signature(e.trees) == signature(a.trees)
    # a tree depends on its own prompt and the seed only, not on which other prompts share the batch
    f = rollout(HFEngine(model, tok), scripted_env, QUESTIONS[:1], tree_cfg(seed=3))
    assert signature(f.trees) == signature(a.trees)[:1]


def test_plain_search_env_with_random_model(tiny, retriever):
    """The unmodified SearchEnv: a random model's malformed turns get corrective observations until the limit."""
    model, tok = tiny
    env = SearchEnv(tok, retriever, EnvConfig(max_tool_calls=2))
    cfg = RolloutConfig(mode="chain", n=4, max_turn_tokens=64, max_response_tokens=1000)
    res = rollout(HFEngine(model, tok), env, QUESTIONS[:2], cfg)
    env.close()
    for tree in res.trees:
        check_tree(tree, 4)
    score_trees(res.trees, env, tok)
    for tree in res.trees:
        for leaf in tree.leaves():
            assert tree.nodes[leaf].reward == -1.0  # a random model never formats an answer
    assert leaf_metrics(res.trees)["rollout/format_ok"] == 0.0


def test_config_rejects_unknown_keys():
    with pytest.raises(Exception, match="extra"):
        RolloutConfig(mode="tree", branches=3)


def test_identical_turns_get_one_entropy_so_float_noise_cannot_pick():
    """Two chains that sampled the same first turn (and the same second turn after it) have identical H(n) in
    exact arithmetic; their engine log-probs differ by layout noise. Selection must see one value."""
    from at2po.core.tree import stack_trees
    from at2po.rollout.driver import _same_turn_same_entropy

    tree = TurnTree(prompt_ids=[1, 2, 3])
    a = tree.add_node(0, obs_ids=[], obs_text="", gen_ids=[5, 6], gen_logprobs=[-0.5, -0.25], text="", group=0)
    b = tree.add_node(0, obs_ids=[], obs_text="", gen_ids=[5, 6], gen_logprobs=[-0.5, -0.25 - 1e-7], text="", group=0)
    c = tree.add_node(0, obs_ids=[], obs_text="", gen_ids=[5, 7], gen_logprobs=[-0.5, -0.25 - 1e-7], text="", group=0)
    a2 = tree.add_node(a, obs_ids=[9], obs_text="", gen_ids=[8], gen_logprobs=[-1.0], text="", group=0)
    b2 = tree.add_node(b, obs_ids=[9], obs_text="", gen_ids=[8], gen_logprobs=[-1.0 + 1e-7], text="", group=0)
    other = TurnTree(prompt_ids=[1, 2, 3])  # a second tree with the same turn: trees are never mixed
    x = other.add_node(0, obs_ids=[], obs_text="", gen_ids=[5, 6], gen_logprobs=[-0.5, -0.75], text="", group=0)
    arrays, _, off = stack_trees([tree, other])
    h = _same_turn_same_entropy([tree, other], arrays.entropy, off)
    assert arrays.entropy[a] != arrays.entropy[b]
    assert h[a] == h[b] == min(arrays.entropy[a], arrays.entropy[b])
    assert h[a2] == h[b2] == min(arrays.entropy[a2], arrays.entropy[b2])
    assert h[c] == arrays.entropy[c] and h[off[1] + x] == arrays.entropy[off[1] + x] != h[a]


class SlowToolEnv(ScriptedCallEnv):
    """Every batch of tool calls takes ``delay`` seconds (a remote retrieval server)."""

    delay = 0.15

    def run_tools(self, calls):
        time.sleep(self.delay)
        return super().run_tools(calls)


def test_continuous_batching_decodes_while_tools_run(tiny, retriever):
    """Tools run on worker threads: generation waits for them only when nothing else is left to decode, and tool
    batches of different steps overlap, so much of the tool time is hidden (phase batching hides none of it).
    With async tools the step at which a turn joins depends on thread timing, so the batch layout does too, and
    float noise (~1e-5 in the log-probs) can flip a rare tail token: the trees are compared up to such flips.
    Speed itself is measured by benchmarks/rollout_bench.py, not here."""
    model, tok = tiny
    env = SlowToolEnv(tok, retriever, EnvConfig(max_tool_calls=3, tool_timeout_s=5.0))
    try:
        cfg = tree_cfg(seed=3, m=4, l=1, k=3, tree_schedule="per_tree")
        phase = rollout(HFEngine(model, tok), env, QUESTIONS, cfg)
        cont = rollout(HFEngine(model, tok), env, QUESTIONS, cfg.model_copy(update={"batching": "continuous"}))
    finally:
        env.close()
    turns = lambda res: {(i, x) for i, t in enumerate(canonical(res.trees)) for x in t}  # noqa: E731
    assert len(turns(cont) & turns(phase)) >= 0.7 * len(turns(phase))
    p, c = phase.metrics, cont.metrics
    assert p["tool_wait_s"] == pytest.approx(p["tool_s"])  # a phase waits for its tools
    assert p["tool_s"] >= 3 * SlowToolEnv.delay
    assert c["tool_s"] >= 3 * SlowToolEnv.delay and c["tool_wait_s"] < 0.5 * c["tool_s"]


def test_continuous_runner_refuses_an_engine_that_stops_early(tiny, scripted_env):
    """Turns must never be dropped silently: an engine whose ``run`` returns before the scheduler ran dry is an
    error naming what was left."""
    model, tok = tiny

    class Quitter(HFEngine):
        def run(self, scheduler, params):
            scheduler.next_requests(idle=False)  # takes the first turns, never samples them

    with pytest.raises(RuntimeError, match=r"Quitter\.run returned with"):
        rollout(Quitter(model, tok), scripted_env, QUESTIONS, tree_cfg(batching="continuous"))
