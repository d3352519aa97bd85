"""The synthetic world: determinism, file formats, question/answer consistency, train/test chain separation,
BM25 rank-1 retrieval of every entity by name (with the real index), and the knobs."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.agent.retrievers import load_retriever, read_corpus
from at2po.agent.world import WorldConfig, _segments, generate_world, make_world
from at2po.agent.world_names import NameGenerator, stem
from at2po.agent.world_schema import FACTS, QUESTIONS, parse_question, read_fact

SMALL = dict(n_countries=4, n_cities=12, n_people=50, n_companies=12, n_train=120, n_test=30, n_sft=60)


def _digests(d: Path) -> dict[str, str]:
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    make_world(out, seed=7, distractors=10, **SMALL)
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path, world_dir):
    make_world(tmp_path / "a", seed=7, distractors=10, **SMALL)
    assert _digests(tmp_path / "a") == _digests(world_dir)  # corpus, qa, sft, world.json and the index itself
    make_world(tmp_path / "b", seed=8, distractors=10, with_sft=False, with_index=False, **SMALL)
    assert (tmp_path / "b" / "corpus.jsonl").read_bytes() != (world_dir / "corpus.jsonl").read_bytes()


def test_files_follow_the_contract(world_dir):
    docs = read_corpus(world_dir / "corpus.jsonl")  # the retrieval engineer's reader accepts it
    assert len(docs) == 4 + 12 + 50 + 12 + 10
    for split, n in (("train", 120), ("test", 30)):
        rows = _rows(world_dir / f"{split}.jsonl")
        assert len(rows) == n
        for r in rows:
            assert set(r) == {"id", "question", "golden_answers", "data_source", "hops"}
            assert r["data_source"] == "world" and r["hops"] in (1, 2, 3) and len(r["golden_answers"]) == 1
    train_hops = [r["hops"] for r in _rows(world_dir / "train.jsonl")]
    assert [train_hops.count(h) for h in (1, 2, 3)] == [36, 48, 36]  # default mix 0.3 / 0.4 / 0.3
    for d in docs:  # short documents: 1–3 sentences
        assert 1 <= d.text.count(".") <= 3, d
    meta = json.loads((world_dir / "world.json").read_text())
    assert meta["config"]["seed"] == 7 and meta["stats"]["expert"]["demos"] == 60


def test_answers_follow_the_documents(world_dir):
    """Re-derive every answer by reading the corpus text (not the generator's graph)."""
    docs = {d.title: d.text for d in read_corpus(world_dir / "corpus.jsonl")}
    for split in ("train", "test"):
        for r in _rows(world_dir / f"{split}.jsonl"):
            pq = parse_question(r["question"])
            assert pq is not None and len(pq.path) == r["hops"], r
            entity = pq.head
            for rel in pq.path:
                entity = read_fact(rel, entity, docs[entity])
                assert entity is not None, (r, rel)
            assert [entity] == r["golden_answers"]


def test_train_chains_never_contain_a_test_chain():
    world = generate_world(WorldConfig(seed=3, **SMALL))
    test_chains = {s for q in world.test for s in _segments(q) if len(s) == 2 * q.hops + 1}
    assert len(test_chains) == len(world.test)
    for q in world.train + world.sft:
        assert not (_segments(q) & test_chains), q
    train, test, sft = ({q.question for q in qs} for qs in (world.train, world.test, world.sft))
    assert len(sft) == 60 and not (train & test or train & sft or test & sft)


def test_four_hop_questions_follow_the_documents_and_the_expert_solves_them(tmp_path):
    """A 4th hop weight adds 4-hop questions (5-turn trajectories: 4 searches and an answer); their answers can be
    read off the corpus and the noise-free expert solves every one with exactly 4 searches."""
    files = make_world(tmp_path, seed=2, hops=(0, 0, 0, 1), expert_noise=0.0,
                       **dict(SMALL, n_people=80, n_companies=20, n_train=40, n_test=10, n_sft=20))
    docs = {d.title: d.text for d in read_corpus(files.corpus)}
    rows = _rows(files.train) + _rows(files.test)
    assert {r["hops"] for r in rows} == {4} and len(rows) == 50
    for r in rows:
        pq = parse_question(r["question"])
        assert pq is not None and len(pq.path) == 4, r
        entity = pq.head
        for rel in pq.path:
            entity = read_fact(rel, entity, docs[entity])
        assert [entity] == r["golden_answers"]
    assert files.stats["expert"]["solve_rate"] == 1.0 and files.stats["expert"]["searches_mean"] == 4.0


def test_a_zero_fourth_weight_keeps_the_three_hop_world():
    """Worlds made with three weights are the worlds made before 4-hop questions existed: the 4-hop pool is drawn
    last, so a zero 4th weight leaves every question (and its order) as it was."""
    three = generate_world(WorldConfig(seed=5, hops=(0.3, 0.4, 0.3), **SMALL))
    four = generate_world(WorldConfig(seed=5, hops=(0.3, 0.4, 0.3, 0.0), **SMALL))
    for a, b in ((three.train, four.train), (three.test, four.test), (three.sft, four.sft)):
        assert [q.row() for q in a] == [q.row() for q in b]
    mixed = generate_world(WorldConfig(seed=5, hops=(0.3, 0.4, 0.3, 0.5), **dict(SMALL, n_people=80, n_companies=20)))
    assert {q.hops for q in mixed.test} == {1, 2, 3, 4}


def test_every_entity_is_rank_one_for_its_name_with_hard_knobs(tmp_path):
    """The expert's query is an entity name; with similar names and many distractors it still gets that entity's
    own document first from the real BM25 index."""
    files = make_world(tmp_path, seed=1, distractors=80, name_similarity=0.7, with_sft=False, **SMALL)
    retriever = load_retriever(files.index)
    docs = [d for d in read_corpus(files.corpus) if not d.id.startswith("misc-")]
    hits = retriever.batch_search([d.title for d in docs], 3)
    assert [h[0].id for h in hits] == [d.id for d in docs]


def test_name_similarity_makes_names_share_tokens():
    def shared(sim: float) -> int:
        world = generate_world(WorldConfig(seed=0, name_similarity=sim, **SMALL))
        surnames = [e.name.split()[1] for e in world.entities.values() if e.kind == "person"]
        return len(surnames) - len(set(surnames))

    assert shared(0.0) == 0
    assert shared(0.8) > 10


def test_names_respect_bm25_constraints():
    gen = NameGenerator(random.Random(0), similarity=0.5)
    places = [gen.place() for _ in range(60)]
    people = [gen.person() for _ in range(150)]
    companies = [gen.company() for _ in range(60)]
    place_stems = {stem(p) for p in places}
    assert len(place_stems) == len(places)  # one-word names are unique tokens ...
    other = {stem(w) for n in people + companies for w in n.split()}
    assert not place_stems & other  # ... that no other name uses


def test_bad_knobs_are_rejected_with_the_knob_named():
    with pytest.raises(ValueError, match="n_cities"):
        WorldConfig(n_countries=5, n_cities=3)
    with pytest.raises(ValueError, match="n_people"):
        WorldConfig(n_people=10, n_companies=10)
    with pytest.raises(ValueError, match="n_test"):
        generate_world(WorldConfig(n_test=1000, **{k: v for k, v in SMALL.items() if k != "n_test"}))
    with pytest.raises(ValueError, match="unknown_knob"):
        WorldConfig(unknown_knob=1)
    with pytest.raises(ValueError, match="hops must be 1 to 4"):
        WorldConfig(hops=(1, 1, 1, 1, 1))


_word = st.text(alphabet="abcdefghijklmnoprstuvz", min_size=3, max_size=7).map(str.capitalize)


@settings(max_examples=60, deadline=None)
@given(path=st.sampled_from(sorted(QUESTIONS)), words=st.lists(_word, min_size=1, max_size=2))
def test_question_templates_parse_back_unambiguously(path, words):
    name = " ".join(words)
    pq = parse_question(QUESTIONS[path].format(x=name))
    assert pq is not None and pq.head == name and pq.path == path


@settings(max_examples=60, deadline=None)
@given(rel=st.sampled_from(sorted(FACTS)), s=_word, o=st.lists(_word, min_size=1, max_size=2))
def test_fact_sentences_read_back(rel, s, o):
    obj = " ".join(o)
    text = f"{s} is a country. " + FACTS[rel].format(s=s, o=obj) + " Something else."
    assert read_fact(rel, s, text) == obj
    assert read_fact(rel, s + "x", text) is None  # another subject: not stated


def test_cli_make_world(tmp_path):
    from typer.testing import CliRunner

    from at2po.cli import app

    args = ["make-world", "--out", str(tmp_path), "--seed", "4", "--countries", "4", "--cities", "12", "--people", "40",
            "--companies", "12", "--train", "60", "--test", "20", "--sft", "30", "--hops", "1,1,1",
            "--expert-noise", "0"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert '"solve_rate": 1.0' in res.output
    assert len(_rows(tmp_path / "sft.jsonl")) == 30 and (tmp_path / "index").is_dir()
    bad = CliRunner().invoke(app, ["make-world", "--out", str(tmp_path / "x"), "--cities", "2"])
    assert bad.exit_code == 2 and "n_cities" in bad.output
    bad = CliRunner().invoke(app, ["make-world", "--out", str(tmp_path / "y"), "--hops", "1,1,1,1,1"])
    assert bad.exit_code == 2 and "--hops must be 1 to 4" in bad.output
