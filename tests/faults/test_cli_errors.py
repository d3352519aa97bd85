"""User errors at the command line: one line, no traceback, before any model is loaded; ``--debug`` (or
AT2PO_DEBUG=1) shows the traceback; internal errors keep theirs."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from typer.testing import CliRunner

from at2po.agent.datasets import DatasetError
from at2po.cli import app, user_errors
from at2po.errors import UserError


@pytest.fixture
def broken_weights_model(tiny_world, tmp_path):
    """A model directory that passes the path check but cannot be loaded: an error about *it* would mean the
    model was loaded before the retriever was checked."""
    d = tmp_path / "model"
    shutil.copytree(tiny_world["model"], d)
    (d / "model.safetensors").write_bytes(b"not weights")
    return d


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def test_eval_against_a_dead_retriever_fails_fast_naming_data_index(tiny_world, broken_weights_model) -> None:
    t0 = time.monotonic()
    r = CliRunner().invoke(app, ["eval", "--preset", "at2po", f"model.path={broken_weights_model}",
                                 f"data.test={tiny_world['test']}", "data.index=http://127.0.0.1:9/"])
    assert r.exit_code == 2, r.output
    lines = _lines(r.output)
    assert len(lines) == 1 and lines[0].startswith("error: data.index='http://127.0.0.1:9/' does not answer a search")
    assert "Connection refused" in lines[0] and "at2po serve-retriever" in lines[0]
    assert "Traceback" not in r.output and time.monotonic() - t0 < 20
    print(f"\n[fault] dead retriever at start-up: one-line error after {time.monotonic() - t0:.1f} s (3 retries)")


def test_train_with_a_corrupt_local_index_names_it(tiny_world, broken_weights_model, tmp_path) -> None:
    index = tmp_path / "index"
    shutil.copytree(tiny_world["index"], index)
    (index / "meta.json").write_text("{not json")
    r = CliRunner().invoke(app, ["train", "--preset", "grpo", f"model.path={broken_weights_model}",
                                 f"data.train={tiny_world['train']}", f"data.index={index}", "data.test=null",
                                 f"train.output_dir={tmp_path / 'run'}"])
    assert r.exit_code == 2, r.output
    [line] = _lines(r.output)
    assert line.startswith(f"error: data.index={str(index)!r} cannot be opened") and "at2po index --corpus" in line


def test_a_broken_jsonl_row_is_one_line(tiny_world, tmp_path) -> None:
    bad = tmp_path / "test.jsonl"
    bad.write_text(json.dumps({"question": "q?", "golden_answers": ["a"]}) + "\n{broken\n")
    args = ["eval", "--preset", "at2po", f"model.path={tiny_world['model']}", f"data.test={bad}",
            f"data.index={tiny_world['index']}"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2
    [line] = _lines(r.output)
    assert line.startswith("error: ") and f"{bad}:2: invalid JSON" in line
    assert "Traceback" not in r.output and "╭" not in r.output  # no rich traceback panel

    dbg = CliRunner().invoke(app, ["--debug", *args])  # --debug: the exception (and its traceback) comes through
    assert isinstance(dbg.exception, DatasetError)
    env = CliRunner().invoke(app, args, env={"AT2PO_DEBUG": "1"})
    assert isinstance(env.exception, DatasetError)


def test_internal_errors_keep_their_traceback() -> None:
    def user() -> None:
        raise UserError("fix X")

    def internal() -> None:
        raise KeyError("bug")

    import typer

    with pytest.raises(typer.Exit):
        user_errors(user)()
    with pytest.raises(KeyError):  # not swallowed into a one-liner
        user_errors(internal)()


def test_eval_against_a_dead_retriever_without_the_check_says_the_tool_failed(tiny_world, sft_model, tmp_path) -> None:
    """The issue's original report: EM 0.000, format 1.000, tool_calls 1.0 and no warning. Now the table has the
    tool columns and a warning says the scores measure a broken tool."""
    out = tmp_path / "eval.json"
    r = CliRunner().invoke(app, ["eval", "--preset", "at2po", f"model.path={sft_model}",
                                 f"data.test={tiny_world['test']}", "data.index=http://127.0.0.1:9/",
                                 "faults.check_retriever=false",
                                 "env.retriever_retries=0", "rollout.max_turn_tokens=40", "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    report = json.loads(out.read_text())
    calls = int(report["tools"]["calls"])
    assert calls > 0 and report["tools"]["errors"] == calls and report["overall"]["tool_error_rate"] == 1.0
    assert f"warning: eval: 100% of {calls} tool calls failed ({calls} errors, 0 timeouts)" in text
    assert "Connection refused" in text and "the scores measure a broken tool, not the model" in text
    assert "tool_err" in r.output and report["tool_last_error"]["tool"] == "search"
    assert f"search: {calls} calls, {calls} failed, latency p50" in text  # the table's caption
    assert report["tools"]["search/latency_p99_s"] >= report["tools"]["search/latency_p50_s"] >= 0
