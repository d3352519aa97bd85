"""The real-text benchmark: corpus from the installed offline Wikipedia summaries, QA answers supported by their
evidence articles, a deterministic article-grouped split, and the description patterns on hand-made articles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from at2po.agent.retrievers import read_corpus
from at2po.agent.wiki import load_summaries, make_wiki
from at2po.agent.wiki_questions import appears_in, description_questions, is_demonym, package_file


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_corpus_is_the_offline_wikipedia(wiki):
    docs = read_corpus(wiki.corpus)
    assert len(docs) == 10033
    by_id = {d.id: d for d in docs}
    assert "Stanley Kubrick" in by_id and by_id["Stanley Kubrick"].title == "Stanley Kubrick"
    assert "film" in by_id["Stanley Kubrick"].text


def test_every_answer_is_supported_by_its_evidence(wiki):
    text = {d.id: d.text for d in read_corpus(wiki.corpus)}
    rows = _rows(wiki.train) + _rows(wiki.test)
    assert len(rows) > 600
    for r in rows:
        assert set(r) >= {"id", "question", "golden_answers", "data_source", "hops", "evidence"}
        assert all(t in text for t in r["evidence"]) and len(r["evidence"]) == r["hops"]
        assert appears_in(r["golden_answers"][0], text[r["evidence"][-1]]), r
    assert {r["data_source"] for r in rows} == {"fanoutqa", "wiki_desc", "wiki_2hop"}
    assert len({r["id"] for r in rows}) == len(rows)


def test_fanoutqa_rows_are_real_dev_subquestions(wiki):
    dev = json.loads(package_file("fanoutqa", "data/fanout-final-dev.json").read_text("utf-8"))
    pairs: set[tuple[str, str]] = set()

    def walk(qs):
        for q in qs:
            pairs.add((q["question"].strip(), str(q["answer"])))
            walk(q["decomposition"])

    for top in dev:
        walk(top["decomposition"])
    fo = [r for r in _rows(wiki.train) + _rows(wiki.test) if r["data_source"] == "fanoutqa"]
    assert len(fo) >= 50
    assert all((r["question"], r["golden_answers"][0]) in pairs for r in fo)


def test_split_is_grouped_by_article_and_deterministic(wiki, tmp_path):
    train, test = _rows(wiki.train), _rows(wiki.test)
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    for kind in {r["kind"] for r in train}:
        tr = {r["evidence"][0] for r in train if r["kind"] == kind}
        te = {r["evidence"][0] for r in test if r["kind"] == kind}
        assert te and not tr & te, kind
    assert 0.2 < len(test) / (len(train) + len(test)) < 0.3
    again = make_wiki(tmp_path, seed=0, with_index=False)
    assert again.train.read_bytes() == wiki.train.read_bytes() and again.test.read_bytes() == wiki.test.read_bytes()
    other = make_wiki(tmp_path / "s1", seed=1, with_index=False)
    assert other.test.read_bytes() != wiki.test.read_bytes()


def test_bm25_index_finds_the_evidence(wiki):
    meta = json.loads(wiki.meta.read_text())
    recall = meta["stats"]["question_recall@3"]["test"]
    assert recall["wiki_desc"] > 0.8 and recall["wiki_2hop"] > 0.8
    assert "CC BY-SA 4.0" in meta["licences"]["corpus"] and "fanoutqa" in meta["licences"]


def test_description_patterns_on_handmade_articles():
    arts = {
        "Psycho (1960 film)": ("1960 film directed by Alfred Hitchcock",
                               "Psycho is a 1960 film directed by Alfred Hitchcock."),
        "Alfred Hitchcock": ("English filmmaker (1899–1980)", "Sir Alfred Hitchcock was an English filmmaker."),
        "Zed Novel": ("1900 novel by Nobody Known", "Zed Novel is a book."),  # answer not in text: no question
        "Morocco": ("Country in North Africa", "Morocco is a country in North Africa. Its capital is Rabat."),
        "Rabat": ("Capital city of Morocco", "Rabat is the capital city of Morocco."),
        "Marrakesh": ("City in Marrakesh–Safi, Morocco", "Marrakesh is a city in Morocco."),
    }
    summaries = {t: {"title": t, "description": d, "extract": x, "topic": "People"} for t, (d, x) in arts.items()}
    got = {(q.question, q.answer, q.kind) for q in description_questions(summaries)}
    assert got == {
        ("Who directed the 1960 film Psycho?", "Alfred Hitchcock", "creator"),
        ("What nationality was Alfred Hitchcock?", "English", "nationality"),
        ("What nationality was the creator of the 1960 film Psycho?", "English", "creator_nationality"),
        ("In which region of the world is Morocco?", "North Africa", "region"),
        ("What is the capital of Morocco?", "Rabat", "capital"),
        ("In which country is Marrakesh?", "Morocco", "city_country"),
        ("In which country is Rabat?", "Morocco", "city_country"),  # "Capital city of X" is a city too
        ("What is the capital of the country where Marrakesh is?", "Rabat", "city_capital"),
    }


def test_nationality_answers_are_demonyms_not_occupations():
    arts = {
        "Wolfgang Amadeus Mozart": ("Composer (1756–1791)", "Mozart was a prolific composer of the Classical period."),
        "Rumi": ("Sufi poet (1207–1273)", "Rumi was a Sufi poet and mystic."),
        "Henry Purcell": ("English composer (1659–1695)", "Henry Purcell was an English composer."),
        "Raymond Chandler": ("Anglo-American novelist (1888–1959)", "Raymond Chandler was an Anglo-American novelist."),
    }
    summaries = {t: {"title": t, "description": d, "extract": x, "topic": "People"} for t, (d, x) in arts.items()}
    got = {(q.question, q.answer) for q in description_questions(summaries)}
    assert got == {("What nationality was Henry Purcell?", "English"),
                   ("What nationality was Raymond Chandler?", "Anglo-American")}
    assert is_demonym("Canadian-American") and is_demonym("Swiss") and is_demonym("Welsh")
    assert not any(is_demonym(w) for w in ("Composer", "Sufi", "Muslim", "King", "Founder", "Priest", "President"))


def test_two_hop_rows_name_their_bridge(wiki):
    rows = [r for r in _rows(wiki.train) + _rows(wiki.test) if r["hops"] == 2]
    text = {d.id: d.text for d in read_corpus(wiki.corpus)}
    assert rows and all(r["bridge"] for r in rows)
    for r in rows:  # the bridge is named in the first article: that is how a reader gets to the second hop
        assert appears_in(r["bridge"], text[r["evidence"][0]]), r
    assert all(r["bridge"] is None for r in _rows(wiki.train) if r["hops"] == 1)


def test_bad_summaries_file_is_named(tmp_path):
    bad = tmp_path / "s.json"
    bad.write_text(json.dumps({"Foo": {"title": "Foo"}}))
    with pytest.raises(ValueError, match=r"Foo.*extract"):
        load_summaries(bad)
