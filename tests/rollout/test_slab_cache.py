"""SlabCache: in-place key/value buffers for continuous batching, checked against a per-row reference."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import DynamicCache

from at2po.rollout.slab_cache import SlabCache

H, D, LAYERS = 2, 4, 2


def block(rows: list[torch.Tensor], width: int) -> DynamicCache:
    """A prefilled block: each row's key/values right-aligned in ``width`` columns (zeros on the left)."""
    c = DynamicCache()
    for layer in range(LAYERS):
        k = torch.zeros(len(rows), H, width, D)
        for b, r in enumerate(rows):
            k[b, :, width - r.shape[1]:] = r + layer  # layer-dependent so layers cannot be mixed up
        c.update(k, -k, layer)
    return c


def new_rows(rng: random.Random, width: int) -> tuple[list[torch.Tensor], list[int], list[int]]:
    """Distinct rows (a cached prefix of any length + a suffix of 1–3 new columns), the rows to append (each
    distinct row once, then repeats), and each distinct row's suffix length."""
    rows, suffix = [], []
    for _ in range(rng.randint(1, 3)):
        suffix.append(rng.randint(1, 3))
        rows.append(torch.randn(H, rng.randint(0, width + 8) + suffix[-1], D))
    return rows, list(range(len(rows))) + [rng.randrange(len(rows)) for _ in range(rng.randint(0, 2))], suffix


def append(cache: SlabCache, rows: list[torch.Tensor], src: list[int], suffix: list[int], right: int) -> int:
    """What the engine does to admit requests: reserve, write cached prefixes, let the 'forward' write the
    left-padded suffix block through the block view (its padding columns are NaN: they must never land), copy
    the repeated rows, commit. Returns the columns the window grew."""
    w, S = max(r.shape[1] for r in rows), max(suffix)
    grew = cache.reserve(len(src), w, right)
    keep = torch.arange(S)[None, :] < (S - torch.tensor(suffix))[:, None]  # [b, S]: padding of the suffix block
    view = cache.block(len(rows), w, filled=w - S, keep=keep)
    for b, (r, s) in enumerate(zip(rows, suffix, strict=True)):
        p = r.shape[1] - s
        if p:
            cache.put_prefix(view, b, [r[:, :p] + k for k in range(LAYERS)], [-(r[:, :p] + k) for k in range(LAYERS)],
                             p, end=s)
    for layer, lay in enumerate(view.layers):
        block_ = torch.full((len(rows), H, S, D), float("nan"))
        for b, (r, s) in enumerate(zip(rows, suffix, strict=True)):
            block_[b, :, S - s:] = r[:, -s:] + layer
        lay.update(block_, -block_)
    if len(src) > len(rows):
        cache.copy_rows(src[len(rows):], list(range(len(rows), len(src))), w)
    cache.commit(len(src))
    return grew


def check(cache: SlabCache, ref: list[torch.Tensor]) -> None:
    assert cache.rows == len(ref)
    for layer, lay in enumerate(cache.layers):
        assert lay.keys.shape == (len(ref), H, cache.width, D) and lay.get_seq_length() == cache.width
        for b, r in enumerate(ref):
            n = r.shape[1]
            assert n <= cache.width
            assert torch.equal(lay.keys[b, :, cache.width - n:], r + layer)
            assert torch.equal(lay.values[b, :, cache.width - n:], -(r + layer))
            assert torch.isfinite(lay.keys[b]).all()  # masked columns hold zeros or stale values, never NaN


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_match_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    new_row = lambda n: torch.randn(H, n, D)  # noqa: E731
    ref = [new_row(rng.randint(1, 6)) for _ in range(rng.randint(1, 3))]
    w = max(r.shape[1] for r in ref)
    cache = SlabCache.from_cache(block(ref, w), rows_cap=len(ref), right=2)
    check(cache, ref)
    grew_total = 0
    for _ in range(60):
        op = rng.choice(["step", "step", "append", "remove", "drop"])
        if op == "step" and ref:  # one decode step: every live row appends a column
            col = torch.randn(len(ref), H, 1, D)
            for layer, lay in enumerate(cache.layers):
                lay.update(col + layer, -(col + layer))
            ref = [torch.cat([r, col[b]], dim=1) for b, r in enumerate(ref)]
        elif op == "append":  # new rows (some repeated), sometimes wider than the live window
            rows, src, suffix = new_rows(rng, cache.width)
            grew_total += append(cache, rows, src, suffix, right=rng.randint(0, 9))
            ref += [rows[i] for i in src]
        elif op == "remove" and len(ref) > 1:
            dead = rng.sample(range(len(ref)), rng.randint(1, len(ref) - 1))
            order = cache.remove_rows(dead)
            assert sorted(order) == sorted(set(range(len(ref))) - set(dead))
            ref = [ref[i] for i in order]
        elif op == "drop" and ref:  # forget columns no row needs
            free = cache.width - max(r.shape[1] for r in ref)
            cache.drop_leading(rng.randint(0, free))
        check(cache, ref)
    assert grew_total > 0  # some block was wider than the window


def test_decode_step_writes_in_place_until_the_buffer_is_full() -> None:
    ref = [torch.randn(H, 3, D)]
    cache = SlabCache.from_cache(block(ref, 3), rows_cap=1, right=4)
    buf = cache.layers[0].kbuf
    for _ in range(4):
        cache.layers[0].update(torch.randn(1, H, 1, D), torch.randn(1, H, 1, D))
    assert cache.layers[0].kbuf is buf  # no copy while room was reserved
    cache.layers[0].update(torch.randn(1, H, 1, D), torch.randn(1, H, 1, D))
    # the live window + 64 free columns
    assert cache.layers[0].kbuf is not buf and cache.layers[0].kbuf.shape[2] == 3 + 4 + 64


def test_a_block_of_the_wrong_shape_is_refused() -> None:
    cache = SlabCache(num_layers=1, heads=H, head_dim=D, rows_cap=2, width_cap=8)
    cache.reserve(2, 3, right=4)
    view = cache.block(2, 3, filled=0)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        view.layers[0].update(torch.zeros(2, H + 1, 3, D), torch.zeros(2, H + 1, 3, D))
    with pytest.raises(ValueError, match="free columns"):  # more columns than the block has
        view.layers[0].update(torch.zeros(2, H, 4, D), torch.zeros(2, H, 4, D))
