"""Tree packing (``at2po.core.packing``) against a brute-force trie, on hypothesis-generated rows that share
prefixes the way tree leaves do (forks, identical rows, rows that are prefixes of others)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.core.packing import pack_rows, split_rows, unique_token_count


@st.composite
def shared_prefix_rows(draw, max_rows: int = 9, max_len: int = 14, vocab: int = 4):
    """Rows built by forking earlier rows at random depths (small vocabulary: accidental sharing too)."""
    rows: list[list[int]] = []
    for _ in range(draw(st.integers(1, max_rows))):
        if rows and draw(st.booleans()):
            base = rows[draw(st.integers(0, len(rows) - 1))]
            row = base[: draw(st.integers(0, len(base)))]
        else:
            row = []
        row = row + draw(st.lists(st.integers(0, vocab - 1), max_size=max_len - len(row)))
        rows.append(row if row else [0])
    return rows


def _padded(rows: list[list[int]], pad: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T + 2), pad, dtype=torch.long)  # extra padding columns: must be ignored
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, torch.tensor([len(r) for r in rows])


def _brute_trie(rows: list[list[int]]) -> dict[tuple[int, ...], int]:
    nodes: dict[tuple[int, ...], int] = {}
    for r in rows:
        for t in range(1, len(r) + 1):
            nodes.setdefault(tuple(r[:t]), len(nodes))
    return nodes


@settings(max_examples=200, deadline=None)
@given(shared_prefix_rows())
def test_pack_is_the_token_trie(rows: list[list[int]]) -> None:
    ids, lens = _padded(rows)
    pack = pack_rows(ids, lens)
    trie = _brute_trie(rows)
    assert pack.n_tokens == len(trie) == unique_token_count(ids, lens)
    prefix_of = {}  # packed index → the prefix it stands for
    for b, r in enumerate(rows):
        ix = pack.index[b]
        assert (ix[len(r):] == -1).all()
        assert (pack.ids[ix[: len(r)]] == torch.tensor(r)).all()
        assert (pack.pos[ix[: len(r)]] == torch.arange(len(r))).all()
        for t in range(len(r)):
            key = tuple(r[: t + 1])
            assert prefix_of.setdefault(int(ix[t]), key) == key  # one node per prefix, one prefix per node
            assert int(pack.parent[ix[t]]) == (int(ix[t - 1]) if t else -1)
    assert len(prefix_of) == pack.n_tokens
    # pre-order: parents come first, and the subtree of v is [v, end[v])
    assert (pack.parent < torch.arange(pack.n_tokens)).all()
    anc = pack.ancestor_mask()
    for u in range(pack.n_tokens):
        chain, v = set(), u
        while v >= 0:
            chain.add(v)
            v = int(pack.parent[v])
        assert set(anc[u].nonzero()[:, 0].tolist()) == chain
    # owners really introduced their nodes: the owner row passes through the node
    for u in range(pack.n_tokens):
        o = int(pack.owner[u])
        assert int(pack.index[o, int(pack.pos[u])]) == u


@settings(max_examples=150, deadline=None)
@given(shared_prefix_rows(max_rows=12), st.integers(1, 30))
def test_split_rows_respects_the_budget_and_covers_every_row(rows: list[list[int]], budget: int) -> None:
    ids, lens = _padded(rows)
    groups = split_rows(ids, lens, budget)
    assert sorted(i for g in groups for i in g) == list(range(len(rows)))
    for g in groups:
        n = len(_brute_trie([rows[i] for i in g]))
        assert n <= budget or n == max(len(rows[i]) for i in g)  # over budget: one row (and copies adding nothing)
    if unique_token_count(ids, lens) <= budget:
        assert len(groups) == 1


def test_split_keeps_a_tree_together_and_recomputes_only_its_prefix() -> None:
    prompt = list(range(10, 20))
    tree_a = [prompt + [1, 2, 3], prompt + [1, 2, 4], prompt + [5]]
    tree_b = [[30, 31, 32, 1], [30, 31, 32, 2]]
    rows = tree_b + tree_a
    ids, lens = _padded(rows)
    groups = split_rows(ids, lens, budget_tokens=16)
    assert sorted(map(sorted, groups)) == [[0, 1], [2, 3, 4]]
    # a budget below one tree splits it; each part pays the shared prompt again
    parts = split_rows(ids[2:], lens[2:], budget_tokens=14)
    assert len(parts) == 2
    # the prompt twice
    assert sum(len(_brute_trie([tree_a[i] for i in p])) for p in parts) == len(_brute_trie(tree_a)) + 10


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        pack_rows(torch.zeros(3, dtype=torch.long), torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="lengths"):
        pack_rows(torch.zeros((2, 3), dtype=torch.long), torch.tensor([1, 4]))
    with pytest.raises(ValueError, match="budget"):
        split_rows(np.zeros((1, 2), dtype=np.int64), np.array([2]), 0)


def test_copies_of_a_row_over_the_budget_ride_along() -> None:
    """A row longer than the budget is a group of its own, but its identical copies add no tokens: same group."""
    ids = torch.tensor([[1, 2, 3, 4, 5]] * 3 + [[9, 9, 0, 0, 0]])
    lens = torch.tensor([5, 5, 5, 2])
    assert sorted(map(sorted, split_rows(ids, lens, 3))) == [[0, 1, 2], [3]]
