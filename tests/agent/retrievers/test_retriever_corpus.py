from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from at2po.agent.retrievers.corpus import CorpusError, Document, read_corpus, split_contents, write_corpus


def test_reads_title_text_rows(corpus_file, doc_rows):
    docs = read_corpus(corpus_file)
    assert [d.id for d in docs] == [r["id"] for r in doc_rows]
    assert docs[0] == Document("paris", "Paris", doc_rows[0]["text"])


def test_reads_search_r1_contents_and_int_ids(tmp_path, write_jsonl):
    p = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"id": 7, "contents": '"Ada Lovelace"\nAda was a mathematician.\nSecond line.'},
            {"id": "x", "contents": "no title here"},
        ],
    )
    a, b = read_corpus(p)
    assert a == Document("7", "Ada Lovelace", "Ada was a mathematician.\nSecond line.")
    assert b == Document("x", "", "no title here")
    assert a.contents == '"Ada Lovelace"\nAda was a mathematician.\nSecond line.'


def test_reads_gzip_and_skips_blank_lines(tmp_path, doc_rows):
    p = tmp_path / "c.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write(json.dumps(doc_rows[0]) + "\n\n" + json.dumps(doc_rows[1]) + "\n")
    assert [d.id for d in read_corpus(p)] == ["paris", "berlin"]


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "invalid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"title": "t", "text": "x"}', "missing 'id'"),
        ('{"id": 1.5, "text": "x"}', "'id' must be a string or integer"),
        ('{"id": "a"}', "need 'text'"),
        ('{"id": "a", "text": 3}', "'text' must be a string"),
        ('{"id": "a", "contents": ["x"]}', "'contents' must be a string"),
        ('{"id": "a", "title": 5, "text": "x"}', "'title' must be a string"),
        ('{"id": "a", "title": "", "text": "  "}', "empty document"),
        ('{"id": "paris", "text": "dup"}', "duplicate id 'paris' (first on line 1)"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, doc_rows, line, message):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(doc_rows[0]) + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(CorpusError) as e:
        read_corpus(p)
    assert f"{p}:3:" in str(e.value)
    assert message in str(e.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        read_corpus(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(CorpusError, match="empty"):
        read_corpus(tmp_path / "empty.jsonl")


_line = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters='\n"\r'), min_size=1).filter(str.strip)


@given(title=_line, text=st.text(st.characters(blacklist_categories=("Cs",))))
def test_contents_round_trip(title, text):
    """Document.contents → split_contents recovers (title, text) for any one-line title."""
    d = Document("i", title, text)
    assert split_contents(d.contents) == (title, text)


def test_write_then_read_round_trip(tmp_path):
    docs = [Document("1", "T", "body"), Document("2", "", "untitled ü")]
    assert read_corpus(write_corpus(docs, tmp_path / "out.jsonl")) == docs
