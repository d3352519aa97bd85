"""Rows: token in, token out — training rows hold exactly the sampled ids, with no re-tokenisation drift."""

from __future__ import annotations

from rollout_fixtures import QUESTIONS

from at2po.core.tree import TurnTree
from at2po.rollout.driver import RolloutConfig, rollout
from at2po.rollout.hf_engine import HFEngine
from at2po.rollout.rows import flatten
from at2po.rollout.scoring import score_trees


def test_rows_are_the_sampled_ids(tiny, scripted_env):
    model, tok = tiny
    cfg = RolloutConfig(mode="tree", m=3, l=1, k=2, max_turn_tokens=16, max_response_tokens=600, seed=1)
    res = rollout(HFEngine(model, tok), scripted_env, QUESTIONS, cfg)
    score_trees(res.trees, scripted_env, tok)
    rows = flatten(res.trees)
    assert len(rows) == sum(len(t.leaves()) for t in res.trees) == len(QUESTIONS) * (cfg.m + cfg.l * cfg.k)
    drift = 0
    for row in rows:
        tree: TurnTree = res.trees[row.tree_index]
        p = row.prompt_len
        assert row.input_ids == tree.context_ids(row.leaf, include_gen=True)
        assert row.input_ids[:p] == tree.prompt_ids and row.reward == tree.nodes[row.leaf].reward
        n_ids = len(row.input_ids)
        assert len(row.response_mask) == len(row.turn_ids) == len(row.node_ids) == len(row.logprobs) == n_ids
        assert row.turn_ids[:p] == [-1] * p and row.node_ids[:p] == [-1] * p and sum(row.response_mask[:p]) == 0
        path = tree.path(row.leaf)
        pos = p
        for k, n in enumerate(path):
            node = tree.nodes[n]
            seg = slice(pos, pos + len(node.obs_ids) + len(node.gen_ids))
            gen = slice(pos + len(node.obs_ids), seg.stop)
            assert row.input_ids[gen] == node.gen_ids  # the sampled ids, as sampled
            assert row.logprobs[gen] == node.gen_logprobs
            assert row.response_mask[seg] == [0] * len(node.obs_ids) + [1] * len(node.gen_ids)
            assert set(row.turn_ids[seg]) == {k} and set(row.node_ids[seg]) == {n}
            assert all(x == 0.0 for x in row.logprobs[pos:gen.start])
            pos = seg.stop
        assert pos == len(row.input_ids)
        # the text round trip the rows avoid: decode + re-encode gives different ids for random samples
        text = tok.decode(row.input_ids[p:])
        drift += tok(text, add_special_tokens=False)["input_ids"] != row.input_ids[p:]
    assert drift > 0  # there are sampled sequences that do not round-trip through text, and rows kept them


def test_flatten_of_a_chain_tree():
    tree = TurnTree(prompt_ids=[5, 6])
    a = tree.add_node(0, gen_ids=[1, 2], gen_logprobs=[-0.5, -1.0])
    b = tree.add_node(a, obs_ids=[9, 9, 9], gen_ids=[3], gen_logprobs=[-2.0], reward=1.0)
    (row,) = flatten([tree])
    assert row.input_ids == [5, 6, 1, 2, 9, 9, 9, 3]
    assert row.response_mask == [0, 0, 1, 1, 0, 0, 0, 1]
    assert row.turn_ids == [-1, -1, 0, 0, 1, 1, 1, 1]
    assert row.node_ids == [-1, -1, a, a, b, b, b, b]
    assert row.logprobs == [0.0, 0.0, -0.5, -1.0, 0.0, 0.0, 0.0, -2.0]
    assert (row.reward, row.leaf, row.prompt_len, row.tree_index) == (1.0, b, 2, 0)
