"""The tiny test model: a real byte-level BPE tokenizer with ChatML + a random Llama, loadable via from_pretrained."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from at2po.cli import app
from at2po.models.tiny import build_tiny_model

TEXTS = ["<think>I should search.</think>\n<search>capital of France</search>", "Paris is the capital of France."] * 5


def test_build_and_load(tmp_path):
    path = build_tiny_model(TEXTS, tmp_path / "m", vocab_size=320, hidden_size=32, num_hidden_layers=1)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.vocab_size == len(tok) and model.config.num_hidden_layers == 1
    assert tok.convert_ids_to_tokens(tok.eos_token_id) == "<|im_end|>" and tok.pad_token == "<pad>"
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    for text in ["<search>capital of France</search>", "héllo ✓ 日本 \x00", "unseen words zyx"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text  # byte-level: every string encodes and decodes exactly
    ids = tok("<|im_start|>", add_special_tokens=False)["input_ids"]
    assert len(ids) == 1  # specials are single tokens
    with torch.no_grad():
        out = model(torch.tensor([tok("Paris is")["input_ids"]]))
    assert out.logits.shape[-1] == len(tok)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="texts is empty"):
        build_tiny_model([], tmp_path / "x")
    with pytest.raises(ValueError, match="unknown LlamaConfig field"):
        build_tiny_model(TEXTS, tmp_path / "y", hidden_sise=8)


def test_cli_make_tiny_model(tmp_path):
    src = tmp_path / "sft.jsonl"
    src.write_text(json.dumps({"question": "q?", "turns": [{"text": TEXTS[0], "observation": None}]}) + "\n")
    args = ["make-tiny-model", "--out", str(tmp_path / "m"), "--texts", str(src), "--vocab-size", "300"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert AutoTokenizer.from_pretrained(tmp_path / "m").eos_token == "<|im_end|>"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{oops\n')
    res = CliRunner().invoke(app, ["make-tiny-model", "--out", str(tmp_path / "n"), "--texts", str(bad)])
    assert res.exit_code != 0 and "bad.jsonl:2" in res.output
