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
    assert cache.insert(entry([1, 2, 3, 4, 5])) == 0  # extends the first: the first is dropped, not evicted
    assert len(cache) == 1 and cache.tokens == 5
    cache.insert(entry([7, 8, 9]))
    cache.lookup(np.array([1, 2, 3, 4, 5, 6]), 5)  # touch the first entry
    assert cache.insert(entry([4, 4, 4])) == 3  # 11 tokens > 10: the least recently used ([7, 8, 9]) goes
    assert cache.tokens == 8 and cache.lookup(np.array([7, 8, 9, 9]), 3) == (0, None)
    assert cache.lookup(np.array([1, 2, 3, 4, 5, 6]), 5)[0] == 5


class NaiveCache:
    """The reference semantics, written plainly: LRU by tokens, superseded prefixes dropped on insert."""

    def __init__(self, max_tokens: int) -> None:
        from collections import OrderedDict

        self.max_tokens, self.entries, self.tokens = max_tokens, OrderedDict(), 0

    def insert(self, toks: tuple[int, ...]) -> int:
        if not toks or len(toks) > self.max_tokens:
            return len(toks)
        for k in [k for k in self.entries if len(k) <= len(toks) and toks[: len(k)] == k]:
            self.tokens -= len(self.entries.pop(k))
        self.entries[toks] = toks
        self.tokens += len(toks)
        evicted = 0
        while self.tokens > self.max_tokens:
            n = len(self.entries.popitem(last=False)[1])
            self.tokens -= n
            evicted += n
        return evicted

    def lookup(self, q: tuple[int, ...], limit: int) -> int:
        best, key = 0, None
        for k in self.entries:  # first entry with the longest match, in insertion order of the matrix rows
            n = min(common_prefix_len(np.asarray(k), np.asarray(q)), limit)
            if n > best:
                best, key = n, k
        if key is not None:
            self.entries.move_to_end(key)
        return best


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=100), min_size=1, max_size=60),
       st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=110), min_size=1, max_size=20),
       st.integers(20, 600))
def test_matches_the_naive_cache_through_growth_and_eviction(inserts, queries, max_tokens):
    """Inserts (rows double, columns widen, evicted rows are reused) keep the same entries and token count as the
    plain implementation; then every lookup finds the same longest prefix. (Lookups come last: which of several
    equally long matches a lookup touches is an implementation detail that steers later LRU evictions.)"""
    cache, ref = PrefixCache(max_tokens=max_tokens), NaiveCache(max_tokens)
    for toks in inserts:
        assert cache.insert(entry(toks)) == ref.insert(tuple(toks))
        assert cache.tokens == ref.tokens and len(cache) == len(ref.entries)
    for toks in queries:
        q = np.asarray(toks, dtype=np.int64)
        n, e = cache.lookup(q, limit=len(q))
        assert n == ref.lookup(tuple(toks), len(q))
        assert (e is None) == (n == 0) and (e is None or common_prefix_len(e.tokens, q) >= n)
