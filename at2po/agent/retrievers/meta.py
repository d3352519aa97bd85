"""``meta.json``: the small descriptor at the root of every at2po index directory.

It records the retriever kind (so ``load_retriever(dir)`` knows what to open), corpus
statistics and the build options, e.g.::

    {"format": 1, "kind": "bm25", "num_docs": 10033, "options": {"k1": 1.5, ...}, "stats": {...}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from at2po.agent.retrievers.base import RetrieverError

META_FILE = "meta.json"
FORMAT_VERSION = 1


def write_meta(out_dir: Path, kind: str, num_docs: int, options: dict[str, Any], stats: dict[str, Any]) -> None:
    meta = {"format": FORMAT_VERSION, "kind": kind, "num_docs": num_docs, "options": options, "stats": stats}
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_meta(index_dir: str | Path, expect_kind: str | None = None) -> dict[str, Any]:
    """Read and check ``meta.json``; RetrieverError names the directory and what is wrong."""
    path = Path(index_dir) / META_FILE
    if not path.is_file():
        raise RetrieverError(f"{index_dir}: no {META_FILE}; build an index with `at2po index --corpus FILE --out DIR`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RetrieverError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("kind"), str):
        raise RetrieverError(f"{path}: missing string field 'kind'")
    if meta.get("format") != FORMAT_VERSION:
        raise RetrieverError(f"{path}: unsupported index format {meta.get('format')!r} (expected {FORMAT_VERSION})")
    if expect_kind is not None and meta["kind"] != expect_kind:
        raise RetrieverError(f"{path}: index kind is {meta['kind']!r}, expected {expect_kind!r}")
    return meta
