"""AEPO's rollout decisions, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np

from at2po.core.branching import branch_probability, capped_by_budget, global_samples, step_entropy_topk


def test_global_samples_hand() -> None:
    # k·σ(β·Δ): Δ = 0 → 8 of 16; Δ = ln 3 → 16·0.75 = 12; Δ = −ln 3 → 4; a huge negative Δ is clipped to 1
    m = global_samples(16, np.array([1.0, 1.0 + math.log(3), 1.0 - math.log(3), -50.0]), np.ones(4))
    assert m.tolist() == [8, 12, 4, 1]
    assert global_samples(16, np.array([50.0]), np.array([0.0])).tolist() == [16]  # clipped to k
    assert global_samples(10, np.array([1.0]), np.array([0.0]), beta=2.0).tolist() == [round(10 / (1 + math.exp(-2)))]


def test_branch_probability_penalty_and_consecutive_count() -> None:
    u = np.array([0.3, 0.3, 0.3, 0.9])
    p = branch_probability(u, h_t=np.array([1.0, 1.0, 1.0, 0.0]), h_init=np.array([0.5, 0.5, 0.5, 1.0]),
                           consecutive=np.array([0, 2, 30, 0]), weight=0.2, penalty=0.05)
    # (0.3 + 0.2·0.5)·1 = 0.4; ·(1 − 0.1) = 0.36; 1 − 1.5 < 0 → 0; (0.9 − 0.2)·1 = 0.7
    np.testing.assert_allclose(p, [0.4, 0.36, 0.0, 0.7])


def test_capped_by_budget_first_come_first_served() -> None:
    prompt = np.array([0, 1, 0, 0, 1, 2, 0])
    want = np.array([True, True, False, True, True, True, True])
    take = capped_by_budget(prompt, want, remaining=np.array([2, 1, 0]))
    # prompt 0 wants positions 0, 3, 6 → the first 2; prompt 1 wants 1, 4 → the first; prompt 2 has no budget
    assert take.tolist() == [True, True, False, True, False, False, False]
    assert capped_by_budget(np.zeros(0, int), np.zeros(0, bool), np.array([3])).tolist() == []


def test_step_entropy_topk_normalised_by_log_vocab() -> None:
    np.testing.assert_allclose(step_entropy_topk(np.array([math.log(100), 0.0]), 100), [1.0, 0.0])
