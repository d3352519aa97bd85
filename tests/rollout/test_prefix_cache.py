"""PrefixCache: longest-common-prefix lookup, superseded prefixes, LRU bound."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.rollout.prefix_cache import KVEntry, PrefixCache, common_prefix_len


def entry(tokens: list[int]) -> KVEntry:
    n = len(tokens)
    kv = [torch.arange(n, dtype=torch.float32).view(1, n, 1)]
    return KVEntry(np.asarray(tokens, dtype=np.int64), kv, kv)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=12), min_size=1, max_size=8),
       st.lists(st.integers(0, 3), min_size=1, max_size=14))
def test_lookup_is_the_longest_common_prefix(stored, query):
    cache = PrefixCache(max_tokens=10_000)
    for s in stored:
        cache.insert(entry(s))
    q = np.asarray(query, dtype=np.int64)
    n, e = cache.lookup(q, limit=len(q) - 1)
    best = max(min(common_prefix_len(np.asarray(s), q), len(q) - 1) for s in stored)
    assert n == best
    if n:
        assert common_prefix_len(e.tokens, q) >= n


def test_supersede_and_lru_bound():
    cache = PrefixCache(max_tokens=10)
    cache.insert(entry([1, 2, 3]))
    cache.insert(entry([1, 2, 3, 4, 5]))  # extends the first: the first is dropped
    assert len(cache) == 1 and cache.tokens == 5
    cache.insert(entry([7, 8, 9]))
    cache.lookup(np.array([1, 2, 3, 4, 5, 6]), 5)  # touch the first entry
    cache.insert(entry([4, 4, 4]))  # 11 tokens > 10: the least recently used ([7, 8, 9]) goes
    assert cache.tokens == 8 and cache.lookup(np.array([7, 8, 9, 9]), 3) == (0, None)
    assert cache.lookup(np.array([1, 2, 3, 4, 5, 6]), 5)[0] == 5
