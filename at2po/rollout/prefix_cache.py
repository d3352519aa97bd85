"""An LRU store of per-sequence key/value caches keyed by their token ids, for prefix reuse.

After a sequence finishes, the engine stores the key/values it computed (context + generated tokens, except the
last sampled token, which was never fed). A later context that shares a prefix with a stored sequence — a
continuation after an observation, or a fork from an earlier turn — takes the key/values of the longest common
prefix and prefills only the rest. Keys/values of a causal LM at position t depend only on tokens ≤ t, so any
prefix slice of a stored entry is exact.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class KVEntry:
    tokens: np.ndarray  # [n] int64: the tokens whose key/values are stored
    keys: list[torch.Tensor]  # per layer [H_kv, n, D]
    values: list[torch.Tensor]  # per layer [H_kv, n, D]


def common_prefix_len(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    neq = np.flatnonzero(a[:n] != b[:n])
    return int(neq[0]) if len(neq) else n


class PrefixCache:
    """LRU over entries, bounded by the total number of stored tokens (``max_tokens``)."""

    def __init__(self, max_tokens: int = 262_144) -> None:
        self.max_tokens = max_tokens
        self._entries: OrderedDict[int, KVEntry] = OrderedDict()
        self._next_id = 0
        self.tokens = 0
        self._matrix: np.ndarray | None = None  # [E, L_max] entry tokens, −1 padded; rebuilt lazily
        self._order: list[int] = []

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.tokens = 0
        self._matrix = None

    def lookup(self, context: np.ndarray, limit: int) -> tuple[int, KVEntry | None]:
        """Longest common prefix (≤ ``limit`` tokens) between ``context`` and any entry: (length, entry)."""
        if not self._entries or limit <= 0:
            return 0, None
        if self._matrix is None:
            self._order = list(self._entries)
            width = max(len(e.tokens) for e in self._entries.values())
            self._matrix = np.full((len(self._order), width), -1, dtype=np.int64)
            for r, eid in enumerate(self._order):
                e = self._entries[eid]
                self._matrix[r, : len(e.tokens)] = e.tokens
        n = min(self._matrix.shape[1], len(context), limit)
        eq = self._matrix[:, :n] == context[None, :n]  # [E, n]; −1 padding never matches a token id
        lcp = np.where(eq.all(axis=1), n, np.argmin(eq, axis=1))  # first mismatch per entry  # [E]
        r = int(np.argmax(lcp))
        if lcp[r] == 0:
            return 0, None
        eid = self._order[r]
        self._entries.move_to_end(eid)  # LRU order only; the matrix rows keep their positions
        return int(lcp[r]), self._entries[eid]

    def insert(self, entry: KVEntry) -> None:
        """Store ``entry``; entries that are prefixes of it are dropped (it serves every lookup they could)."""
        n = len(entry.tokens)
        if n == 0 or n > self.max_tokens:
            return
        for eid in [eid for eid, e in self._entries.items() if len(e.tokens) <= n and common_prefix_len(e.tokens, entry.tokens) == len(e.tokens)]:
            self.tokens -= len(self._entries.pop(eid).tokens)
        self._entries[self._next_id] = entry
        self._next_id += 1
        self._matrix = None
        self.tokens += n
        while self.tokens > self.max_tokens:
            _, old = self._entries.popitem(last=False)
            self.tokens -= len(old.tokens)
