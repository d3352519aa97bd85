"""Retrieval corpora: reading JSONL documents and storing them next to an index.

Two input shapes are accepted, one JSON object per line:

- ours: ``{"id": ..., "title": ..., "text": ...}`` (``title`` optional);
- Search-R1 / FlashRAG: ``{"id": ..., "contents": "\\"Title\\"\\ntext"}``.

Inside an index directory the documents are kept as an Arrow IPC file (``docs.arrow``) that is
memory-mapped on load, so opening a large index does not parse the corpus again and fetching the
top-k rows is one vectorised ``take``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from at2po.agent.retrievers.base import Passage, RetrieverError
from at2po.errors import UserError

DOCS_FILE = "docs.arrow"


class CorpusError(UserError, ValueError):
    """A corpus line is malformed; the message names ``file:line``."""


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str

    @property
    def contents(self) -> str:
        """Search-R1's ``contents`` field: '"title"\\ntext' (just the text when there is no title)."""
        return f'"{self.title}"\n{self.text}' if self.title else self.text

    @property
    def search_text(self) -> str:
        """What gets indexed: the title matters for entity lookups, so it is part of the searchable text."""
        return f"{self.title}\n{self.text}" if self.title else self.text


def split_contents(contents: str) -> tuple[str, str]:
    """Split Search-R1 ``contents`` ('"Title"\\ntext') into (title, text).

    A first line wrapped in double quotes is the title (Search-R1 strips the quotes the same
    way); otherwise there is no title and the whole string is the text.
    """
    head, sep, rest = contents.partition("\n")
    head_s = head.strip()
    if sep and len(head_s) >= 2 and head_s.startswith('"') and head_s.endswith('"'):
        return head_s[1:-1], rest
    return "", contents


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _parse_line(obj: object, where: str) -> Document:
    if not isinstance(obj, dict):
        raise CorpusError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "id" not in obj:
        raise CorpusError(f"{where}: missing 'id'")
    doc_id = obj["id"]
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
        raise CorpusError(f"{where}: 'id' must be a string or integer, got {type(doc_id).__name__}")
    if "text" in obj:
        title, text = obj.get("title", ""), obj["text"]
        if title is None:
            title = ""
        if not isinstance(title, str):
            raise CorpusError(f"{where}: 'title' must be a string, got {type(title).__name__}")
    elif "contents" in obj:
        if not isinstance(obj["contents"], str):
            raise CorpusError(f"{where}: 'contents' must be a string, got {type(obj['contents']).__name__}")
        title, text = split_contents(obj["contents"])
    else:
        raise CorpusError(f"{where}: need 'text' (with optional 'title') or Search-R1 'contents'")
    if not isinstance(text, str):
        raise CorpusError(f"{where}: 'text' must be a string, got {type(text).__name__}")
    if not (title.strip() or text.strip()):
        raise CorpusError(f"{where}: empty document (no title and no text)")
    return Document(id=str(doc_id), title=title, text=text)


def iter_corpus(path: str | Path) -> Iterator[Document]:
    """Yield the documents of a JSONL (or .jsonl.gz) corpus; blank lines are skipped.

    Raises CorpusError naming ``file:line`` for invalid JSON, a missing/ill-typed field or a
    duplicate id.
    """
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: corpus file not found")
    seen: dict[str, int] = {}
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            doc = _parse_line(obj, where)
            if doc.id in seen:
                raise CorpusError(f"{where}: duplicate id {doc.id!r} (first on line {seen[doc.id]})")
            seen[doc.id] = lineno
            yield doc


def read_corpus(path: str | Path) -> list[Document]:
    """All documents of a JSONL corpus (``{id,title,text}`` or Search-R1 ``{id,contents}``)."""
    docs = list(iter_corpus(path))
    if not docs:
        raise CorpusError(f"{path}: corpus is empty")
    return docs


def write_corpus(docs: Sequence[Document], path: str | Path) -> Path:
    """Write documents as ``{id,title,text}`` JSONL (the inverse of ``read_corpus``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"id": d.id, "title": d.title, "text": d.text}, ensure_ascii=False) + "\n")
    return path


class DocStore:
    """The documents of an index, memory-mapped from ``docs.arrow``; rows are fetched by position."""

    def __init__(self, table: pa.Table):
        self.table = table

    def __len__(self) -> int:
        return self.table.num_rows

    @classmethod
    def from_documents(cls, docs: Sequence[Document]) -> DocStore:
        table = pa.table(
            {
                "id": pa.array([d.id for d in docs], pa.string()),
                "title": pa.array([d.title for d in docs], pa.string()),
                "text": pa.array([d.text for d in docs], pa.string()),
            }
        )
        return cls(table)

    def save(self, out_dir: Path) -> None:
        with pa.OSFile(str(out_dir / DOCS_FILE), "wb") as sink, pa.ipc.new_file(sink, self.table.schema) as w:
            w.write_table(self.table)

    @classmethod
    def load(cls, index_dir: Path) -> DocStore:
        path = index_dir / DOCS_FILE
        if not path.is_file():
            raise RetrieverError(f"{index_dir}: missing {DOCS_FILE} (not an at2po index?)")
        # memory_map: the OS pages documents in lazily, so load time does not grow with the corpus
        return cls(pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all())

    def passages(self, rows: np.ndarray, scores: np.ndarray, keep: np.ndarray) -> list[list[Passage]]:
        """Passages for a ``[Q, k]`` grid of row indices/scores, keeping entries where ``keep`` is True.

        One Arrow ``take`` fetches every needed row (no per-row lookups into the table).
        """
        # rows, scores, keep: [Q, k]
        flat = rows[keep]  # [M]
        if flat.size:
            got = self.table.take(pa.array(flat, pa.int64())).to_pydict()
        else:
            got = {"id": [], "title": [], "text": []}
        out: list[list[Passage]] = []
        j = 0
        for qi in range(rows.shape[0]):
            hits: list[Passage] = []
            for s in scores[qi][keep[qi]].tolist():
                hits.append(Passage(id=got["id"][j], title=got["title"][j], text=got["text"][j], score=float(s)))
                j += 1
            out.append(hits)
        return out

    def documents(self) -> list[Document]:
        d = self.table.to_pydict()
        return [Document(i, t, x) for i, t, x in zip(d["id"], d["title"], d["text"], strict=True)]
