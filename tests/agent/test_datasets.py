"""QA data loading (JSONL + Parquet, FlashRAG / Search-R1 shapes), merging, splits, errors, and ``prepare``."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from at2po.agent.datasets import (
    DatasetError,
    load_many,
    load_qa,
    prepare,
    save_qa,
    source_counts,
    split_examples,
)
from at2po.cli import app


def _jsonl(path: Path, rows: list, raw_lines: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + (raw_lines or [])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _qa(n: int, prefix: str) -> list[dict]:
    return [
        {"id": f"{prefix}_{i}", "question": f"{prefix} question {i}?", "golden_answers": [f"a{i}"]} for i in range(n)
    ]


def test_load_flashrag_jsonl(tmp_path):
    rows = [
        {"id": "test_0", "question": "Who wrote Faust?", "golden_answers": ["Goethe", "J. W. von Goethe"],
         "metadata": {"x": 1}},
        {"question": "Capital of Japan?", "golden_answers": "Tokyo"},  # no id, a single string answer
    ]
    path = _jsonl(tmp_path / "nq" / "test.jsonl", rows)
    exs = load_qa(path)
    assert [e.id for e in exs] == ["test_0", "nq-1"]
    assert exs[0].golden_answers == ["Goethe", "J. W. von Goethe"] and exs[1].golden_answers == ["Tokyo"]
    assert {e.data_source for e in exs} == {"nq"}  # folder name for <dataset>/<split>.jsonl
    assert exs[0].meta == {"metadata": {"x": 1}}
    assert load_qa(path, "custom")[0].data_source == "custom"


def test_load_search_r1_parquet(tmp_path):
    # Search-R1's parquet: answers under reward_model.ground_truth.target, per-row data_source, shared ids
    rows = [
        {"id": "train_0", "question": "q nq", "data_source": "nq",
         "reward_model": {"style": "rule", "ground_truth": {"target": ["A", "B"]}}},
        {"id": "train_0", "question": "q hotpot", "data_source": "hotpotqa",
         "reward_model": {"style": "rule", "ground_truth": {"target": ["C"]}}},
    ]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    exs = load_qa(path)
    assert [(e.id, e.data_source, e.golden_answers) for e in exs] == [
        ("train_0", "nq", ["A", "B"]),
        ("hotpotqa/train_0", "hotpotqa", ["C"]),
    ]


def test_parquet_roundtrip(tmp_path):
    exs = load_qa(_jsonl(tmp_path / "a.jsonl", _qa(3, "a")))
    back = load_qa(save_qa(exs, tmp_path / "a.parquet"))
    assert [(e.id, e.question, e.golden_answers, e.data_source) for e in back] == [
        (e.id, e.question, e.golden_answers, e.data_source) for e in exs
    ]


@pytest.mark.parametrize(
    "bad, where, what",
    [
        ('{"question": "q", "golden_answers": ["a"]', ":3:", "invalid JSON"),
        ('{"golden_answers": ["a"]}', ":3:", "'question'"),
        ('{"question": "  ", "golden_answers": ["a"]}', ":3:", "'question'"),
        ('{"question": "q"}', ":3:", "missing 'golden_answers'"),
        ('{"question": "q", "golden_answers": []}', ":3:", "non-empty list"),
        ('{"question": "q", "golden_answers": [""]}', ":3:", "non-empty strings"),
        ('["q", "a"]', ":3:", "expected a JSON object"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, bad, where, what):
    path = _jsonl(tmp_path / "d.jsonl", _qa(1, "d"), ["", bad])  # line 2 is blank (skipped), line 3 is bad
    with pytest.raises(DatasetError) as err:
        load_qa(path)
    msg = str(err.value)
    assert msg.startswith(str(path) + where) and what in msg


def test_bad_parquet_row_and_file(tmp_path):
    path = tmp_path / "x.parquet"
    rows = [{"question": "ok", "golden_answers": ["a"]}, {"question": None, "golden_answers": ["b"]}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DatasetError, match=r"x\.parquet:row 2: missing or empty 'question'"):
        load_qa(path)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match="cannot read Parquet"):
        load_qa(tmp_path / "junk.parquet")
    with pytest.raises(DatasetError, match="unsupported extension"):
        load_qa(_jsonl(tmp_path / "x.csv", []))
    with pytest.raises(DatasetError, match="no such file"):
        load_qa(tmp_path / "missing.jsonl")


def test_duplicate_ids_in_one_source(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", _qa(2, "d") + [{"id": "d_0", "question": "again", "golden_answers": ["x"]}])
    with pytest.raises(DatasetError, match=r"d\.jsonl:3: duplicate id"):
        load_qa(path)


def test_load_many_labels_and_merges(tmp_path):
    a = _jsonl(tmp_path / "nq" / "test.jsonl", _qa(3, "x"))
    b = _jsonl(tmp_path / "hotpot.jsonl", _qa(2, "x"))  # same ids as a
    exs = load_many([a, f"bamboo={b}"])
    assert source_counts(exs) == {"nq": 3, "bamboo": 2}
    assert len({e.id for e in exs}) == 5  # clashing ids made unique with the source prefix
    assert exs[3].id == "bamboo/x_0"
    assert len(load_many([a], limit_per_source=2)) == 2


def test_split_and_shuffle_are_deterministic(tmp_path):
    exs = load_qa(_jsonl(tmp_path / "d.jsonl", _qa(20, "d")))
    tr1, te1 = split_examples(exs, 0.25, seed=3)
    tr2, te2 = split_examples(exs, 0.25, seed=3)
    assert [e.id for e in te1] == [e.id for e in te2] and len(te1) == 5 and len(tr1) == 15
    assert [e.id for e in tr1] == [e.id for e in tr2]
    tr_ids, te_ids = {e.id for e in tr1}, {e.id for e in te1}
    assert tr_ids | te_ids == {e.id for e in exs} and not tr_ids & te_ids
    _, te3 = split_examples(exs, 5, seed=4)
    assert [e.id for e in te3] != [e.id for e in te1]  # another seed, another split
    with pytest.raises(ValueError):
        split_examples(exs, 1.5)


def _flashrag_dir(root: Path) -> Path:
    _jsonl(root / "nq" / "train.jsonl", _qa(6, "train"))
    _jsonl(root / "nq" / "test.jsonl", _qa(4, "test"))
    _jsonl(root / "hotpotqa" / "train.jsonl", _qa(5, "train"))
    _jsonl(root / "hotpotqa" / "dev.jsonl", _qa(3, "dev"))  # no test split: dev is used
    _jsonl(root / "bamboogle" / "test.jsonl", _qa(7, "test"))
    return root


def test_prepare_flashrag_layout(tmp_path):
    src = _flashrag_dir(tmp_path / "flashrag")
    res = prepare(src, tmp_path / "out", max_test_per_source=5, seed=1)
    assert res.counts == {"train": {"hotpotqa": 5, "nq": 6}, "test": {"bamboogle": 5, "hotpotqa": 3, "nq": 4}}
    train, test = load_qa(res.train), load_qa(res.test)
    assert source_counts(train) == {"nq": 6, "hotpotqa": 5} and len({e.id for e in train}) == 11
    assert source_counts(test) == {"bamboogle": 5, "hotpotqa": 3, "nq": 4}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["files"]["test"]["hotpotqa"].endswith("hotpotqa/dev.jsonl")
    # the same inputs and seed give byte-identical files
    res2 = prepare(src, tmp_path / "out2", max_test_per_source=5, seed=1)
    assert res2.train.read_bytes() == res.train.read_bytes() and res2.test.read_bytes() == res.test.read_bytes()
    only = prepare(src, tmp_path / "out3", train_sources=["nq"], test_sources=["bamboogle"])
    assert only.counts == {"train": {"nq": 6}, "test": {"bamboogle": 7}}
    with pytest.raises(DatasetError, match="no dataset folder 'musique'"):
        prepare(src, tmp_path / "out4", test_sources=["musique"])
    with pytest.raises(DatasetError, match=r"no train\.jsonl"):
        prepare(src, tmp_path / "out5", train_sources=["bamboogle"])


def test_prepare_cli(tmp_path):
    src = _flashrag_dir(tmp_path / "flashrag")
    runner = CliRunner()
    args = ["prepare", "--src", str(src), "--out", str(tmp_path / "o"), "--test-sources", "nq,bamboogle"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "test: 11 rows (nq=4, bamboogle=7)" in res.output
    assert (tmp_path / "o" / "train.jsonl").is_file()
    bad = runner.invoke(app, ["prepare", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 2 and "not a directory" in bad.output


def test_prepare_reads_parquet_splits(tmp_path):
    src = tmp_path / "src"
    (src / "popqa").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(_qa(3, "test")), src / "popqa" / "test.parquet")
    res = prepare(src, tmp_path / "out")
    assert res.train is None and res.counts["test"] == {"popqa": 3}
    assert [e.data_source for e in load_qa(res.test)] == ["popqa"] * 3
