"""The scripted expert: solves its world's questions with the real BM25 tool through the real SearchEnv, writes
demonstrations in the exact protocol, and its noise makes some of them wrong."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from at2po.agent.env import TurnKind
from at2po.agent.expert import ScriptedExpert, byte_tokenizer, read_passages, write_demonstrations
from at2po.agent.protocol import parse_turn
from at2po.agent.retrievers import load_retriever
from at2po.agent.rewards import compute_score
from at2po.agent.search_env import EnvConfig, SearchEnv
from at2po.agent.world import make_world
from at2po.agent.world_schema import parse_question
from at2po.models.tiny import train_tokenizer

SMALL = dict(n_countries=5, n_cities=15, n_people=80, n_companies=18, n_train=200, n_test=60, n_sft=150)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), seed=11, distractors=20, expert_noise=0.0, **SMALL)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_expert_solves_at_least_95_percent_with_real_bm25(world, tmp_path):
    assert world.stats["expert"]["solve_rate"] >= 0.95  # its demonstration questions, noise off
    _, stats = write_demonstrations(world.index, _rows(world.test), tmp_path / "test_sft.jsonl")
    assert stats["solve_rate"] >= 0.95  # held-out questions too
    assert stats["obs_over_budget_bytes"] == 0


def test_demonstrations_are_exact_protocol_and_score_one(world):
    demos = _rows(world.sft)
    assert len(demos) == 150
    assert not {d["question"] for d in demos} & {r["question"] for r in _rows(world.train) + _rows(world.test)}
    for d in demos:
        turns = d["turns"]
        assert set(d) >= {"question", "golden_answers", "turns"}
        assert len(turns) == len(parse_question(d["question"]).path) + 1  # one search per hop, then the answer
        for t in turns[:-1]:
            assert t["text"].endswith("</search>") and t["observation"].startswith("\n\n<result>\n")
            assert parse_turn(t["text"]).kind == TurnKind.TOOL_CALL
        assert turns[-1]["observation"] is None and turns[-1]["text"].endswith("</answer>")
        response = "".join(t["text"] + (t["observation"] or "") for t in turns)
        assert compute_score(response, d["golden_answers"]) == 1.0  # the paper's reward: format ok and EM


def test_observations_equal_searchenv_observe_with_a_trained_bpe(world):
    """The demo observations are exactly what SearchEnv gives a real byte-level BPE model (the tiny model's
    tokenizer trained on the world's text) for the same query."""
    texts = [json.dumps(r) for r in _rows(world.corpus)]
    env = SearchEnv(train_tokenizer(texts, vocab_size=600), load_retriever(world.index), EnvConfig())
    try:
        for d in _rows(world.sft)[:40]:
            for t in d["turns"][:-1]:
                parsed = env.parse_turn(t["text"])
                assert env.run_tools([parsed])[0].observation == t["observation"]
    finally:
        env.close()


def test_expert_reads_the_tool_output_not_the_gold(world):
    """Give the expert a wrong gold answer: it still answers what the documents say."""
    env = SearchEnv(byte_tokenizer(), load_retriever(world.index), EnvConfig())
    q = _rows(world.test)[0]
    demo = ScriptedExpert(env).solve(q["question"], ["Not The Answer"], qid=q["id"])
    env.close()
    assert demo.prediction == q["golden_answers"][0] and not demo.correct


def test_unparseable_question_gives_unknown_without_searching(world):
    env = SearchEnv(byte_tokenizer(), load_retriever(world.index), EnvConfig())
    demo = ScriptedExpert(env).solve("How tall is the tallest tree?", ["x"])
    env.close()
    assert demo.prediction == "unknown" and len(demo.turns) == 1


def test_noise_makes_imperfect_but_valid_demonstrations(world, tmp_path):
    _, stats = write_demonstrations(world.index, _rows(world.train), tmp_path / "noisy.jsonl", noise=0.6, seed=3)
    demos = _rows(tmp_path / "noisy.jsonl")
    noisy = [d for d in demos if d["noise"]]
    assert 0.45 < len(noisy) / len(demos) < 0.75
    assert all(stats["noise"][k] > 10 for k in ("wrong_query", "early_answer", "wrong_answer"))
    assert stats["solve_rate"] >= 0.95  # the clean ones stay correct
    scores = {}
    for d in noisy:
        response = "".join(t["text"] + (t["observation"] or "") for t in d["turns"])
        assert len(d["turns"]) - 1 <= 6  # within the env's call limit
        scores.setdefault(d["noise"], []).append(compute_score(response, d["golden_answers"]))
    assert all(s == 0.0 for s in scores["wrong_answer"] + scores["early_answer"])  # well-formed but wrong
    wq = [d for d in noisy if d["noise"] == "wrong_query"]
    assert any(len(d["turns"]) > 2 and "again" in d["turns"][1]["text"] for d in wq)  # a retry after the miss


def test_read_passages_parses_observations():
    obs = "\n\n<result>\nDoc 1(Title: A b) A b was born in C.\nDoc 2(Title: C) C is a city in D.\n</result>\n\n"
    assert read_passages(obs) == [("A b", "A b was born in C."), ("C", "C is a city in D.")]
    assert read_passages("\n\n<result>\nNo results found.\n</result>\n\n") == []


def test_noise_is_per_question_deterministic(world, tmp_path):
    rows = _rows(world.train)[:50]
    write_demonstrations(world.index, rows, tmp_path / "a.jsonl", noise=0.5, seed=1)
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    write_demonstrations(world.index, shuffled, tmp_path / "b.jsonl", noise=0.5, seed=1)
    a = {d["id"]: d for d in _rows(tmp_path / "a.jsonl")}
    b = {d["id"]: d for d in _rows(tmp_path / "b.jsonl")}
    assert a == b
