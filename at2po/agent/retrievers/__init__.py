"""Retrievers for the search tool: BM25 (default), dense (sentence-transformers + faiss), and an
HTTP client for Search-R1-compatible servers; ``build_index`` / ``load_retriever`` are the entry points.

Heavy backends (faiss, sentence-transformers) are imported only when a dense index is built or opened.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from at2po.agent.retrievers.base import Passage, Retriever, RetrieverError
from at2po.agent.retrievers.corpus import CorpusError, Document, read_corpus
from at2po.agent.retrievers.meta import META_FILE, read_meta

KINDS = ("bm25", "dense")

__all__ = [
    "KINDS",
    "CorpusError",
    "Document",
    "Passage",
    "Retriever",
    "RetrieverError",
    "build_index",
    "load_retriever",
    "read_corpus",
]


def build_index(
    corpus_path: str | Path,
    out_dir: str | Path,
    kind: str = "bm25",
    model: str | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Read a JSONL corpus and write a ``kind`` index (``bm25`` or ``dense``) to ``out_dir``.

    ``model`` is the embedding model for ``dense`` (default: the bundled all-MiniLM-L6-v2);
    ``options`` go to the retriever's ``from_documents`` (e.g. ``k1``, ``b`` for BM25).
    An existing index in ``out_dir`` is replaced only with ``overwrite=True``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown retriever kind {kind!r}; expected one of {KINDS}")
    if kind == "bm25" and model is not None:
        raise ValueError("--model applies to dense indexes only")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not (out / META_FILE).is_file():
            raise FileExistsError(f"{out} exists, is not empty and is not an at2po index; refusing to write into it")
        if not overwrite:
            raise FileExistsError(f"{out} already holds an index; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(out)
    docs = read_corpus(corpus_path)
    if kind == "bm25":
        from at2po.agent.retrievers.bm25 import BM25Retriever

        retriever: Any = BM25Retriever.from_documents(docs, **options)
    else:
        from at2po.agent.retrievers.dense import DenseRetriever

        retriever = DenseRetriever.from_documents(docs, model, **options)
    return retriever.save(out)


def load_retriever(spec: str | Path, **options: Any) -> Retriever:
    """Open a retriever from an index directory (kind read from its meta.json) or an http(s) URL.

    ``options`` go to the constructor/loader: e.g. ``timeout_s``, ``max_retries`` for HTTP,
    ``model`` / ``device`` for dense, ``mmap`` for BM25.
    """
    s = str(spec)
    if s.startswith(("http://", "https://")):
        from at2po.agent.retrievers.http import HTTPRetriever

        return HTTPRetriever(s, **options)
    path = Path(s)
    if not path.is_dir():
        raise RetrieverError(f"{s}: not an index directory or http(s):// URL")
    kind = read_meta(path)["kind"]
    if kind == "bm25":
        from at2po.agent.retrievers.bm25 import BM25Retriever

        return BM25Retriever.load(path, **options)
    if kind == "dense":
        from at2po.agent.retrievers.dense import DenseRetriever

        return DenseRetriever.load(path, **options)
    raise RetrieverError(f"{path / META_FILE}: unknown index kind {kind!r}; expected one of {KINDS}")
