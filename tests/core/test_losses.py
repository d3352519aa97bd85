"""Policy losses vs a slow per-turn reference written from the spec, plus reductions, clipping, safety."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.core.diagnostics import kl_estimate, turn_entropy
from at2po.core.losses import AGG_MODES, aggregate, default_clip, policy_loss
from at2po.core.segments import checked_turn_index

AGG_MODE_NAMES = tuple(AGG_MODES)  # the built-ins, snapshotted before any test registers more

NAMES = ("token", "sequence", "turn")


# --- slow reference: explicit loops over rows, turns and tokens ---------------------------------------------
def reference_loss(name, lp, old, adv, mask, turn_ids, eps_l, eps_h, agg):
    """ATPO/GSPO/GRPO written out literally: one geometric-mean ratio per segment (turn / row / token),
    value sg[s], gradient through each token's own log-prob, min(s·A, clip(s)·A), then the aggregation."""
    B, T = lp.shape
    rows = []
    for b in range(B):
        toks = [t for t in range(T) if mask[b, t]]
        if name == "token":
            segments = [[t] for t in toks]
        elif name == "sequence":
            segments = [toks] if toks else []
        else:
            by_turn: dict[int, list[int]] = {}
            for t in toks:
                by_turn.setdefault(int(turn_ids[b, t]), []).append(t)
            segments = list(by_turn.values())
        row = []
        for seg in segments:
            idx = torch.tensor(seg)
            s = torch.exp((lp[b, idx] - old[b, idx]).mean()).detach()
            for t in seg:
                r = s * torch.exp(lp[b, t] - lp[b, t].detach())
                a = adv[b, t]
                row.append(torch.maximum(-a * r, -a * torch.clamp(r, 1 - eps_l, 1 + eps_h)))
        rows.append(row)
    flat = [x for row in rows for x in row]
    nonempty = [row for row in rows if row]
    if agg == "token-mean":
        return sum(flat) / max(len(flat), 1)
    if agg == "seq-mean-token-mean":
        return sum(sum(row) / len(row) for row in nonempty) / max(len(nonempty), 1)
    if agg == "seq-mean-token-sum":
        return sum(sum(row) for row in nonempty) / max(len(nonempty), 1)
    return sum(flat) / T


@st.composite
def loss_inputs(draw):
    B, T = draw(st.integers(1, 4)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**16))
    noise = draw(st.sampled_from([1e-4, 3e-3, 0.05, 0.5]))
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 4
    lp = (old + noise * torch.randn(B, T, generator=g, dtype=torch.float64)).requires_grad_(True)
    mask = torch.rand(B, T, generator=g) < draw(st.sampled_from([0.5, 0.9, 1.0]))
    # turns: non-decreasing per row, sometimes skipping ids (empty turns)
    steps = (torch.rand(B, T, generator=g) < 0.3).long() * torch.randint(1, 3, (B, T), generator=g)
    turn_ids = torch.minimum(steps.cumsum(-1), torch.arange(T))  # a real row's turn k starts at position >= k
    adv_turn = torch.randn(B, T + 3, generator=g, dtype=torch.float64)
    per_tok = draw(st.booleans())
    adv = torch.randn(B, T, generator=g, dtype=torch.float64) if per_tok else adv_turn.gather(1, turn_ids)
    return lp, old, adv, mask, turn_ids


@settings(max_examples=60, deadline=None)
@given(
    inp=loss_inputs(),
    name=st.sampled_from(NAMES),
    agg=st.sampled_from(AGG_MODE_NAMES),
    clip=st.sampled_from([None, (0.2, 0.28), (1e-3, 2e-3)]),
)
def test_matches_slow_reference_value_and_grad(inp, name, agg, clip) -> None:
    lp, old, adv, mask, turn_ids = inp
    eps_l, eps_h = default_clip(name) if clip is None else clip
    lp2 = lp.detach().clone().requires_grad_(True)
    loss, _ = policy_loss(name, lp, old, adv, mask.float(), turn_ids, eps_l, eps_h, agg)
    ref = reference_loss(name, lp2, old, adv, mask, turn_ids, eps_l, eps_h, agg)
    if not isinstance(ref, torch.Tensor):  # no generated token at all
        assert loss.item() == 0.0
        return
    loss.backward()
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-12)
    torch.testing.assert_close(lp.grad, lp2.grad, rtol=1e-9, atol=1e-12)


def _grads(name, lp, *args, **kw):
    x = lp.detach().clone().requires_grad_(True)
    loss, metrics = policy_loss(name, x, *args, **kw)
    loss.backward()
    return loss.detach(), x.grad, metrics


@settings(max_examples=30, deadline=None)
@given(inp=loss_inputs(), agg=st.sampled_from(AGG_MODE_NAMES))
def test_turn_reduces_to_sequence_and_token(inp, agg) -> None:
    lp, old, adv, mask, _ = inp
    B, T = lp.shape
    m = mask.float()
    one_turn = torch.zeros(B, T, dtype=torch.long)
    l_turn, g_turn, _ = _grads("turn", lp, old, adv, m, one_turn, 3e-3, 4e-3, agg)
    l_seq, g_seq, _ = _grads("sequence", lp, old, adv, m, None, 3e-3, 4e-3, agg)
    torch.testing.assert_close(l_turn, l_seq, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_turn, g_seq, rtol=1e-12, atol=1e-14)
    per_token = torch.arange(T).expand(B, T)
    l_turn, g_turn, _ = _grads("turn", lp, old, adv, m, per_token, 0.2, 0.2, agg)
    l_tok, g_tok, _ = _grads("token", lp, old, adv, m, None, 0.2, 0.2, agg)
    torch.testing.assert_close(l_turn, l_tok, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_turn, g_tok, rtol=1e-12, atol=1e-14)


def test_clipping_removes_whole_turn_and_only_that_turn() -> None:
    lp = -torch.ones(1, 6, dtype=torch.float64)
    # turn 0: geometric-mean ratio e^{0.1} > 1 + 4e-3 with A > 0 -> clipped; turn 1: ratio exactly 1
    old = lp.clone()
    old[0, :3] -= torch.tensor([0.05, 0.1, 0.15], dtype=torch.float64)
    turns = torch.tensor([[0, 0, 0, 1, 1, 1]])
    adv = torch.ones(1, 6, dtype=torch.float64)
    _, g, met = _grads("turn", lp, old, adv, torch.ones(1, 6), turns)
    assert torch.all(g[0, :3] == 0.0)
    torch.testing.assert_close(g[0, 3:], torch.full((3,), -1 / 6, dtype=torch.float64))
    assert met["pg_clipfrac"].item() == pytest.approx(0.5)
    assert met["pg_clipfrac_turn"].item() == pytest.approx(0.5)
    # the token loss with the same ε clips token by token instead: every turn-0 token is clipped too,
    # but a turn whose geometric mean stays in range keeps all its tokens even if one is far out
    old2 = lp.clone()
    old2[0, :3] -= torch.tensor([0.05, -0.025, -0.025], dtype=torch.float64)  # mean log-ratio 0
    _, g_turn, _ = _grads("turn", lp, old2, adv, torch.ones(1, 6), turns)
    _, g_tok, _ = _grads("token", lp, old2, adv, torch.ones(1, 6), turns, 3e-3, 4e-3)
    assert torch.all(g_turn[0, :3] != 0.0)
    assert g_tok[0, 0] == 0.0  # ratio e^{.05} clipped per token


def test_masked_tokens_get_exactly_zero_gradient_even_if_nonfinite() -> None:
    g = torch.Generator().manual_seed(0)
    B, T = 3, 20
    old = -torch.rand(B, T, generator=g)
    lp = old + 0.01 * torch.randn(B, T, generator=g)
    mask = torch.rand(B, T, generator=g) < 0.6
    lp[~mask] = -torch.inf
    old[~mask] = torch.nan
    turns = torch.arange(T).div(5, rounding_mode="floor").expand(B, T)
    adv = torch.randn(B, T, generator=g)
    adv[~mask] = torch.nan
    for name in NAMES:
        for agg in AGG_MODE_NAMES:
            loss, grad, met = _grads(name, lp, old, adv, mask.float(), turns, agg=agg)
            assert torch.isfinite(loss)
            assert torch.all(grad[~mask] == 0.0)
            assert torch.isfinite(grad).all() and (grad[mask] != 0).any()
            assert all(torch.isfinite(v) for k, v in met.items() if not k.startswith("ratio_m"))


def test_masked_hole_does_not_split_a_turn() -> None:
    lp = torch.tensor([[-1.0, -1.0, -1.0, -1.0]], dtype=torch.float64)
    old = lp - torch.tensor([[0.002, 0.004, 9.0, -0.003]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])  # token 2 is a masked warning inside turn 0
    turns = torch.zeros(1, 4, dtype=torch.long)
    adv = torch.ones(1, 4, dtype=torch.float64)
    loss, grad, _ = _grads("turn", lp, old, adv, mask, turns, agg="token-mean")
    s = math.exp((0.002 + 0.004 - 0.003) / 3)  # one turn over tokens 0, 1, 3 (in range: 1.001)
    assert loss.item() == pytest.approx(-s)
    torch.testing.assert_close(grad, torch.tensor([[-s / 3, -s / 3, 0.0, -s / 3]], dtype=torch.float64))


def _safety_case(name: str, agg: str, T: int) -> None:
    g = torch.Generator().manual_seed(1)
    # large log-ratios (±80), empty turns (ids skip), a row with no generated token
    B = 3
    old = -torch.rand(B, T, generator=g) * 5
    lp = old + 80.0 * torch.sign(torch.randn(B, T, generator=g))
    mask = torch.rand(B, T, generator=g) < 0.7
    mask[2] = False
    turns = (torch.arange(T) // (T // 7) * 3).clamp(max=T - 1).expand(B, T)  # ids 0, 3, 6, ...
    adv = torch.randn(B, T, generator=g)
    loss, grad, met = _grads(name, lp, old, adv, mask.float(), turns, agg=agg, ref_log_prob=old, kl_coef=0.1)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert torch.isfinite(met["turn_entropy"]) and torch.isfinite(met["approx_kl"])
    # all-equal rewards -> zero advantages -> zero policy loss and gradient
    loss0, grad0, _ = _grads(name, lp, old, torch.zeros(B, T), mask.float(), turns, agg=agg)
    assert loss0.item() == 0.0 and torch.all(grad0 == 0.0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("agg", AGG_MODE_NAMES)
def test_numerical_safety(name: str, agg: str) -> None:
    _safety_case(name, agg, T=2048)


@pytest.mark.parametrize("name", NAMES)
def test_numerical_safety_very_long_rows(name: str) -> None:
    _safety_case(name, "seq-mean-token-mean", T=100_000)


def test_aggregation_modes_hand() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 0.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert aggregate(x, m, "token-mean").item() == pytest.approx(16 / 4)
    assert aggregate(x, m, "seq-mean-token-mean").item() == pytest.approx((2 + 10) / 2)  # empty row left out
    assert aggregate(x, m, "seq-mean-token-sum").item() == pytest.approx((6 + 10) / 2)
    assert aggregate(x, m, "seq-mean-token-sum-norm").item() == pytest.approx(16 / 4)
    assert aggregate(x, m, "seq-mean-token-sum-norm", norm=8).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="unknown loss aggregation 'sum'"):
        aggregate(x, m, "sum")


def test_default_clip_ranges() -> None:
    lp = torch.zeros(1, 2, dtype=torch.float64)
    adv = torch.ones(1, 2, dtype=torch.float64)
    turns = torch.tensor([[0, 1]])
    for name, inside, outside in (("turn", 3.5e-3, 4.5e-3), ("sequence", 3.5e-4, 4.5e-4), ("token", 0.15, 0.25)):
        old = -torch.tensor([[math.log1p(inside), math.log1p(outside)]], dtype=torch.float64)
        if name == "sequence":  # one ratio per row: use two rows
            old = -torch.tensor([[math.log1p(inside)] * 2, [math.log1p(outside)] * 2], dtype=torch.float64)
            _, g, met = _grads(name, torch.zeros(2, 2, dtype=torch.float64), old, torch.ones(2, 2), torch.ones(2, 2))
            assert torch.all(g[0] != 0) and torch.all(g[1] == 0)
            continue
        _, g, met = _grads(name, lp, old, adv, torch.ones(1, 2), turns)
        assert g[0, 0] != 0 and g[0, 1] == 0, name
        assert met["pg_clipfrac"].item() == pytest.approx(0.5)


def test_dual_clip_caps_negative_advantage_loss() -> None:
    lp = torch.zeros(1, 2, dtype=torch.float64)
    old = torch.tensor([[-5.0, 0.0]], dtype=torch.float64)  # ratio e^5 on token 0
    adv = -torch.ones(1, 2, dtype=torch.float64)
    loss, g, met = _grads("token", lp, old, adv, torch.ones(1, 2), agg="token-mean", clip_ratio_c=3.0)
    assert loss.item() == pytest.approx((3.0 + 1.0) / 2)
    assert g[0, 0] == 0.0 and g[0, 1] == pytest.approx(0.5)
    assert met["pg_clipfrac_dual"].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="dual clip"):
        policy_loss("token", lp, old, adv, torch.ones(1, 2), clip_ratio_c=0.5)


def test_kl_estimators_and_penalty_and_entropy_bonus() -> None:
    lp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.0]], dtype=torch.float64)
    d = lp - ref  # 0.5, -1
    torch.testing.assert_close(kl_estimate(lp, ref, "k1"), d)
    torch.testing.assert_close(kl_estimate(lp, ref, "k2"), 0.5 * d**2)
    torch.testing.assert_close(kl_estimate(lp, ref, "k3"), torch.exp(-d) + d - 1)
    adv = torch.zeros(1, 2, dtype=torch.float64)
    m = torch.ones(1, 2)
    ent = torch.tensor([[0.3, 0.7]], dtype=torch.float64, requires_grad=True)
    loss, _ = policy_loss(
        "token", lp, lp, adv, m, ref_log_prob=ref, kl_coef=0.1, kl_estimator="k2", entropy=ent, entropy_coef=0.01
    )
    assert loss.item() == pytest.approx(0.1 * (0.125 + 0.5) / 2 - 0.01 * 0.5)
    loss.backward()
    torch.testing.assert_close(ent.grad, torch.full((1, 2), -0.005, dtype=torch.float64))


def test_turn_entropy_diagnostic() -> None:
    lp = torch.zeros(3, 4, dtype=torch.float64)
    d0, d1 = 0.2, -0.1
    old = -torch.tensor([[d0, d0, d1, d1], [d0, d0, d0, d0], [0.1, 0.1, 0.1, 0.1]], dtype=torch.float64)
    turns = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0], [0, 1, 2, 3]])
    mask = torch.ones(3, 4, dtype=torch.bool)
    tid = checked_turn_index(turns, mask)
    k0, k1 = math.exp(d0) - d0 - 1, math.exp(d1) - d1 - 1
    seq = (k0 + k1) / 2
    z = torch.tensor([k0 / seq, k1 / seq])
    p = torch.softmax(z, 0)
    h_row0 = float(-(p * p.log()).sum() / math.log(2))
    # row 1: one turn -> 0; row 2: equal KL on 4 turns -> uniform -> 1
    h = turn_entropy(lp, old, mask, tid).item()
    assert h == pytest.approx((h_row0 + 0.0 + 1.0) / 3, rel=1e-6)
    _, met = policy_loss("turn", lp.requires_grad_(True), old, torch.ones(3, 4), mask.float(), turns)
    assert met["turn_entropy"].item() == pytest.approx(h)


def test_bad_inputs_raise() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="needs turn_ids"):
        policy_loss("turn", x, x, x, x)
    with pytest.raises(ValueError, match="advantages has shape"):
        policy_loss("token", x, x, torch.zeros(2, 4), x)
    with pytest.raises(ValueError, match="unknown policy loss 'ppo'"):
        policy_loss("ppo", x, x, x, x)
    with pytest.raises(ValueError, match=r"turn_ids\[1, 2\] = 3"):
        policy_loss("turn", x, x, x, torch.ones(2, 3), torch.tensor([[0, 0, 1], [0, 1, 3]]))
    with pytest.raises(ValueError, match="kl_coef > 0 needs ref_log_prob"):
        policy_loss("token", x, x, x, x, kl_coef=0.1)
