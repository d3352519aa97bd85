"""`at2po index` and `at2po serve-retriever` as a user runs them (real subprocesses, real HTTP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import requests
from typer.testing import CliRunner

from at2po.cli import app


def test_index_command_builds_bm25(tmp_path, corpus_file):
    res = CliRunner().invoke(app, ["index", "--corpus", str(corpus_file), "--out", str(tmp_path / "i")])
    assert res.exit_code == 0, res.output
    assert "built bm25 index of 8 documents" in res.output
    assert json.loads((tmp_path / "i" / "meta.json").read_text())["kind"] == "bm25"
    again = CliRunner().invoke(app, ["index", "--corpus", str(corpus_file), "--out", str(tmp_path / "i")])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_index_command_reports_bad_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "ok"}\n{"id": "b", "body": "x"}\n')
    res = CliRunner().invoke(app, ["index", "--corpus", str(bad), "--out", str(tmp_path / "i")])
    assert res.exit_code == 2 and f"{bad}:2:" in res.output
    assert not (tmp_path / "i").exists()


def test_serve_retriever_subprocess(bm25_dir):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "at2po.cli", "serve-retriever", "--index", str(bm25_dir), "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving "), line + proc.stderr.read() if proc.poll() is not None else line
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/retrieve")
        r = requests.post(url, json={"queries": ["capital of Germany"], "topk": 1, "return_scores": True}, timeout=10)
        assert r.json()["result"][0][0]["document"]["id"] == "berlin"
        assert requests.get(url.replace("/retrieve", "/health"), timeout=10).json() == {
            "status": "ok",
            "index": str(bm25_dir),
            "kind": "bm25",
            "num_docs": 8,
        }
    finally:
        proc.terminate()
        proc.wait(10)
