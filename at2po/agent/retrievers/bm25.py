"""Sparse BM25 retrieval with bm25s (and PyStemmer's English stemmer), the default search tool.

Index directory layout (``BM25Retriever.save``)::

    meta.json            kind="bm25", corpus stats, options
    docs.arrow           the documents (memory-mapped on load)
    *.index.npy / *.json bm25s' sparse score matrix, vocabulary and parameters
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
import Stemmer

from at2po.agent.retrievers.base import Passage, Retriever, RetrieverError
from at2po.agent.retrievers.corpus import DocStore, Document
from at2po.agent.retrievers.meta import read_meta, write_meta

KIND = "bm25"


def _stemmer(language: str | None) -> Stemmer.Stemmer | None:
    if not language:
        return None
    try:
        return Stemmer.Stemmer(language)
    except KeyError:
        raise RetrieverError(f"unknown stemmer language {language!r}; one of {Stemmer.algorithms()}") from None


class BM25Retriever(Retriever):
    """Okapi BM25 over title+text.

    score(q, d) = Σ_{t ∈ q} IDF(t) · tf(t,d)·(k1+1) / (tf(t,d) + k1·(1 − b + b·|d|/avgdl)),
    with bm25s' ``method`` choosing the IDF variant (``lucene``: IDF = ln(1 + (N − df + 0.5)/(df + 0.5))).
    Documents scoring 0 (no query term in common) are not returned, so a query with no known
    term yields an empty list rather than arbitrary documents.
    """

    def __init__(self, model: bm25s.BM25, store: DocStore, options: dict[str, Any]):
        self.model = model
        self.store = store
        self.options = options
        self._stem = _stemmer(options.get("stemmer"))
        # PyStemmer objects are not thread-safe and the env calls the tool from a thread pool
        self._lock = threading.Lock()

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def from_documents(
        cls,
        docs: Sequence[Document],
        *,
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        stopwords: str | None = "en",
        stemmer: str | None = "english",
    ) -> BM25Retriever:
        """Index ``docs`` in memory (tokenise with stopwords + stemming, precompute BM25 weights)."""
        if not docs:
            raise RetrieverError("cannot build a BM25 index from an empty corpus")
        options = {"k1": k1, "b": b, "method": method, "stopwords": stopwords, "stemmer": stemmer}
        stem = _stemmer(stemmer)
        tokens = bm25s.tokenize(
            [d.search_text for d in docs], stopwords=stopwords, stemmer=stem, show_progress=False
        )
        model = bm25s.BM25(k1=k1, b=b, method=method)
        model.index(tokens, show_progress=False)
        lengths = np.fromiter((len(ids) for ids in tokens.ids), dtype=np.int64, count=len(docs))  # [N]
        options["_stats"] = {
            "vocab_size": len(tokens.vocab),
            "avg_doc_tokens": float(lengths.mean()),
            "max_doc_tokens": int(lengths.max()),
        }
        return cls(model, DocStore.from_documents(docs), options)

    def save(self, out_dir: str | Path) -> Path:
        """Write the index (bm25s arrays + docs.arrow + meta.json) into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save(str(out), show_progress=False)
        self.store.save(out)
        opts = {k: v for k, v in self.options.items() if not k.startswith("_")}
        write_meta(out, KIND, len(self.store), opts, self.options.get("_stats", {}))
        return out

    @classmethod
    def load(cls, index_dir: str | Path, mmap: bool = False) -> BM25Retriever:
        """Open an index written by ``save``; ``mmap=True`` leaves the score matrix on disk."""
        index_dir = Path(index_dir)
        meta = read_meta(index_dir, expect_kind=KIND)
        model = bm25s.BM25.load(str(index_dir), mmap=mmap, show_progress=False)
        store = DocStore.load(index_dir)
        if len(store) != meta["num_docs"]:
            raise RetrieverError(f"{index_dir}: docs.arrow has {len(store)} rows, meta.json says {meta['num_docs']}")
        return cls(model, store, meta["options"])

    # ---- searching ------------------------------------------------------------------------
    def batch_search(self, queries: list[str], k: int) -> list[list[Passage]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not queries:
            return []
        kk = min(k, len(self.store))  # bm25s refuses k > corpus size
        with self._lock:
            q_tokens = bm25s.tokenize(
                queries,
                stopwords=self.options.get("stopwords"),
                stemmer=self._stem,
                return_ids=False,
                show_progress=False,
            )
            rows, scores = self.model.retrieve(q_tokens, k=kk, show_progress=False, n_threads=0)  # [Q, kk]
        return self.store.passages(rows, scores, scores > 0)

    def __len__(self) -> int:
        return len(self.store)

