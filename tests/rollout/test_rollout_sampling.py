"""Sampling kernels: counter-based uniforms and top-k / top-p filtering."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.rollout.sampling import filter_logits, sample, uniforms


def test_uniforms_are_uniform_and_per_sequence():
    seeds = torch.arange(20_000, dtype=torch.int64) * 7919
    u = uniforms(seeds, step=3)
    assert 0.0 < float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01
    hist = torch.histc(u.float(), bins=10, min=0, max=1)
    assert float(hist.min()) > 1700  # ≈ 2000 per bin
    # a sequence's draw does not depend on its neighbours
    assert torch.equal(uniforms(seeds[5:6], 3), u[5:6])
    assert not torch.equal(uniforms(seeds, 4), u)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-5, 5), min_size=2, max_size=30),
    st.floats(0.05, 1.0),
    st.integers(0, 10),
)
def test_filter_keeps_smallest_nucleus(vals, top_p, top_k):
    logits = torch.tensor([vals], dtype=torch.float32)
    kept = torch.isfinite(filter_logits(logits, top_k, top_p))[0]
    # a mode always survives (with tied maxima the sort may keep any of them: each is a smallest nucleus)
    assert bool(kept[logits[0] == logits[0].max()].any())
    if top_k > 0:
        kth = torch.topk(logits[0], min(top_k, len(vals))).values[-1]
        assert int(kept.sum()) <= max(top_k, int((logits[0] >= kth).sum()))
    if top_k == 0:
        p = torch.softmax(logits[0], -1)
        assert float(p[kept].sum()) >= top_p - 1e-5


def test_sample_matches_distribution():
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]])).repeat(30_000, 1)
    tok, lp = sample(logits, torch.arange(30_000, dtype=torch.int64), step=0, temperature=1.0)
    freq = torch.bincount(tok, minlength=3).double() / 30_000
    assert torch.allclose(freq, torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64), atol=0.015)
    assert torch.allclose(lp, torch.log(torch.tensor([0.1, 0.6, 0.3]))[tok], atol=1e-5)
    tok_p, _ = sample(logits[:1000], torch.arange(1000, dtype=torch.int64), 0, 1.0, top_p=0.5)
    assert bool((tok_p == 1).all())  # nucleus 0.5 keeps only the 0.6 token
