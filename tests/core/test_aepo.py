"""AEPO's entropy-balanced clipping and entropy-aware advantage, and the authors' H_turn estimator, against
direct computations (autograd for the gradients, loops for H_turn)."""

from __future__ import annotations

import math

import pytest
import torch

from at2po.core.diagnostics import turn_entropy, turn_entropy_ref
from at2po.core.losses import entropy_aware_advantages, policy_loss
from at2po.core.segments import checked_turn_index


def _case(seed: int = 0, B: int = 4, T: int = 16):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g) * 3
    lp = (old + torch.randn(B, T, generator=g) * 0.6).requires_grad_(True)  # ratios well outside [0.8, 1.2]
    adv = torch.randn(B, T, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.2
    return lp, old, adv, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entropy_balanced_clip_has_ppos_value_and_a_nonzero_gradient_above_the_bound(seed) -> None:
    lp, old, adv, mask = _case(seed)
    eps = 0.2
    loss_aepo, _ = policy_loss("aepo", lp, old, adv, mask, agg="token-mean", clip_low=eps, clip_high=eps)
    loss_ppo, _ = policy_loss("token", lp, old, adv, mask, agg="token-mean", clip_low=eps, clip_high=eps)
    torch.testing.assert_close(loss_aepo, loss_ppo, rtol=0, atol=1e-7)  # same value
    (g_aepo,) = torch.autograd.grad(loss_aepo, lp)
    (g_ppo,) = torch.autograd.grad(loss_ppo, lp)
    r = torch.exp(lp.detach() - old)
    n = mask.sum()
    above = mask & (r > 1 + eps) & (adv > 0)  # PPO: clipped, zero gradient; AEPO: −A·(1+ε)·∇log π / n
    assert above.any()
    torch.testing.assert_close(g_ppo[above], torch.zeros_like(g_ppo[above]))
    torch.testing.assert_close(g_aepo[above], (-adv * (1 + eps) / n)[above])
    rest = mask & ~above  # everywhere else the two gradients agree (below 1 − ε both are 0 for A < 0)
    torch.testing.assert_close(g_aepo[rest], g_ppo[rest])


def test_entropy_balanced_clip_with_dual_clip() -> None:
    lp, old, adv, mask = _case(3)
    a, _ = policy_loss("aepo", lp, old, adv, mask, agg="token-mean", clip_ratio_c=3.0)
    b, _ = policy_loss("token", lp, old, adv, mask, agg="token-mean", clip_ratio_c=3.0)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_entropy_aware_advantage_against_a_direct_computation() -> None:
    _, _, adv, mask = _case(4)
    h = torch.rand(adv.shape, generator=torch.Generator().manual_seed(9)) * 2
    out = entropy_aware_advantages(adv, h, mask, weight=0.2)
    vals = [float(h[b, t]) for b in range(h.shape[0]) for t in range(h.shape[1]) if mask[b, t]]
    mu = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))
    for b in range(h.shape[0]):
        for t in range(h.shape[1]):
            want = float(adv[b, t]) * (1 + 0.2 * (float(h[b, t]) - mu) / sd) if mask[b, t] else float(adv[b, t])
            assert float(out[b, t]) == pytest.approx(want, rel=1e-5, abs=1e-6)
    flat = torch.ones_like(h)  # all entropies equal: z = 0, advantages unchanged
    torch.testing.assert_close(entropy_aware_advantages(adv, flat, mask), adv)


def _turn_entropy_ref_loop(lp, old, mask, turn_ids) -> float:
    hs = []
    for b in range(lp.shape[0]):
        turns: dict[int, float] = {}
        for t in range(lp.shape[1]):
            if mask[b, t]:
                turns[int(turn_ids[b, t])] = turns.get(int(turn_ids[b, t]), 0.0) + float(lp[b, t] - old[b, t])
        if not turns:
            continue
        seq = sum(turns.values())
        z = [v / seq for v in turns.values()]
        mx = max(z)
        e = [math.exp(x - mx) for x in z]
        p = [x / sum(e) for x in e]
        n = len(p)
        hs.append(0.0 if n == 1 else -sum(q * math.log(q) for q in p if q > 0) / math.log(n))
    return sum(hs) / len(hs)


@pytest.mark.parametrize("seed", range(5))
def test_turn_entropy_ref_matches_a_loop_and_differs_from_ours(seed) -> None:
    lp, old, _, mask = _case(seed, B=4, T=16)
    turn_ids = torch.cumsum(torch.rand(lp.shape, generator=torch.Generator().manual_seed(seed)) < 0.25, dim=1)
    tid = checked_turn_index(turn_ids, mask)
    ref = turn_entropy_ref(lp.detach(), old, mask, tid)
    assert float(ref) == pytest.approx(_turn_entropy_ref_loop(lp.detach(), old, mask, turn_ids), rel=1e-5)
    ours = turn_entropy(lp.detach(), old, mask, tid)
    assert 0.0 <= float(ours) <= 1.0 and 0.0 <= float(ref) <= 1.0
    _, m = policy_loss("turn", lp, old, torch.zeros_like(old), mask, turn_ids=turn_ids)
    assert float(m["turn_entropy_ref"]) == pytest.approx(float(ref)) and "turn_entropy" in m
