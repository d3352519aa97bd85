"""The Wikipedia teacher: demonstrations made with the run's real SearchEnv (BM25 over the 10k offline lead
sections), answering only what it retrieved, in the exact rollout protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from at2po.agent.env import TurnKind
from at2po.agent.expert import byte_tokenizer
from at2po.agent.retrievers import load_retriever
from at2po.agent.rewards import compute_score
from at2po.agent.search_env import EnvConfig, SearchEnv
from at2po.agent.wiki_expert import WikiExpert, write_wiki_demonstrations
from at2po.agent.wiki_questions import appears_in


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture()
def env(wiki):
    cfg = EnvConfig(topk=2, max_obs_tokens=1024, max_tool_calls=3)  # 1024 bytes ≈ 256 BPE tokens
    e = SearchEnv(byte_tokenizer(), load_retriever(wiki.index), cfg)
    yield e
    e.close()


def test_demonstrations_answer_only_what_was_retrieved(wiki, env, tmp_path):
    rows = _rows(wiki.train)
    path, stats = write_wiki_demonstrations(rows, env, tmp_path / "sft.jsonl")
    demos = _rows(path)
    assert stats["demos"] == len(demos) and stats["tried"] == len(rows)
    assert stats["demos"] + stats["unsolved"] == len(rows)
    assert stats["demos"] / len(rows) > 0.85  # the teacher finds most answers with at most 3 searches
    assert set(stats["by_source"]) == {"fanoutqa", "wiki_desc", "wiki_2hop"}
    by_id = {r["id"]: r for r in rows}
    for d in demos:
        *searches, final = d["turns"]
        assert 1 <= len(searches) <= env.max_tool_calls and final["observation"] is None
        gold = by_id[d["id"]]["golden_answers"][0]
        assert compute_score(final["text"], d["golden_answers"]) == 1.0  # well-formed and exactly right
        assert any(appears_in(gold, t["observation"]) for t in searches)  # grounded in what it read
        for t in searches:
            parsed = env.parse_turn(t["text"])
            assert parsed.kind == TurnKind.TOOL_CALL
            # the observation is exactly what an RL rollout gets for that query (same env, tokenizer, budget)
            assert env.run_tools([parsed])[0].observation == t["observation"]


def test_two_hop_demonstrations_search_the_bridge_second(wiki, env):
    rows = [r for r in _rows(wiki.train) if r["hops"] == 2]
    expert = WikiExpert(env)
    demos = [expert.solve_row(r) for r in rows[:30]]
    solved = [(r, d) for r, d in zip(rows[:30], demos, strict=True) if d.prediction is not None]
    assert len(solved) >= 25
    for r, d in solved:
        queries = [env.parse_turn(t["text"]).query for t in d.turns[:-1]]
        assert queries[0] == r["question"] and len(queries) >= 2
        assert r["bridge"] in queries[-1]


def test_unretrievable_answers_are_left_out(wiki, env, tmp_path):
    row = {"id": "x", "question": "What is the capital of Lebanon?", "golden_answers": ["Qwertzuiop"],
           "data_source": "wiki_desc", "hops": 1, "evidence": ["Beirut"], "bridge": None}
    assert WikiExpert(env).solve_row(row).prediction is None
    plain = {"id": "nq-0", "question": "What is the capital of Lebanon?", "golden_answers": ["Beirut"]}  # no evidence
    demo = WikiExpert(env).solve_row(plain)
    assert demo.prediction == "Beirut" and len(demo.turns) == 2
    good = _rows(wiki.train)[:5]
    path, stats = write_wiki_demonstrations([row] + good, env, tmp_path / "sft.jsonl", limit=3)
    assert stats["demos"] == 3 and len(_rows(path)) == 3
    assert all(d["id"] != "x" for d in _rows(path))


def test_order_is_seeded(wiki, env, tmp_path):
    rows = _rows(wiki.train)[:40]
    a = _rows(write_wiki_demonstrations(rows, env, tmp_path / "a.jsonl", limit=10, seed=0)[0])
    b = _rows(write_wiki_demonstrations(rows, env, tmp_path / "b.jsonl", limit=10, seed=0)[0])
    c = _rows(write_wiki_demonstrations(rows, env, tmp_path / "c.jsonl", limit=10, seed=1)[0])
    assert a == b and [d["id"] for d in a] != [d["id"] for d in c]


def test_cli_writes_demonstrations_with_the_run_env(wiki, tmp_path):
    from typer.testing import CliRunner

    from at2po.cli import app
    from at2po.models.tiny import build_tiny_model

    texts = [json.loads(line)["text"] for line in wiki.corpus.read_text(encoding="utf-8").splitlines()[:300]]
    model = build_tiny_model(texts, tmp_path / "model", vocab_size=512)
    base = [f"data.train={wiki.train}", f"data.index={wiki.index}", f"model.path={model}", "env.topk=2",
            "env.max_obs_tokens=200", "env.max_tool_calls=3"]
    runner = CliRunner()
    res = runner.invoke(app, ["wiki-demos", *base, "--out", str(tmp_path / "d.jsonl"), "--limit", "6"])
    assert res.exit_code == 0, res.output
    demos = _rows(tmp_path / "d.jsonl")
    assert len(demos) == 6 and '"demos": 6' in res.output
    env = SearchEnv(AutoTokenizer.from_pretrained(model), load_retriever(wiki.index),
                    EnvConfig(topk=2, max_obs_tokens=200, max_tool_calls=3))
    try:  # observations are cut to the run's own token budget with the run's own tokenizer
        for d in demos:
            for t in d["turns"][:-1]:
                assert len(env.observation_ids(t["observation"])) <= 200
                assert env.run_tools([env.parse_turn(t["text"])])[0].observation == t["observation"]
    finally:
        env.close()
    res = runner.invoke(app, ["wiki-demos", *base])  # data.sft unset and no --out
    assert res.exit_code == 2 and "data.sft" in res.output
    res = runner.invoke(app, ["wiki-demos", *base[1:], "--out", str(tmp_path / "x.jsonl")])  # no data.train
    assert res.exit_code == 2 and "data.train" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(wiki.train.read_text(encoding="utf-8").splitlines()[0] + '\n{"question": "no answers"}\n')
    res = runner.invoke(app, ["wiki-demos", f"data.train={bad}", *base[1:], "--out", str(tmp_path / "y.jsonl")])
    assert res.exit_code == 2 and "bad.jsonl:2" in res.output
