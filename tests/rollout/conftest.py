"""Fixtures for the rollout tests: a tiny real model (byte-level BPE + random Llama), a BM25 index over a small
corpus, and the real SearchEnv over it (see ``rollout_fixtures.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rollout_fixtures import DOCS, ScriptedCallEnv, tiny_texts

from at2po.agent.retrievers.bm25 import BM25Retriever
from at2po.agent.search_env import EnvConfig
from at2po.models.tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tiny_texts(), tmp_path_factory.mktemp("tiny"), vocab_size=400, seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def retriever() -> BM25Retriever:
    return BM25Retriever.from_documents(DOCS)


@pytest.fixture()
def scripted_env(tiny, retriever):
    _, tok = tiny
    env = ScriptedCallEnv(tok, retriever, EnvConfig(max_tool_calls=3, tool_timeout_s=5.0))
    yield env
    env.close()
