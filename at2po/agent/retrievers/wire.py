"""The Search-R1 retrieval wire format, shared by the HTTP client and server.

Request (POST ``/retrieve``)::

    {"queries": ["q1", "q2"], "topk": 3, "return_scores": true}

Response::

    {"result": [[{"document": {"id": "...", "contents": "\\"Title\\"\\ntext", ...}, "score": 12.3}, ...], ...]}

With ``"return_scores": false`` each inner entry is the document object itself. Search-R1's dense
server returns corpus rows ``{id, contents}``; its BM25 server returns ``{title, text, contents}``;
we send the union ``{id, title, text, contents}`` and accept any of them.
"""

from __future__ import annotations

from typing import Any

from at2po.agent.retrievers.base import Passage, RetrieverError
from at2po.agent.retrievers.corpus import split_contents


def passage_to_document(p: Passage) -> dict[str, Any]:
    return {"id": p.id, "title": p.title, "text": p.text, "contents": p.contents}


def encode_results(results: list[list[Passage]], return_scores: bool) -> dict[str, Any]:
    if return_scores:
        return {"result": [[{"document": passage_to_document(p), "score": p.score} for p in hits] for hits in results]}
    return {"result": [[passage_to_document(p) for p in hits] for hits in results]}


def _document_to_passage(doc: Any, score: Any, where: str) -> Passage:
    if not isinstance(doc, dict):
        raise RetrieverError(f"{where}: document is {type(doc).__name__}, expected an object")
    if isinstance(doc.get("text"), str):
        title, text = doc.get("title") or "", doc["text"]
    elif isinstance(doc.get("contents"), str):
        title, text = split_contents(doc["contents"])
    else:
        raise RetrieverError(f"{where}: document has neither 'text' nor 'contents'")
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise RetrieverError(f"{where}: score is {score!r}, expected a number")
    return Passage(id=str(doc.get("id", "")), title=str(title), text=text, score=float(score))


def decode_results(payload: Any, n_queries: int, k: int) -> list[list[Passage]]:
    """Parse a ``/retrieve`` response into passages (at most ``k`` per query); RetrieverError on a bad shape."""
    if not isinstance(payload, dict) or not isinstance(payload.get("result"), list):
        raise RetrieverError("retrieval response has no 'result' list")
    result = payload["result"]
    if len(result) != n_queries:
        raise RetrieverError(f"retrieval response has {len(result)} result lists for {n_queries} queries")
    out: list[list[Passage]] = []
    for qi, hits in enumerate(result):
        if not isinstance(hits, list):
            raise RetrieverError(f"result[{qi}] is {type(hits).__name__}, expected a list")
        ps = []
        for j, entry in enumerate(hits[:k]):
            where = f"result[{qi}][{j}]"
            if isinstance(entry, dict) and "document" in entry:
                ps.append(_document_to_passage(entry["document"], entry.get("score", 0.0), where))
            else:
                ps.append(_document_to_passage(entry, 0.0, where))
        out.append(ps)
    return out
