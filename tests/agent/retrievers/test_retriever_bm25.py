from __future__ import annotations

import json

import pytest

from at2po.agent.retrievers import RetrieverError, build_index, load_retriever, read_corpus
from at2po.agent.retrievers.bm25 import BM25Retriever
from at2po.agent.retrievers.corpus import Document


def test_meta_json_records_kind_stats_and_options(bm25_dir, doc_rows):
    meta = json.loads((bm25_dir / "meta.json").read_text())
    assert meta["kind"] == "bm25" and meta["format"] == 1
    assert meta["num_docs"] == len(doc_rows)
    assert meta["options"] == {"k1": 1.5, "b": 0.75, "method": "lucene", "stopwords": "en", "stemmer": "english"}
    assert meta["stats"]["vocab_size"] > 20 and meta["stats"]["avg_doc_tokens"] > 3
    assert (bm25_dir / "docs.arrow").is_file()


def test_ranks_the_matching_document_first(bm25_dir):
    r = load_retriever(bm25_dir)
    assert isinstance(r, BM25Retriever)
    hits = r.batch_search(["capital of Japan", "who created the Python programming language", "flightless birds"], 3)
    assert [h[0].id for h in hits] == ["tokyo", "python", "penguin"]
    for h in hits:
        scores = [p.score for p in h]
        assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    assert hits[0][0].title == "Tokyo" and hits[0][0].text.startswith("Tokyo is the capital of Japan")


def test_stemming_matches_inflections(bm25_dir):
    r = load_retriever(bm25_dir)
    # "runs" / "erupted" share stems with "running" / "erupts" only after Snowball stemming
    assert r.search("runs", 1)[0].id == "marathon"
    assert r.search("erupted", 1)[0].id == "volcano"


def test_no_matching_term_gives_no_passages(bm25_dir):
    r = load_retriever(bm25_dir)
    assert r.batch_search(["qwxzzy", "", "the of and"], 3) == [[], [], []]


def test_k_larger_than_corpus_and_only_matching_docs(bm25_dir, doc_rows):
    r = load_retriever(bm25_dir)
    hits = r.search("capital city", 50)
    assert 1 <= len(hits) <= len(doc_rows)
    assert {p.id for p in hits} >= {"paris", "berlin", "tokyo"}
    assert "violin" not in {p.id for p in hits}
    with pytest.raises(ValueError, match="k must be"):
        r.search("x", 0)
    assert r.batch_search([], 3) == []


def test_save_load_round_trip_is_identical(tmp_path, corpus_file):
    docs = read_corpus(corpus_file)
    mem = BM25Retriever.from_documents(docs, k1=1.2, b=0.5)
    mem.save(tmp_path / "i")
    disk = BM25Retriever.load(tmp_path / "i", mmap=True)
    qs = ["capital", "string instrument bow", "Guido"]
    assert mem.batch_search(qs, 4) == disk.batch_search(qs, 4)
    assert disk.options["k1"] == 1.2 and disk.options["b"] == 0.5


def test_unstemmed_index_differs(tmp_path):
    docs = [Document("a", "", "runners run"), Document("b", "", "walking fast")]
    plain = BM25Retriever.from_documents(docs, stemmer=None, stopwords=None)
    assert plain.search("running", 2) == []  # no stemming: 'running' is not 'run'
    assert BM25Retriever.from_documents(docs).search("running", 2)[0].id == "a"


def test_build_index_refuses_to_clobber(tmp_path, corpus_file):
    out = build_index(corpus_file, tmp_path / "i")
    with pytest.raises(FileExistsError, match="overwrite"):
        build_index(corpus_file, out)
    assert build_index(corpus_file, out, overwrite=True) == out
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an at2po index"):
        build_index(corpus_file, other, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="unknown retriever kind"):
        build_index(corpus_file, tmp_path / "j", kind="splade")


def test_load_errors_are_clear(tmp_path, bm25_dir):
    with pytest.raises(RetrieverError, match="not an index directory or http"):
        load_retriever(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RetrieverError, match=r"no meta\.json"):
        load_retriever(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "meta.json").write_text('{"format": 1, "kind": "colbert"}')
    with pytest.raises(RetrieverError, match="unknown index kind 'colbert'"):
        load_retriever(bad)
    with pytest.raises(RetrieverError, match="expected 'dense'"):
        from at2po.agent.retrievers.dense import DenseRetriever

        DenseRetriever.load(bm25_dir)
