"""Demonstrations for SFT: from a JSONL file or as objects, one shape check, errors that name the place."""

from __future__ import annotations

import pytest

from at2po.train.sft import DemoError, check_demos, read_demos

GOOD = {"question": "q?", "answer": "a", "turns": [{"text": "<answer> a </answer>", "observation": None}]}


def test_file_errors_name_file_and_line(tmp_path):
    p = tmp_path / "demos.jsonl"
    p.write_text('{"question": "q?", "turns": [{"text": "t"}]}\n\n{not json\n')
    with pytest.raises(DemoError, match=r"demos.jsonl:3: invalid JSON"):
        read_demos(p)
    p.write_text('{"question": "q?", "turns": [{"text": "t"}]}\n{"question": "q?", "turns": [{"obs": 1}]}\n')
    with pytest.raises(DemoError, match=r"demos.jsonl:2: turns\[0\] needs a 'text' string"):
        read_demos(p)
    assert len(read_demos(p, limit=1)) == 1
    p.write_text("\n")
    with pytest.raises(DemoError, match="no demonstrations"):
        read_demos(p)


def test_objects_get_the_same_checks_naming_their_index():
    assert check_demos([GOOD, GOOD]) == [GOOD, GOOD]
    with pytest.raises(DemoError, match=r"demos\[1\]: expected \{question"):
        check_demos([GOOD, {"question": "q?", "turns": []}])
    with pytest.raises(DemoError, match=r"mine\[0\]: turns\[0\] needs a 'text' string"):
        check_demos([{"question": "q", "turns": ["x"]}], where="mine")
    with pytest.raises(DemoError, match="no demonstrations"):
        check_demos([])
