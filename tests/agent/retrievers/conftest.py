"""Small shared fixtures: a toy corpus and a BM25 index built from it with the real bm25s."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from at2po.agent.retrievers import build_index

DOCS = [
    {"id": "paris", "title": "Paris", "text": "Paris is the capital and largest city of France, on the Seine."},
    {"id": "berlin", "title": "Berlin", "text": "Berlin is the capital of Germany and its most populous city."},
    {"id": "tokyo", "title": "Tokyo", "text": "Tokyo is the capital of Japan. The city hosted the Summer Olympics."},
    {"id": "python", "title": "Python (language)",
     "text": "Python is a programming language created by Guido van Rossum."},
    {"id": "marathon", "title": "Marathon", "text": "A marathon is a long-distance running race of 42.195 kilometres."},
    {"id": "violin", "title": "Violin", "text": "The violin is a wooden string instrument played with a bow."},
    {"id": "volcano", "title": "Volcano", "text": "A volcano is a rupture in a planet's crust where lava erupts."},
    {"id": "penguin", "title": "Penguin",
     "text": "Penguins are flightless aquatic birds living in the Southern Hemisphere."},
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def doc_rows() -> list[dict]:
    return [dict(r) for r in DOCS]


@pytest.fixture(scope="session")
def write_jsonl():
    """write_jsonl(path, rows) -> path"""
    return _write_jsonl


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    return _write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", DOCS)


@pytest.fixture(scope="session")
def bm25_dir(tmp_path_factory, corpus_file) -> Path:
    return build_index(corpus_file, tmp_path_factory.mktemp("idx") / "bm25")
