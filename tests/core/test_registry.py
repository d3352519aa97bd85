"""The registries of pluggable pieces: names, clashes, and user entries running through the kernels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from at2po.core import credit, expansion, losses
from at2po.core.registry import Registry

# root 0 -> 1, 2; 1 -> 3, 4 (leaves); 2 is a leaf
PARENT = np.array([-1, 0, 0, 1, 1])
ENTROPY = np.array([0.0, 1.0, 3.0, 0.5, 1.5])
REWARD = np.array([np.nan, np.nan, 1.0, 0.0, 1.0])


@pytest.fixture
def scratch():
    """Names registered by a test are removed afterwards, so other tests see only the built-ins."""
    added: list[tuple[dict, str]] = []
    yield lambda reg, name: added.append((reg, name))
    for reg, name in added:
        reg.pop(name, None)


def test_registry_add_lookup_clash_and_reimport() -> None:
    reg: Registry = Registry("widget", "my.register_widget")

    def f() -> int:
        return 1

    reg.add("f", f)
    assert reg.lookup("f") is f and "f" in reg and sorted(reg) == ["f"]
    reg.add("f", f)  # the same function again (a module imported twice): fine
    with pytest.raises(ValueError, match="widget 'f' is already registered"):
        reg.add("f", lambda: 2)
    with pytest.raises(ValueError, match=r"unknown widget 'g'; registered: \['f'\] \(add one with my\.register_widget"):
        reg.lookup("g")
    with pytest.raises(ValueError, match="non-empty string"):
        reg.add("", f)


def test_user_value_and_adv_modes_run_through_the_kernels(scratch) -> None:
    @credit.register_value_mode("t_mean_again")
    def mean_again(parent, entropy, leaf_values, leaves):
        w = 1.0 / credit.child_count(parent)[np.maximum(parent, 0)]
        return credit.propagate_weighted(parent, w, leaf_values)

    @credit.register_adv_mode("t_double")
    def double(values, parent):
        return 2.0 * values

    scratch(credit.VALUE_MODES, "t_mean_again")
    scratch(credit.ADV_MODES, "t_double")
    ref = credit.node_values(PARENT, ENTROPY, REWARD, "child_mean")
    got = credit.node_values(PARENT, ENTROPY, REWARD, "t_mean_again")
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    a = credit.turn_advantages(PARENT, ENTROPY, REWARD, "t_mean_again", "t_double")
    np.testing.assert_allclose(a, np.where(PARENT >= 0, 2.0 * ref, 0.0), rtol=0, atol=1e-12)  # root stays 0

    @credit.register_adv_mode("t_bad_shape")
    def bad(values, parent):
        return values[:2]

    scratch(credit.ADV_MODES, "t_bad_shape")
    with pytest.raises(ValueError, match="advantage mode 't_bad_shape' returned shape"):
        credit.turn_advantages(PARENT, ENTROPY, REWARD, adv_mode="t_bad_shape")
    with pytest.raises(ValueError, match="unknown value mode 'nope'"):
        credit.node_values(PARENT, ENTROPY, REWARD, "nope")


def test_user_expansion_mode_ranks_candidates_and_sets_groups(scratch) -> None:
    @expansion.register_expansion_mode("t_lowest_entropy")
    def lowest(parent, entropy, alpha, u):
        return np.where(parent >= 0, entropy, 0.0)  # the root (0) first, then the least uncertain

    scratch(expansion.EXPANSION_MODES, "t_lowest_entropy")
    is_leaf = np.array([False, False, True, True, True])
    assert expansion.select_nodes(PARENT, ENTROPY, is_leaf, 3, mode="t_lowest_entropy") == [0, 1, 0]
    assert expansion.select_nodes(PARENT, ENTROPY, is_leaf, 2) == [1, 0]  # entropy mode: H(1) − α·2 > root's
    assert expansion.EXPANSION_MODES["random"].chain_groups and not expansion.EXPANSION_MODES["entropy"].chain_groups
    with pytest.raises(ValueError, match="topological order"):
        expansion.select_nodes(np.array([-1, 0, -1]), np.zeros(3), np.zeros(3, bool), 1)


def test_user_aggregation_and_its_weight(scratch) -> None:
    @losses.register_aggregation("t_row_max", weight="rows")
    def row_max(x, mask_f, norm):
        return (x * mask_f).amax(-1).mean()

    scratch(losses.AGG_MODES, "t_row_max")
    x = torch.tensor([[1.0, 5.0, 2.0], [3.0, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert float(losses.aggregate(x, m, "t_row_max")) == pytest.approx((5 + 3) / 2)
    assert losses.AGG_MODES["token-mean"].weight == "tokens" and losses.AGG_MODES["t_row_max"].weight == "rows"
    with pytest.raises(ValueError, match="aggregation weight must be"):
        losses.register_aggregation("t_x", weight="bytes")
