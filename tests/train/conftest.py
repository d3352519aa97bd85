"""A tiny real search world for trainer tests: corpus → BM25 index, QA files, a tiny HF model + tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from at2po.agent.protocol import INSTRUCTION, format_answer_turn, format_observation, format_search_turn

FACTS = [
    ("Alba", "Alba is a city. The mayor of Alba is Bren Hollow."),
    ("Bren Hollow", "Bren Hollow was born in Corvin."),
    ("Dorn", "Dorn is a town. The mayor of Dorn is Esk Miller."),
    ("Esk Miller", "Esk Miller was born in Fennick."),
    ("Galt", "Galt is a village. The mayor of Galt is Hana Roe."),
    ("Hana Roe", "Hana Roe was born in Ivel."),
]
QA = [
    ("Who is the mayor of Alba?", "Bren Hollow"),
    ("Who is the mayor of Dorn?", "Esk Miller"),
    ("Who is the mayor of Galt?", "Hana Roe"),
    ("Where was Bren Hollow born?", "Corvin"),
    ("Where was Esk Miller born?", "Fennick"),
    ("Where was Hana Roe born?", "Ivel"),
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from at2po.agent.retrievers import build_index
    from at2po.models.tiny import build_tiny_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny_world")
    corpus = write_jsonl(
        root / "corpus.jsonl", [{"id": str(i), "title": t, "text": x} for i, (t, x) in enumerate(FACTS)]
    )
    qa = [{"id": f"q{i}", "question": q, "golden_answers": [a], "data_source": "toy" if i % 2 else "toy2"}
          for i, (q, a) in enumerate(QA)]
    train = write_jsonl(root / "train.jsonl", qa)
    test = write_jsonl(root / "test.jsonl", qa[:4])
    index = build_index(corpus, root / "index")
    demos = []
    for (q, a), (title, text) in zip(QA, FACTS, strict=True):
        demos.append({"question": q, "golden_answers": [a], "turns": [
            {"text": format_search_turn("I should search.", q),
             "observation": format_observation(f"Doc 1(Title: {title}) {text}")},
            {"text": format_answer_turn("Found it.", a), "observation": None},
        ]})
    sft = write_jsonl(root / "sft.jsonl", demos)
    texts = [INSTRUCTION] + [x for _, x in FACTS] + [json.dumps(d) for d in demos]
    model = build_tiny_model(texts, root / "model", vocab_size=400, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    return {"root": root, "corpus": corpus, "train": train, "test": test, "index": Path(index), "sft": sft,
            "model": model}


def small_overrides(world: dict[str, Path], out: Path) -> list[str]:
    """A run small enough for a unit test: 2 prompts × a 2+1×2-leaf tree, short turns, 2 steps."""
    return [
        f"model.path={world['model']}", f"data.train={world['train']}", f"data.test={world['test']}",
        f"data.index={world['index']}", f"train.output_dir={out}",
        "train.steps=2", "train.batch_prompts=2", "train.mini_batch_prompts=1", "train.micro_batch_tokens=1024",
        "rollout.m=2", "rollout.l=1", "rollout.k=2", "rollout.max_turn_tokens=16", "rollout.max_response_tokens=96",
        "rollout.n=3", "env.max_tool_calls=2", "env.max_obs_tokens=48", "optim.lr=1e-3",
        "eval.max_examples=2", "logging.tensorboard=true", "logging.progress=false",
    ]


@pytest.fixture(scope="session")
def sft_model(tiny_world: dict[str, Path]) -> Path:
    """The tiny model after an SFT warm start on the toy demonstrations: it writes well-formed turns, so
    rollouts get varied rewards (a real learning signal). ~15 s, built only by the tests that ask for it."""
    from at2po.config import load_config
    from at2po.train.sft import sft

    out = tiny_world["root"] / "sft-run"
    cfg = load_config(overrides=small_overrides(tiny_world, out) + [
        f"data.sft={tiny_world['sft']}", "sft.epochs=120", "sft.lr=1e-2", "sft.batch_rows=2",
        "logging.tensorboard=false",
    ])
    return sft(cfg)
