"""HFEngine: log-probs, stopping, seeding, batching bounds and prefix reuse, on a tiny real model."""

from __future__ import annotations

import pytest
import torch

from at2po.rollout.engine import SamplingParams
from at2po.rollout.hf_engine import HFEngine


def teacher_forced_logprobs(model, ctx: list[int], gen: list[int], temperature: float = 1.0) -> list[float]:
    with torch.no_grad():
        logits = model(torch.tensor([ctx + gen])).logits[0].float() / temperature  # [T, V]
    lp = torch.log_softmax(logits, -1)
    return [float(lp[len(ctx) - 1 + j, t]) for j, t in enumerate(gen)]


@pytest.fixture()
def contexts(tiny):
    _, tok = tiny
    texts = ["What is the capital of France?", "Rome", "I should look up Paris. <search>capital Paris", "a"]
    return [tok(t)["input_ids"] for t in texts]


def test_logprobs_match_teacher_forcing_for_ragged_batch(tiny, contexts):
    model, tok = tiny
    eng = HFEngine(model, tok, prefix_cache=False)
    gens = eng.generate(contexts, SamplingParams(max_new_tokens=12, temperature=0.7, seed=1))
    for ctx, g in zip(contexts, gens, strict=True):
        assert len(g.token_ids) == len(g.logprobs) >= 1
        ref = teacher_forced_logprobs(model, ctx, g.token_ids, temperature=0.7)
        assert max(abs(a - b) for a, b in zip(ref, g.logprobs, strict=True)) < 1e-4
    st = eng.stats()
    assert st.prefill_tokens == sum(map(len, contexts)) and st.cached_tokens == 0
    assert st.generated_tokens == sum(len(g.token_ids) for g in gens)


def test_attention_work_counters(tiny, contexts):
    """kv_live counts the key/values each decode forward really attends (a row of context L after j sampled tokens
    attends L + j), kv_read the padded batch width: equal for equal lengths, larger for a ragged batch."""
    model, tok = tiny
    n = 6
    eng = HFEngine(model, tok, prefix_cache=False, stop_at_eos=False)
    gens = eng.generate(contexts, SamplingParams(max_new_tokens=n, seed=4))
    assert all(len(g.token_ids) == n for g in gens)
    st = eng.stats()
    assert st.kv_live == sum(len(c) + j for c in contexts for j in range(1, n))  # no forward after the last sample
    assert st.kv_read == len(contexts) * sum(max(map(len, contexts)) + j for j in range(1, n)) > st.kv_live
    eng.reset_stats()
    same = [contexts[0]] * 3
    eng.generate(same, SamplingParams(max_new_tokens=n, seed=4))
    assert eng.stats().kv_read == eng.stats().kv_live == 3 * sum(len(contexts[0]) + j for j in range(1, n))


def test_prefix_reuse_prefills_only_the_new_suffix(tiny, contexts):
    model, tok = tiny
    eng = HFEngine(model, tok)
    first = eng.generate(contexts, SamplingParams(max_new_tokens=10, seed=2))
    obs = tok("\n\n<result>\nParis is the capital of France.\n</result>\n\n")["input_ids"]
    longer = [c + g.token_ids + obs for c, g in zip(contexts, first, strict=True)]
    # a fork: a proper prefix of a finished sequence (context + first 3 generated tokens)
    fork = contexts[0] + first[0].token_ids[:3]
    eng.reset_stats()
    second = eng.generate(longer + [fork], SamplingParams(max_new_tokens=10, seed=3))
    st = eng.stats()
    # each continuation recomputes its last sampled token (never fed) + the observation; the fork 1 token
    assert st.prefill_tokens == len(contexts) * (1 + len(obs)) + 1
    assert st.cached_tokens == sum(map(len, longer)) + len(fork) - st.prefill_tokens
    for ctx, g in zip(longer + [fork], second, strict=True):  # cached key/values are exact
        ref = teacher_forced_logprobs(model, ctx, g.token_ids)
        assert max(abs(a - b) for a, b in zip(ref, g.logprobs, strict=True)) < 1e-4


def test_identical_contexts_are_prefilled_once(tiny, contexts):
    """The n chains of a prompt arrive together with the same context: one prefill serves them all, and each still
    samples from its own stream exactly as without sharing."""
    model, tok = tiny
    batch = [contexts[0], contexts[1], contexts[0], contexts[0], contexts[1]]
    seeds = [1, 2, 3, 4, 5]
    p = SamplingParams(max_new_tokens=12, temperature=1.0)
    eng = HFEngine(model, tok)
    shared = eng.generate(batch, p, seeds=seeds)
    st = eng.stats()
    assert st.prefill_tokens == len(contexts[0]) + len(contexts[1])
    assert st.cached_tokens == sum(map(len, batch)) - st.prefill_tokens
    alone = HFEngine(model, tok, prefix_cache=False).generate(batch, p, seeds=seeds)
    assert [g.token_ids for g in shared] == [g.token_ids for g in alone]
    assert len({tuple(g.token_ids) for g in shared}) > 2  # own streams: the copies did not sample alike
    for ctx, g in zip(batch, shared, strict=True):
        ref = teacher_forced_logprobs(model, ctx, g.token_ids)
        assert max(abs(a - b) for a, b in zip(ref, g.logprobs, strict=True)) < 1e-4


def test_seeded_sampling_is_deterministic_and_independent_of_batch(tiny, contexts):
    model, tok = tiny
    p = SamplingParams(max_new_tokens=16, seed=7)
    a = HFEngine(model, tok, prefix_cache=False).generate(contexts, p)
    b = HFEngine(model, tok, prefix_cache=False).generate(contexts, p)
    alone = HFEngine(model, tok, prefix_cache=False).generate(contexts[:1], p)
    chunked = HFEngine(model, tok, prefix_cache=False, max_batch_sequences=1).generate(contexts, p)
    other = HFEngine(model, tok, prefix_cache=False).generate(contexts, SamplingParams(max_new_tokens=16, seed=8))
    assert [g.token_ids for g in a] == [g.token_ids for g in b] == [g.token_ids for g in chunked]
    assert alone[0].token_ids == a[0].token_ids
    assert [g.token_ids for g in other] != [g.token_ids for g in a]


def test_explicit_per_sequence_seeds(tiny, contexts):
    """``seeds`` gives each context its own stream: any context, at any position, with the same seed samples the
    same tokens; without ``seeds`` the stream of context i is derived from (params.seed, i)."""
    from at2po.rollout.seeds import derive_seed

    model, tok = tiny
    eng = HFEngine(model, tok, prefix_cache=False)
    p = SamplingParams(max_new_tokens=16, seed=7)
    a = eng.generate(contexts, p, seeds=[11, 12, 13, 14])
    rev = eng.generate(contexts[::-1], p, seeds=[14, 13, 12, 11])
    assert [g.token_ids for g in a] == [g.token_ids for g in rev[::-1]]
    one = eng.generate(contexts[2:3], SamplingParams(max_new_tokens=16, seed=0), seeds=[13])
    assert one[0].token_ids == a[2].token_ids
    derived = eng.generate(contexts, p, seeds=[derive_seed(7, i) for i in range(len(contexts))])
    assert [g.token_ids for g in derived] == [g.token_ids for g in eng.generate(contexts, p)]
    with pytest.raises(ValueError, match="3 seeds for 4 contexts"):
        eng.generate(contexts, p, seeds=[1, 2, 3])


def test_stop_string_straddling_tokens(tiny, contexts):
    model, tok = tiny
    eng = HFEngine(model, tok, prefix_cache=False, stop_at_eos=False)
    params = SamplingParams(max_new_tokens=60, seed=11)  # seeded: the rerun samples the same tokens
    free = eng.generate(contexts[:1], params)[0]
    pieces = [tok.decode([t]) for t in free.token_ids]
    # a stop string made of the last char of token j and the first char of token j+1, not seen earlier
    for j in range(1, len(pieces) - 1):
        if all(p and p.isascii() and p.isprintable() for p in pieces[j : j + 2]):
            stop = pieces[j][-1] + pieces[j + 1][0]
            if stop not in "".join(pieces[: j + 1]):
                break
    else:
        pytest.skip("no straddling ASCII pair in the greedy continuation")
    g = eng.generate(contexts[:1], SamplingParams(max_new_tokens=60, seed=11, stop=("zzzz", stop)))[0]
    assert g.finish_reason == "stop" and g.stop_str == stop
    assert g.token_ids == free.token_ids[: j + 2]  # stopped on the token completing the string, which is kept


def test_stop_token_ids_and_length(tiny, contexts):
    model, tok = tiny
    eng = HFEngine(model, tok, prefix_cache=False, stop_at_eos=False)
    free = eng.generate(contexts[:1], SamplingParams(max_new_tokens=20, temperature=0.0))[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 20
    stop_id = free.token_ids[5]
    g = eng.generate(contexts[:1], SamplingParams(max_new_tokens=20, temperature=0.0, stop_token_ids=(stop_id,)))[0]
    first = free.token_ids.index(stop_id)
    assert g.finish_reason == "eos" and g.token_ids == free.token_ids[: first + 1]


def test_top_k_one_is_greedy(tiny, contexts):
    model, tok = tiny
    eng = HFEngine(model, tok, prefix_cache=False)
    greedy = eng.generate(contexts, SamplingParams(max_new_tokens=8, temperature=0.0))
    top1 = eng.generate(contexts, SamplingParams(max_new_tokens=8, temperature=1.0, top_k=1, seed=5))
    assert [g.token_ids for g in greedy] == [g.token_ids for g in top1]


def test_bad_contexts_raise_clear_errors(tiny):
    model, tok = tiny
    eng = HFEngine(model, tok)
    with pytest.raises(ValueError, match="context 1 is empty"):
        eng.generate([[1, 2], []], SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="token id 100000"):
        eng.generate([[1, 100000]], SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="max_model_len"):
        HFEngine(model, tok, max_model_len=4).generate([[1, 2, 3, 4, 5]], SamplingParams(max_new_tokens=2))


def test_model_length_bound_stops_generation(tiny, contexts):
    model, tok = tiny
    eng = HFEngine(model, tok, prefix_cache=False, stop_at_eos=False, max_model_len=len(contexts[0]) + 3)
    g = eng.generate(contexts[:1], SamplingParams(max_new_tokens=50))[0]
    assert g.finish_reason == "length" and len(g.token_ids) == 3


class Staggered:
    """A scheduler that starts with two requests and sends each next one when an earlier one finishes, so
    requests join a running batch of rows with other lengths (continuous batching)."""

    def __init__(self, contexts, seeds, budgets):
        from at2po.rollout.engine import Request

        self.todo = [Request(c, s, m, i) for i, (c, s, m) in enumerate(zip(contexts, seeds, budgets, strict=True))]
        self.out: dict[int, object] = {}
        self.sent = 2
        self.polls = 0

    def next_requests(self, idle):
        self.polls += 1
        reqs, self.todo = self.todo[: self.sent], self.todo[self.sent:]
        self.sent = 0
        return reqs

    def finished(self, done):
        for req, g in done:
            self.out[req.tag] = g
        self.sent += len(done)


def test_continuous_run_matches_generate_and_teacher_forcing(tiny, contexts):
    from at2po.rollout.engine import Engine

    model, tok = tiny
    ctxs = contexts * 3  # 12 requests
    seeds, budgets = list(range(100, 112)), [4, 9, 16, 6] * 3
    p = SamplingParams(max_new_tokens=99, temperature=0.9, stop=("</search>",))
    for prefix_cache in (False, True):
        eng = HFEngine(model, tok, prefix_cache=prefix_cache, max_batch_sequences=3)
        sched = Staggered(ctxs, seeds, budgets)
        eng.run(sched, p)
        assert sorted(sched.out) == list(range(12)) and sched.polls > 6
        assert eng.stats().decode_steps > 0 and eng.stats().sequences == 12
        for i, (c, s, m) in enumerate(zip(ctxs, seeds, budgets, strict=True)):
            g = sched.out[i]
            params = SamplingParams(**{**p.__dict__, "max_new_tokens": m})
            alone = HFEngine(model, tok, prefix_cache=False).generate([c], params, seeds=[s])[0]
            assert g.token_ids == alone.token_ids and g.finish_reason == alone.finish_reason
            assert len(g.token_ids) <= m
            ref = teacher_forced_logprobs(model, c, g.token_ids, temperature=0.9)
            assert max(abs(a - b) for a, b in zip(ref, g.logprobs, strict=True)) < 1e-4
    # engines without a step-wise loop run the same schedule in waves (Engine.run), with the same samples
    waves = type("Waves", (HFEngine,), {"run": Engine.run})(model, tok)
    sched_w = Staggered(ctxs, seeds, budgets)
    waves.run(sched_w, p)
    assert [sched_w.out[i].token_ids for i in range(12)] == [sched.out[i].token_ids for i in range(12)]


def test_continuous_run_rejects_bad_requests(tiny, contexts):
    from at2po.rollout.engine import Request

    model, tok = tiny

    class One:
        def __init__(self, req):
            self.req = [req]

        def next_requests(self, idle):
            r, self.req = self.req, []
            return r

        def finished(self, done):
            pass

    eng = HFEngine(model, tok)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        eng.run(One(Request(contexts[0], 1, 0, "q7")), SamplingParams())
    with pytest.raises(ValueError, match="context 0 is empty"):
        eng.run(One(Request([], 1, 4, "q8")), SamplingParams())
