"""Sampler↔trainer log-prob mismatch and truncated importance sampling (at2po.core.tis)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.core.tis import logprob_mismatch, tis_weights


def test_mismatch_counts_only_generated_tokens():
    sampler = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    trainer = torch.tensor([[-1.1, -2.0, -100.0], [-0.2, -0.5, -9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])  # the −100 sits on a prompt/observation token
    m = logprob_mismatch(sampler, trainer, mask)
    assert m["mean_abs"].item() == pytest.approx((0.1 + 0 + 0.3 + 0 + 0) / 5, abs=1e-6)
    assert m["max_abs"].item() == pytest.approx(0.3, abs=1e-6)
    expected_ratio = (math.exp(-0.1) + 1 + math.exp(0.3) + 1 + 1) / 5
    assert m["ratio_mean"].item() == pytest.approx(expected_ratio, rel=1e-6)


def test_mismatch_rejects_shape_mismatch_and_handles_empty_mask():
    with pytest.raises(ValueError, match="shapes differ"):
        logprob_mismatch(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
    m = logprob_mismatch(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3))
    assert m["mean_abs"].item() == 0.0 and m["max_abs"].item() == 0.0


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-8, 0), min_size=1, max_size=16),
    st.lists(st.floats(-8, 0), min_size=1, max_size=16),
    st.floats(0.5, 5.0),
)
def test_tis_weights_are_truncated_ratios(a, b, cap):
    n = min(len(a), len(b))
    old, samp = torch.tensor([a[:n]], dtype=torch.float64), torch.tensor([b[:n]], dtype=torch.float64)
    w = tis_weights(old, samp, cap)
    ratio = torch.exp(old - samp)
    assert torch.all(w <= cap + 1e-12) and torch.all(w > 0)
    torch.testing.assert_close(w, torch.minimum(ratio, torch.full_like(ratio, cap)))
    assert not w.requires_grad


def test_tis_is_identity_when_sampler_and_trainer_agree():
    lp = torch.log(torch.rand(3, 5)).requires_grad_()
    torch.testing.assert_close(tis_weights(lp, lp.detach()), torch.ones(3, 5))
    with pytest.raises(ValueError, match="cap must be > 0"):
        tis_weights(lp, lp, cap=0.0)
