"""Grouped decode attention: row groups that skip the padding columns compute the same attention and the engine
samples what teacher forcing gives."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.rollout.engine import SamplingParams
from at2po.rollout.grouped_attention import (
    NAME,
    grouped_sdpa_attention_forward,
    plan_groups,
    use_grouped_attention,
)
from at2po.rollout.hf_engine import HFEngine
from tests.rollout.test_hf_engine import teacher_forced_logprobs


def right_aligned_mask(lengths: list[int], width: int) -> torch.Tensor:
    """[B, W]: row b attends its last lengths[b] columns (the slab layout)."""
    cols = torch.arange(width)
    return (cols[None, :] >= width - torch.tensor(lengths)[:, None]).long()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=200))
def test_groups_cover_every_row_and_skip_only_masked_columns(lengths: list[int]) -> None:
    W = max(lengths)
    mask = right_aligned_mask(lengths, W)
    groups = plan_groups(mask)
    if groups is None:
        return
    assert groups[0][0] == 0 and groups[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(groups))  # contiguous, in order
    for g0, g1, c0 in groups:
        assert g1 > g0 and not mask[g0:g1, :c0].any()  # nothing a row attends is skipped
    read = sum((g1 - g0) * (W - c0) for g0, g1, c0 in groups)
    assert read + 2048 * (len(groups) - 1) < len(lengths) * W  # each extra call saves more than it costs


def test_small_or_even_batches_keep_one_call() -> None:
    assert plan_groups(right_aligned_mask([5, 9, 200], 200)) is None  # too few rows to split
    assert plan_groups(right_aligned_mask([100] * 64, 100)) is None  # nothing to skip
    groups = plan_groups(right_aligned_mask([400] * 32 + [20] * 32, 400))
    assert groups == [(0, 32, 0), (32, 64, 380)]
    # a group of 16 rows 100 columns narrower reads 1,600 columns less: not worth a second call
    assert plan_groups(right_aligned_mask([400] * 16 + [300] * 16, 400)) is None


class _Attn(torch.nn.Module):  # what sdpa_attention_forward reads off the attention module
    num_key_value_groups = 2
    is_causal = True


@pytest.mark.parametrize("with_mask", [True, False])
def test_grouped_attention_equals_sdpa(with_mask: bool) -> None:
    torch.manual_seed(0)
    B, H, W, D = 48, 4, 120, 8
    lengths = [120 - 3 * b for b in range(B)]  # longest first, as the engine orders rows
    q, k, v = torch.randn(B, H, 1, D), torch.randn(B, H // 2, W, D), torch.randn(B, H // 2, W, D)
    mask = right_aligned_mask(lengths, W).bool()[:, None, None, :] if with_mask else None  # [B, 1, 1, W]
    groups = plan_groups(right_aligned_mask(lengths if with_mask else [W] * B, W)) or [(0, 24, 0), (24, 48, 0)]
    ref, _ = grouped_sdpa_attention_forward(_Attn(), q, k, v, mask, scaling=D ** -0.5)
    out, _ = grouped_sdpa_attention_forward(_Attn(), q, k, v, mask, at2po_groups=groups, scaling=D ** -0.5)
    assert out.shape == ref.shape == (B, 1, H, D)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_engine_samples_exactly_with_grouped_attention(tiny):
    """40 contexts of 4–589 tokens: decode attention runs in groups (fewer key/values read than the padded window)
    and every log-prob still matches teacher forcing."""
    model, tok = tiny
    assert model.config._attn_implementation == "sdpa"
    base = tok("I should look up Paris. <search>capital Paris</search> The capital of France is")["input_ids"]
    contexts = [(base * 40)[: 4 + 15 * i] for i in range(40)]
    eng = HFEngine(model, tok, prefix_cache=False, stop_at_eos=False)
    gens = eng.generate(contexts, SamplingParams(max_new_tokens=6, seed=5))
    st_ = eng.stats()
    n = 6
    width = sum(max(len(c) for c in contexts) + j for j in range(1, n))  # the padded window of each decode step
    assert st_.kv_live <= st_.kv_read < 0.8 * len(contexts) * width
    for ctx, g in zip(contexts, gens, strict=True):
        ref = teacher_forced_logprobs(model, ctx, g.token_ids)
        assert max(abs(a - b) for a, b in zip(ref, g.logprobs, strict=True)) < 1e-4
    assert model.config._attn_implementation == "sdpa"  # switched back after decoding


def test_grouped_attention_can_be_switched_off(tiny):
    """``grouped_attention=False``: one SDPA call over the whole window (every masked column read) — the same
    tokens and log-probs as grouped decoding, more key/values read."""
    model, tok = tiny
    base = tok("I should look up Paris. <search>capital Paris</search> The capital of France is")["input_ids"]
    contexts = [(base * 40)[: 4 + 15 * i] for i in range(40)]
    params = SamplingParams(max_new_tokens=6, seed=5)
    runs = {}
    for grouped in (True, False):
        eng = HFEngine(model, tok, prefix_cache=False, stop_at_eos=False, grouped_attention=grouped)
        runs[grouped] = (eng.generate(contexts, params), eng.stats())
    (on, st_on), (off, st_off) = runs[True], runs[False]
    width = sum(max(len(c) for c in contexts) + j for j in range(1, 6))
    assert st_off.kv_read == len(contexts) * width > st_on.kv_read
    for a, b in zip(on, off, strict=True):
        assert a.token_ids == b.token_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-5


def test_other_attention_implementations_are_left_alone(tiny):
    model, _ = tiny
    model.config._attn_implementation = "eager"
    try:
        with use_grouped_attention(model) as grouped:
            assert not grouped and model.config._attn_implementation == "eager"
    finally:
        model.config._attn_implementation = "sdpa"
    with pytest.raises(RuntimeError), use_grouped_attention(model):
        assert model.config._attn_implementation == NAME
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
